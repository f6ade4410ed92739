"""Does a real loader take kiln's compressed-tensors artifacts?

For each scheme, `kiln convert MODEL --format compressed-tensors --scheme S`
writes an artifact; transformers (with the compressed-tensors package)
loads it on CPU, decompressing every tensor as vLLM's checkpoint loader
would read it, and its logits on a fixed prompt are compared with the
original checkpoint's: the artifact must load without a warning about
missing or unexpected weights, and its next-token argmax must agree with
the original's on most positions (quantization changes logits a little).
Prints one line per scheme and a JSON summary.

Needs torch, transformers and compressed-tensors (the goldens' venv):
    /tmp/ct-venv/bin/python bench/ct_transformers_check.py [--kiln target/release/kiln] [--model fixtures/tiny-llama]
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

SCHEMES = ["W4A16", "W4A16_ASYM", "W8A16", "W8A8", "FP8_DYNAMIC", "FP8_BLOCK", "NVFP4A16", "MXFP4A16"]


def logits(path, ids):
    hf_logging.set_verbosity_error()
    m = AutoModelForCausalLM.from_pretrained(path, dtype="auto")
    m.eval()
    with torch.no_grad():
        return m(ids).logits[0].float(), m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", default="target/release/kiln")
    ap.add_argument("--model", default="fixtures/tiny-llama")
    a = ap.parse_args()
    torch.manual_seed(0)
    cfg = json.loads((Path(a.model) / "config.json").read_text())
    ids = torch.randint(3, cfg["vocab_size"], (1, 64))
    ref, _ = logits(a.model, ids)
    rows = []
    for s in SCHEMES:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out"
            subprocess.run([a.kiln, "convert", a.model, "--format", "compressed-tensors", "--scheme", s, "-o", str(out), "--quiet"], check=True)
            got, m = logits(str(out), ids)
            qc = m.config.quantization_config
            agree = (got.argmax(-1) == ref.argmax(-1)).float().mean().item()
            diff = (got - ref).abs().max().item()
            rel = ((got - ref).norm() / ref.norm()).item()
            rows.append({"scheme": s, "top1_agreement": agree, "max_abs_logit_diff": diff, "rel_l2": rel,
                         "loaded_as": type(qc).__name__})
            print(f"{s:12s} loaded ({type(qc).__name__}), top-1 agreement {agree:.3f}, relative logit error {rel:.4f}, max |diff| {diff:.4f}")
    print(json.dumps(rows, indent=1))
    bad = [r for r in rows if r["top1_agreement"] < 0.8]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
