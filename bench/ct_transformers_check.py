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
    """Logits of the model at `path`; raises when transformers reports a
    missing, unexpected or unconvertible weight."""
    hf_logging.set_verbosity_error()
    m, info = AutoModelForCausalLM.from_pretrained(path, dtype="auto", output_loading_info=True)
    bad = {k: sorted(v)[:4] for k, v in info.items() if v and k != "error_msgs"}
    if bad or info.get("error_msgs"):
        raise RuntimeError(f"loading report: {bad} {info.get('error_msgs')}")
    m.eval()
    with torch.no_grad():
        return m(ids).logits[0].float(), m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", default="target/release/kiln")
    ap.add_argument("--model", default="fixtures/tiny-llama")
    ap.add_argument("--group-size", default=None, help="for the grouped integer schemes (e.g. 32 for the MoE fixtures, whose widths 128 does not divide)")
    a = ap.parse_args()
    torch.manual_seed(0)
    cfg = json.loads((Path(a.model) / "config.json").read_text())
    ids = torch.randint(3, cfg["vocab_size"], (1, 64))
    ref, _ = logits(a.model, ids)
    rows = []
    for s in SCHEMES:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out"
            cmd = [a.kiln, "convert", a.model, "--format", "compressed-tensors", "--scheme", s, "-o", str(out), "--quiet"]
            if a.group_size and s.startswith("W4A16"):
                cmd += ["--group-size", a.group_size]
            subprocess.run(cmd, check=True)
            try:
                got, m = logits(str(out), ids)
            except Exception as e:  # noqa: BLE001 - reported per scheme
                msg = str(e).strip().splitlines()[-1][:200]
                rows.append({"scheme": s, "loaded": False, "error": msg})
                print(f"{s:12s} NOT LOADED: {msg}")
                continue
            qc = m.config.quantization_config
            agree = (got.argmax(-1) == ref.argmax(-1)).float().mean().item()
            diff = (got - ref).abs().max().item()
            rel = ((got - ref).norm() / ref.norm()).item()
            rows.append({"scheme": s, "loaded": True, "top1_agreement": agree, "max_abs_logit_diff": diff, "rel_l2": rel,
                         "loaded_as": type(qc).__name__})
            print(f"{s:12s} loaded ({type(qc).__name__}), top-1 agreement {agree:.3f}, relative logit error {rel:.4f}, max |diff| {diff:.4f}")
    print(json.dumps(rows, indent=1))
    bad = [r for r in rows if not r["loaded"] or r["top1_agreement"] < 0.8]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
