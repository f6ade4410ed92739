"""kiln's compressed-tensors reader against compressed-tensors' own decompression.

For each tiny fixture and each llm-compressor preset, llm-compressor's RTN
`oneshot` writes an artifact; transformers (with compressed-tensors,
`run_compressed=False`) loads and decompresses it, and the dense weights are saved
as a plain checkpoint; `kiln eval DENSE ARTIFACT --weights` must then find every
tensor identical (max |error| 0): kiln's decoding of llm-compressor's files is
compressed-tensors' decoding, bit for bit. Also checks that `kiln inspect` lists
every quantized Linear.

Needs torch, transformers, llmcompressor (several GB; not in CI):
    python -m venv /tmp/ct-venv && /tmp/ct-venv/bin/pip install llmcompressor==0.14.0.1 \
        compressed-tensors==0.19.0 torch==2.14.0 transformers==5.17.0
    cargo build --release
    /tmp/ct-venv/bin/python bench/ct_reader_check.py [--kiln target/release/kiln]
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "fixtures" / "compressed_tensors"))

import make_goldens as mg  # noqa: E402  (the goldens' scheme table)

LABELS = ["W4A16", "W4A16_ASYM", "W8A16", "W8A8", "FP8_DYNAMIC", "FP8_BLOCK", "NVFP4A16", "MXFP4A16", "W4A16_G32"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", default=str(REPO / "target" / "release" / "kiln"))
    a = ap.parse_args()
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM
    from transformers.utils.quantization_config import CompressedTensorsConfig

    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for fx in ["tiny-llama", "tiny-qwen2"]:
            src = REPO / "fixtures" / fx
            for label in LABELS:
                scheme, ignore = mg.SCHEMES[label]
                model = AutoModelForCausalLM.from_pretrained(src, dtype="auto")
                if isinstance(scheme, str):
                    mod = QuantizationModifier(targets="Linear", scheme=scheme, ignore=ignore)
                else:
                    mod = QuantizationModifier(config_groups=scheme, ignore=ignore)
                oneshot(model=model, recipe=[mod])
                art = Path(tmp) / f"{fx}-{label}"
                model.save_pretrained(art, save_compressed=True)
                for f in ["tokenizer.json", "tokenizer_config.json"]:
                    shutil.copy(src / f, art / f)
                dense = Path(tmp) / f"{fx}-{label}-dense"
                dense.mkdir()
                m = AutoModelForCausalLM.from_pretrained(
                    art, quantization_config=CompressedTensorsConfig(run_compressed=False)
                )
                sd = {
                    k: v.detach().contiguous()
                    for k, v in m.state_dict().items()
                    if not k.endswith(("_scale", "_zero_point", "_shape", "_global_scale"))
                }
                if m.config.tie_word_embeddings:
                    sd.pop("lm_head.weight", None)
                save_file(sd, dense / "model.safetensors", metadata={"format": "pt"})
                cfg = json.loads((art / "config.json").read_text())
                cfg.pop("quantization_config")
                (dense / "config.json").write_text(json.dumps(cfg))
                for f in ["tokenizer.json", "tokenizer_config.json"]:
                    shutil.copy(src / f, dense / f)
                r = subprocess.run(
                    [a.kiln, "eval", str(dense), str(art), "--weights", "--json"], capture_output=True, text=True
                )
                if r.returncode != 0:
                    print(f"{fx} {label}: kiln eval failed: {r.stderr.strip()}")
                    failures += 1
                    continue
                w = json.loads(r.stdout)["weights"]
                worst = max(t["max_abs"] for t in w["tensors"])
                quantized = sum(t["candidate_type"] not in ("BF16", "F16", "F32") for t in w["tensors"])
                ins = json.loads(
                    subprocess.run([a.kiln, "inspect", str(art), "--json"], capture_output=True, text=True, check=True).stdout
                )
                listed = len(ins["compressed_tensors"]["quantized"])
                ok = worst == 0.0 and not w["notes"] and quantized == listed and quantized >= 12
                failures += not ok
                print(
                    f"{fx:10} {label:12} {quantized:2} quantized Linears, max |kiln - compressed-tensors| = {worst}"
                    f"{'' if ok else '  FAIL'}",
                    flush=True,
                )
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
