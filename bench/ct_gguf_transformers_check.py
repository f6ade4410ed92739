"""Does transformers load kiln's compressed-tensors artifacts written from a GGUF?

`kiln convert MODEL.gguf --format compressed-tensors --scheme S` writes an
artifact with a config.json, tokenizer.json and tokenizer_config.json that
kiln synthesized from the GGUF's metadata. This script has transformers
(with the compressed-tensors package) load, for each scheme, that artifact
on CPU, and compares its logits on a chat prompt, tokenized by the
synthesized tokenizer with the GGUF's chat template, with those of the same
GGUF converted with every Linear kept (`--ignore 're:.*'`: the GGUF's own
dequantized weights, un-permuted, in HF layout). It also generates greedily
from the unquantized artifact, so that a wrong q/k layout or tokenizer shows
as nonsense text. Prints one line per scheme and a JSON summary.

Needs torch, transformers and compressed-tensors (the goldens' venv):
    /work/venvs/ct/bin/python bench/ct_gguf_transformers_check.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

# NVFP4A16/MXFP4A16 are left out: an F32 artifact (what a
# block-quantized GGUF gives) decompresses their weights to bf16 in
# compressed-tensors 0.19 (`unpack_fp4_from_uint8`), which transformers' CPU
# forward then cannot multiply with f32 activations.
SCHEMES = [("W4A16", "64"), ("W4A16_ASYM", "32"), ("W8A16", "64"), ("FP8_DYNAMIC", None)]
PROMPT = "What is the capital of France? Answer in one sentence."


def load(path):
    hf_logging.set_verbosity_error()
    m = AutoModelForCausalLM.from_pretrained(path, dtype="auto")
    m.eval()
    return m


def convert(kiln, gguf, out, *extra):
    subprocess.run([kiln, "convert", gguf, "--format", "compressed-tensors", "-o", str(out), "--quiet", *extra], check=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", default="target/release/kiln")
    ap.add_argument("--gguf", required=True)
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ref_dir = Path(tmp) / "ref"
        convert(a.kiln, a.gguf, ref_dir, "--scheme", "W8A16", "--ignore", "re:.*")
        tok = AutoTokenizer.from_pretrained(ref_dir)
        text = tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True)
        ids = tok(text, return_tensors="pt").input_ids
        ref_model = load(ref_dir)
        with torch.no_grad():
            ref = ref_model(ids).logits[0].float()
            gen = ref_model.generate(ids, max_new_tokens=24, do_sample=False)
        answer = tok.decode(gen[0, ids.shape[1] :], skip_special_tokens=True)
        print(f"unquantized (GGUF weights in HF layout): {answer!r}")
        for s, g in SCHEMES:
            out = Path(tmp) / s
            extra = ["--scheme", s] + (["--group-size", g] if g else [])
            convert(a.kiln, a.gguf, out, *extra)
            m = load(out)
            with torch.no_grad():
                got = m(ids).logits[0].float()
            qc = m.config.quantization_config
            agree = (got.argmax(-1) == ref.argmax(-1)).float().mean().item()
            rel = ((got - ref).norm() / ref.norm()).item()
            label = s + (f" g{g}" if g else "")
            rows.append({"scheme": label, "top1_agreement": agree, "rel_l2": rel, "loaded_as": type(qc).__name__})
            print(f"{label:14s} loaded ({type(qc).__name__}), top-1 agreement {agree:.3f}, relative logit error {rel:.4f}")
    print(json.dumps({"prompt_tokens": int(ids.shape[1]), "greedy_answer": answer, "rows": rows}, indent=1))
    # SmolLM2-135M loses much to any 4-bit requantization of its Q4_1 weights
    # (kiln eval: KL divergence 0.32 for W4A16 g64, 0.36 for a Q4_0 requant):
    # the bar is loose; a broken layout or loader gives near-zero agreement.
    bad = [r for r in rows if r["top1_agreement"] < 0.5]
    sys.exit(1 if bad or "paris" not in answer.lower() else 0)


if __name__ == "__main__":
    main()
