"""Cross-check of `kiln imatrix` against an independent numpy computation.

The reference re-runs ref_forward's float64 forward pass (same windows as
kiln: kiln's `--per-token` file lists the token ids it fed) and records the input
of every linear weight, then sums the squares per input column as llama.cpp's
llama-imatrix does (every position of every window). kiln's output is read with
gguf-py, llama.cpp's own GGUF reader, so the layout is checked too:
`<name>.in_sum2` (f32, one value per input column), `<name>.counts` (f32, tokens
seen), `general.type = imatrix`, `imatrix.datasets`, `imatrix.chunk_count`,
`imatrix.chunk_size`.

Stated tolerance: relative difference of each in_sum2 value <= 1e-4 (f32 vs f64).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import ref_forward
from conftest import ROOT, fixture_path, run_kiln

TEXT = ROOT / "fixtures" / "text" / "pride-and-prejudice-ch1-17.txt"
CTX = 40
CHUNKS = 3
RTOL = 1e-4


def activations(m: ref_forward.RefModel, ids: list[int], sums: dict[str, np.ndarray], prefix_ok) -> None:
    """ref_forward.RefModel.hidden_states with every linear input recorded (GGUF names)."""

    def seen(name, x):
        if prefix_ok(name):
            sums[name] = sums.get(name, 0) + (x * x).sum(axis=0)

    ids = np.asarray(ids)
    t = len(ids)
    pos = np.arange(t)
    x = m.embed[ids].astype(np.float64)
    group = m.n_head // m.n_kv_head
    mask = np.triu(np.full((t, t), -np.inf), k=1)
    for i, layer in enumerate(m.layers):
        p = f"blk.{i}."
        h = m._rms(x, layer.attn_norm)
        for w in ("attn_q", "attn_k", "attn_v"):
            seen(p + w + ".weight", h)
        q, k, v = h @ layer.wq.T, h @ layer.wk.T, h @ layer.wv.T
        if layer.bq is not None:
            q, k, v = q + layer.bq, k + layer.bk, v + layer.bv
        q = m._rope(q.reshape(t, m.n_head, m.head_dim), pos)
        k = np.repeat(m._rope(k.reshape(t, m.n_kv_head, m.head_dim), pos), group, axis=1)
        v = np.repeat(v.reshape(t, m.n_kv_head, m.head_dim), group, axis=1)
        s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(m.head_dim) + mask
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        s /= s.sum(axis=-1, keepdims=True)
        a = np.einsum("hqk,khd->qhd", s, v).reshape(t, m.n_head * m.head_dim)
        seen(p + "attn_output.weight", a)
        x = x + a @ layer.wo.T
        h = m._rms(x, layer.ffn_norm)
        seen(p + "ffn_gate.weight", h)
        seen(p + "ffn_up.weight", h)
        g = h @ layer.w_gate.T
        act = g / (1.0 + np.exp(-g)) * (h @ layer.w_up.T)
        seen(p + "ffn_down.weight", act)
        x = x + act @ layer.w_down.T
    seen("output.weight", m._rms(x, m.norm))


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
def test_imatrix_matches_numpy_reference(kiln, tmp_path, name):
    import gguf

    fx = fixture_path(name)
    out = tmp_path / "imatrix.gguf"
    extra = ["--process-output"] if name == "tiny-llama" else []
    run_kiln(kiln, "imatrix", fx, "--text", TEXT, "-o", out, "--ctx", CTX, "--chunks", CHUNKS, "--quiet", *extra)
    # The windows kiln fed (the same windowing as `kiln eval`).
    pt = tmp_path / "pt.json"
    run_kiln(kiln, "eval", fx, "--text", TEXT, "--ctx", CTX, "--chunks", CHUNKS, "--per-token", pt, "--quiet")
    windows = json.loads(pt.read_text())["windows"]

    model = ref_forward.load_hf(fx)
    tied = model.meta["tied"]
    want: dict[str, np.ndarray] = {}
    for w in windows:
        activations(model, w, want, lambda n: n.startswith("blk.") or (bool(extra) and n == "output.weight" and not tied))

    r = gguf.GGUFReader(str(out))
    fields = {k: r.fields[k].contents() for k in r.fields}
    assert fields["general.type"] == "imatrix"
    assert fields["imatrix.chunk_count"] == CHUNKS
    assert fields["imatrix.chunk_size"] == CTX
    assert fields["imatrix.datasets"] == [str(TEXT)]
    tensors = {t.name: np.asarray(t.data, dtype=np.float64).reshape(-1) for t in r.tensors}
    got_names = {n[: -len(".in_sum2")] for n in tensors if n.endswith(".in_sum2")}
    assert got_names == set(want), sorted(got_names ^ set(want))
    for n, ref in want.items():
        assert tensors[n + ".counts"].tolist() == [CHUNKS * CTX], n
        got = tensors[n + ".in_sum2"]
        assert got.shape == ref.shape, n
        rel = np.max(np.abs(got - ref) / np.maximum(np.abs(ref), 1e-12))
        assert rel <= RTOL, f"{name} {n}: max relative difference {rel:.3g} > {RTOL}"
