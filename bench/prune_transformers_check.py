"""Does transformers load kiln's pruned compressed-tensors artifacts?

For each pruning, `kiln convert FIXTURE --format compressed-tensors --scheme
W8A16 --prune SPEC --json` writes an artifact; transformers (with the
compressed-tensors package) loads it on CPU with no missing or unexpected
weight, and its logits on a fixed prompt are compared with the float64 numpy
reference of the ORIGINAL checkpoint pruned the same way (tests/python:
ref_forward + test_prune.prune_reference, from kiln's --json record): top-1
agreement and relative logit error (W8A16 rounding is the only difference).

Then `kiln build --engine vllm --prune-candidates auto` on tiny-llama with its
second block made idle (o_proj and down_proj scaled by 1e-3, as in
tests/prune_ct.rs), where removing that block measures better than any plan
of the whole model: the mixed-scheme pruned artifact loads the same way and
is compared with the unpruned original's float64 logits.

Needs torch, transformers and compressed-tensors:
    /work/venvs/ct/bin/python bench/prune_transformers_check.py [--kiln target/release/kiln]
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))
import ref_forward  # noqa: E402
from ref_prune import prune_reference  # noqa: E402

CASES = [
    ("tiny-llama", "layers=1"),
    ("tiny-llama", "ffn=0.75"),
    ("tiny-llama", "kv-groups=1;layers=0"),
    ("tiny-qwen2", "ffn=0.5;kv-groups=1"),
    ("tiny-qwen3", "ffn=0.5;kv-groups=1;layers=1"),
]


def idle_block_fixture(src, dst):
    """A copy of `src` with block 1's o_proj and down_proj (BF16) times 1e-3."""
    import shutil
    import struct

    shutil.copytree(src, dst)
    p = dst / "model.safetensors"
    b = bytearray(p.read_bytes())
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    for name in ["model.layers.1.self_attn.o_proj.weight", "model.layers.1.mlp.down_proj.weight"]:
        lo, hi = (8 + n + o for o in h[name]["data_offsets"])
        f = (np.frombuffer(bytes(b[lo:hi]), dtype="<u2").astype(np.uint32) << 16).view(np.float32) * np.float32(1e-3)
        r = f.view(np.uint32)
        b[lo:hi] = ((r + 0x7FFF + ((r >> 16) & 1)) >> 16).astype("<u2").tobytes()
    p.write_bytes(bytes(b))
    return dst


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", default=str(ROOT / "target" / "release" / "kiln"))
    a = ap.parse_args()
    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    rows, ok = [], True
    for fx_name, spec in CASES:
        fx = ROOT / "fixtures" / fx_name
        cfg = json.loads((fx / "config.json").read_text())
        ids = torch.randint(3, cfg["vocab_size"], (1, 48))
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out"
            p = subprocess.run([a.kiln, "convert", str(fx), "--format", "compressed-tensors", "--scheme", "W8A16",
                                "--prune", spec, "-o", str(out), "--json", "--quiet"], check=True, capture_output=True, text=True)
            rec = json.loads(p.stdout)["prune"]
            m, info = AutoModelForCausalLM.from_pretrained(str(out), dtype="auto", output_loading_info=True)
            m.eval()
            with torch.no_grad():
                got = m(ids).logits[0].double().numpy()
        ref = prune_reference(ref_forward.load_hf(fx), rec).logits(ids[0].tolist())
        missing = [k for k in info.get("missing_keys", [])]
        unexpected = [k for k in info.get("unexpected_keys", [])]
        agree = float((got.argmax(-1) == ref.argmax(-1)).mean())
        rel = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
        good = not missing and not unexpected and agree >= 0.9 and rel < 0.05
        ok &= good
        rows.append({"fixture": fx_name, "spec": spec, "config_layers": m.config.num_hidden_layers,
                     "heads": [m.config.num_attention_heads, m.config.num_key_value_heads],
                     "ffn": m.config.intermediate_size, "missing": missing, "unexpected": unexpected,
                     "top1_agreement": agree, "rel_l2": rel, "ok": good})
        print(f"{fx_name:11s} {spec:28s} loaded: layers {m.config.num_hidden_layers}, heads {m.config.num_attention_heads}/{m.config.num_key_value_heads}, "
              f"ffn {m.config.intermediate_size}; top-1 vs pruned reference {agree:.3f}, relative logit error {rel:.4f} {'ok' if good else 'FAIL'}")
    # The joint plan: a pruned, mixed-scheme artifact from `kiln build`.
    with tempfile.TemporaryDirectory() as tmp:
        fx = idle_block_fixture(ROOT / "fixtures" / "tiny-llama", Path(tmp) / "idle-block")
        text = ROOT / "fixtures" / "text" / "pride-and-prejudice-ch1-17.txt"
        out = Path(tmp) / "built"
        subprocess.run([a.kiln, "build", str(fx), "--target", "h100-sxm", "--engine", "vllm", "--bpw", "5", "--objective", "accuracy",
                        "--text", str(text), "--ctx", "64", "--prune-candidates", "auto", "-o", str(out), "--quiet"], check=True)
        chosen = json.loads((out / "manifest.json").read_text())["pruning"]["chosen"]
        cfg = json.loads((fx / "config.json").read_text())
        ids = torch.randint(3, cfg["vocab_size"], (1, 48))
        m, info = AutoModelForCausalLM.from_pretrained(str(out), dtype="auto", output_loading_info=True)
        m.eval()
        with torch.no_grad():
            got = m(ids).logits[0].double().numpy()
        ref = ref_forward.load_hf(fx).logits(ids[0].tolist())
        missing, unexpected = list(info.get("missing_keys", [])), list(info.get("unexpected_keys", []))
        agree = float((got.argmax(-1) == ref.argmax(-1)).mean())
        rel = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
        good = chosen is not None and not missing and not unexpected and agree >= 0.9 and rel < 0.05
        ok &= good
        rows.append({"fixture": "tiny-llama, block 1 idle", "build_pruning": chosen, "config_layers": m.config.num_hidden_layers,
                     "missing": missing, "unexpected": unexpected, "top1_agreement": agree, "rel_l2": rel, "ok": good})
        print(f"build --engine vllm --prune-candidates auto: pruning {chosen}, loaded: layers {m.config.num_hidden_layers}; "
              f"top-1 vs the unpruned original {agree:.3f}, relative logit error {rel:.4f} {'ok' if good else 'FAIL'}")
    print(json.dumps(rows, indent=1))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
