"""Does a real loader take kiln's mixed-precision compressed-tensors builds?

`kiln build MODEL --engine vllm --target T -o OUT` writes a
compressed-tensors artifact with one config group per scheme (top-level
`format: mixed-precision` when the groups' formats differ) and its 16-bit
layers in `ignore`. Here transformers with the compressed-tensors package
loads it on CPU: every Linear must come back as the scheme kiln's manifest
says its unit got (checked on the decompressed module's quantization
scheme), no weight may be missing or unexpected, and the logits on a fixed
prompt must agree with the original checkpoint's on most positions.

Needs torch, transformers and compressed-tensors (the goldens' venv):
    /work/ct-venv/bin/python bench/ct_mixed_check.py [--kiln target/release/kiln]
        [--model fixtures/tiny-llama] [--target h100-sxm]
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


def load(path):
    hf_logging.set_verbosity_error()
    m, info = AutoModelForCausalLM.from_pretrained(path, dtype="auto", output_loading_info=True)
    m.eval()
    return m, info


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", default="target/release/kiln")
    ap.add_argument("--model", default="fixtures/tiny-llama")
    ap.add_argument("--target", default="h100-sxm")
    ap.add_argument("--objective", default="cost")
    a = ap.parse_args()
    torch.manual_seed(0)
    cfg = json.loads((Path(a.model) / "config.json").read_text())
    ids = torch.randint(3, cfg["vocab_size"], (1, 64))
    ref_m, _ = load(a.model)
    with torch.no_grad():
        ref = ref_m(ids).logits[0].float()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        subprocess.run([a.kiln, "build", a.model, "--engine", "vllm", "--target", a.target,
                        "--objective", a.objective, "-o", str(out), "--quiet"], check=True,
                       stdout=subprocess.DEVNULL)
        manifest = json.loads((out / "manifest.json").read_text())
        qc = json.loads((out / "config.json").read_text())["quantization_config"]
        m, info = load(str(out))
        with torch.no_grad():
            got = m(ids).logits[0].float()
    problems = [f"{k}: {v}" for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")]
    # Each Linear's scheme as loaded (compressed-tensors attaches `quantization_scheme`).
    want = {}
    for u in manifest["units"]:
        for t in u["tensors"]:
            want[t[: -len(".weight")]] = u["scheme"]
    group_of = {}
    for g, body in qc["config_groups"].items():
        for t in body["targets"]:
            group_of[t] = (body["weights"]["num_bits"], body["weights"]["type"], body["weights"]["strategy"])
    checked = 0
    for name, mod in m.named_modules():
        if name not in want:
            continue
        s = getattr(mod, "quantization_scheme", None)
        if want[name] == "bf16":
            if s is not None:
                problems.append(f"{name}: kept in bf16 by kiln but loaded quantized")
        else:
            if s is None:
                problems.append(f"{name}: {want[name]} in kiln's plan but loaded unquantized")
            else:
                w = s.weights
                if (w.num_bits, w.type, w.strategy) != group_of[name]:
                    problems.append(f"{name}: loaded as {w.num_bits}-bit {w.type} {w.strategy}, config says {group_of[name]}")
        checked += 1
    agree = (got.argmax(-1) == ref.argmax(-1)).float().mean().item()
    rel = ((got - ref).norm() / ref.norm()).item()
    result = {
        "target": a.target,
        "format": qc["format"],
        "groups": len(qc["config_groups"]),
        "schemes": sorted({u["scheme"] for u in manifest["units"]}),
        "linears_checked": checked,
        "top1_agreement": agree,
        "rel_l2_logits": rel,
        "problems": problems,
    }
    print(json.dumps(result, indent=1))
    sys.exit(1 if problems or agree < 0.8 else 0)


if __name__ == "__main__":
    main()
