"""Qwen3 specifics, end to end: the per-head q/k RMS norms and the explicit
head_dim (64 in tiny-qwen3, while hidden_size / num_attention_heads is 32).

- kiln's Q8_0 conversion, read back by the numpy reference (gguf-py
  dequantization, `attn_q_norm` / `attn_k_norm` applied per head before RoPE),
  and `kiln eval` of the checkpoint against that Q8_0 file agree on every
  position's NLL and KL divergence (the F32 and Q8_0 runtime checks through
  llama.cpp are test_llama_runtime.py's, which runs every fixture);
- the norms matter: the reference without them predicts differently, so the
  agreement above cannot come from a forward pass that skips them;
- the GGUF carries `qwen3.attention.key_length` / `value_length` = head_dim
  and the norms as `[head_dim]` F32 tensors in every output type.
"""

from __future__ import annotations

import json

import gguf
import numpy as np

import ref_forward
from conftest import fixture_path
from test_eval_forward import CTX, KLD_TOL, NLL_TOL, kiln_eval, reference_scores

FX = "tiny-qwen3"


def test_q8_0_candidate_matches_numpy_reference(kiln, convert, tmp_path):
    fx = fixture_path(FX)
    q8 = convert(fx, "q8_0")
    report, per = kiln_eval(kiln, tmp_path, fx, q8)
    windows = per["windows"]
    ref_o = reference_scores(ref_forward.load_hf(fx), windows)
    ref_c = reference_scores(ref_forward.load_gguf(q8), windows)
    worst_nll = worst_kld = 0.0
    for s in per["scores"]:
        key = (s["chunk"], s["pos"])
        _, lp_o, _, _ = ref_o[key]
        nll_c, lp_c, top_c, margin_c = ref_c[key]
        kld = float(np.sum(np.exp(lp_o) * (lp_o - lp_c)))
        worst_nll = max(worst_nll, abs(s["nll_candidate"] - nll_c))
        worst_kld = max(worst_kld, abs(s["kld"] - kld))
        if margin_c > 1e-4:
            assert s["top1_candidate"] == top_c, s
    assert worst_nll <= NLL_TOL, f"candidate: max |NLL kiln - numpy| = {worst_nll:.3g}"
    assert worst_kld <= KLD_TOL, f"max |KLD kiln - numpy| = {worst_kld:.3g}"
    assert 0 < report["kld"]["mean"] < 0.01


def test_the_q_k_norms_change_the_prediction():
    fx = fixture_path(FX)
    model = ref_forward.load_hf(fx)
    assert all(layer.q_norm is not None and layer.q_norm.shape == (model.head_dim,) for layer in model.layers)
    assert model.head_dim == 64 and model.head_dim * model.n_head != model.embed.shape[1]
    ids = list(range(3, 3 + CTX))
    with_norms = model.logits(ids)
    for layer in model.layers:
        layer.q_norm = layer.k_norm = None
    without = model.logits(ids)
    assert np.abs(with_norms - without).max() > 1e-2


def test_gguf_carries_head_dim_and_norms(convert):
    fx = fixture_path(FX)
    cfg = json.loads((fx / "config.json").read_text())
    for qtype in ("f32", "q8_0"):
        r = gguf.GGUFReader(str(convert(fx, qtype)))
        get = lambda k: r.fields[k].contents()
        assert get("general.architecture") == "qwen3"
        assert get("qwen3.attention.key_length") == cfg["head_dim"] == 64
        assert get("qwen3.attention.value_length") == 64
        assert get("qwen3.embedding_length") == 128
        norms = [t for t in r.tensors if t.name.endswith(("attn_q_norm.weight", "attn_k_norm.weight"))]
        assert len(norms) == 2 * cfg["num_hidden_layers"]
        for t in norms:
            assert t.tensor_type == gguf.GGMLQuantizationType.F32 and list(t.shape) == [64], (t.name, t.shape)
        assert not any(t.name == "output.weight" for t in r.tensors)  # tied
        assert not any(t.name.endswith(".bias") for t in r.tensors)
