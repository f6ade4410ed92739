"""An off-grid reference from a quantized GGUF (issue 17's honest reference).

Every model a registry ships is already quantized, so re-encoding it into its
own grid is nearly lossless and flatters any plan. The reference made here is
the exact F32 dequantization of the source (`kiln convert -t F32`) with every
quantized weight moved by seeded uniform noise of up to half its grid step,
the step read from the source block itself: `d` for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0
(blocks of 32), `d * scale_j` for Q6_K (sub-blocks of 16, int8 scales) and for
Q4_K/Q5_K (sub-blocks of 32, 6-bit scales unpacked as ggml's
`get_scale_min_k4`). No candidate type can then re-encode a weight exactly.

Used by bench/plan_vs_recipes.py (`--models qwen-offgrid`); SmolLM2's
reference (bench/gptq_gguf_smollm2.py) is the same construction.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

SEED = 17
# type -> (values per block, bytes per block)
BLOCKS = {
    "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24), "Q8_0": (32, 34),
    "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210),
}


def _f16(raw: np.ndarray, at: int) -> np.ndarray:
    return raw[:, at : at + 2].copy().view(np.float16).astype(np.float32).reshape(-1)


def _k4_scales(q: np.ndarray) -> np.ndarray:
    """The eight 6-bit sub-block scales of Q4_K/Q5_K blocks (`q`: [n, 12] bytes)."""
    q = q.astype(np.int32)
    sc = np.empty((q.shape[0], 8), np.int32)
    sc[:, :4] = q[:, :4] & 63
    sc[:, 4:] = (q[:, 8:12] & 0xF) | ((q[:, 0:4] >> 6) << 4)
    return sc


def steps(ty: str, raw: np.ndarray) -> np.ndarray:
    """Each value's grid step, `[blocks, values per block]`, from the blocks' bytes."""
    n, _ = BLOCKS[ty]
    if n == 32:
        return np.repeat(np.abs(_f16(raw, 0))[:, None], 32, axis=1)
    if ty == "Q6_K":
        d = _f16(raw, 208)
        sc = raw[:, 192:208].view(np.int8).astype(np.float32)  # [blocks, 16]
        return np.repeat(np.abs(d[:, None] * sc), 16, axis=1)
    d = _f16(raw, 0)  # Q4_K, Q5_K: d, dmin, scales[12]
    sc = _k4_scales(raw[:, 4:16]).astype(np.float32)
    return np.repeat(np.abs(d[:, None] * sc), 32, axis=1)


def off_grid_reference(src: Path, ref: Path, kiln: Path) -> Path:
    """Write the off-grid F32 reference of `src` to `ref`."""
    import gguf

    exact = ref.with_suffix(".exact.gguf")
    subprocess.run(
        [str(kiln), "convert", str(src), "-t", "F32", "--allow-requantize", "-o", str(exact), "--quiet"],
        check=True,
    )
    shutil.move(exact, ref)
    source = {t.name: t for t in gguf.GGUFReader(str(src)).tensors}
    out = gguf.GGUFReader(str(ref), "r+")
    moved = 0
    for idx, t in enumerate(out.tensors):
        s = source[t.name]
        ty = s.tensor_type.name
        if ty not in BLOCKS:
            continue
        n, nb = BLOCKS[ty]
        raw = np.asarray(s.data, dtype=np.uint8).reshape(-1, nb)
        step = steps(ty, raw)
        w = t.data.reshape(-1, n)
        assert w.shape == step.shape, (t.name, w.shape, step.shape)
        rng = np.random.default_rng(SEED + idx)
        w += (rng.random(w.shape, dtype=np.float32) - np.float32(0.5)) * step
        moved += w.size
    out.data.flush()
    del out
    print(f"off-grid reference {ref}: {moved} weights moved within half a step of their source grid",
          file=sys.stderr)
    return ref
