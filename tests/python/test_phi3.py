"""Phi-3 / Phi-4-mini (`Phi3ForCausalLM` -> GGUF `phi3`), on fixtures/tiny-phi.

tiny-phi has Phi-3's fused `qkv_proj` and `gate_up_proj`, longrope scaling (an
original context of 64 in 512, long and short factors) and a sliding window as
long as the context.

- kiln's conversion keeps the fused tensors fused as llama.cpp's converter does
  (`attn_qkv`, `ffn_up` of 2 x FFN rows, no `ffn_gate`), writes the longrope
  factors as `rope_factors_long` / `rope_factors_short` F32 tensors (the config's
  values), `rope.scaling.attn_factor` = sqrt(1 + ln(512/64) / ln 64), the
  original context and `attention.sliding_window`;
- llama.cpp (node-llama-cpp) on the F32 file matches the float64 numpy reference
  (ref_forward, transformers' Phi3 and longrope) past the original context, where
  both use the long factors; the Q8_0 file agrees with the F32 one;
- kiln's forward pass matches the reference with the long factors (128-token
  windows) and with the short ones (48-token windows);
- configs kiln cannot carry are refused with one line and nothing written.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest

import ref_forward
from conftest import ROOT, fixture_path, run_kiln
from runtime_common import F32_LOGIT_RTOL, MARGIN, PROMPT_TEXT, Q8_0_MIN_AGREEMENT, hf_encoder, rel_margins

FX = "tiny-phi"
N_GEN = 16
NLL_TOL = 1e-4
TEXT = ROOT / "fixtures" / "text" / "pride-and-prejudice-ch1-17.txt"


@pytest.fixture(scope="module")
def setup():
    fx = fixture_path(FX)
    cfg = json.loads((fx / "config.json").read_text())
    model = ref_forward.load_hf(fx)
    prompt = [cfg["bos_token_id"]] + hf_encoder(fx)(" ".join([PROMPT_TEXT] * 4))[:90]
    assert len(prompt) > cfg["original_max_position_embeddings"]
    gen, _ = model.greedy(prompt, N_GEN)
    seq = prompt + gen
    return fx, cfg, model, prompt, gen, seq, model.logits(seq)


def test_gguf_keeps_fused_tensors_and_longrope(setup, convert):
    import gguf

    fx, cfg, *_ = setup
    r = gguf.GGUFReader(str(convert(fx, "f32")))
    t = {t.name: t for t in r.tensors}
    f = {k: v.contents() for k, v in r.fields.items() if k.startswith("phi3.") or k == "general.architecture"}
    assert f["general.architecture"] == "phi3"
    h, ffn, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["hidden_size"] // cfg["num_attention_heads"]
    qkv_rows = (cfg["num_attention_heads"] + 2 * cfg["num_key_value_heads"]) * hd
    for i in range(cfg["num_hidden_layers"]):
        assert tuple(int(x) for x in t[f"blk.{i}.attn_qkv.weight"].shape) == (h, qkv_rows)
        assert tuple(int(x) for x in t[f"blk.{i}.ffn_up.weight"].shape) == (h, 2 * ffn)
        assert f"blk.{i}.ffn_gate.weight" not in t and f"blk.{i}.attn_q.weight" not in t
    for kind in ("long", "short"):
        rt = t[f"rope_factors_{kind}.weight"]
        assert rt.tensor_type.name == "F32"
        np.testing.assert_array_equal(np.asarray(rt.data), np.asarray(cfg["rope_scaling"][f"{kind}_factor"], dtype=np.float32))
    assert f["phi3.rope.scaling.type"] == "longrope"
    assert f["phi3.rope.scaling.original_context_length"] == 64
    want = math.sqrt(1 + math.log(512 / 64) / math.log(64))
    assert abs(f["phi3.rope.scaling.attn_factor"] - want) < 1e-6
    assert f["phi3.attention.sliding_window"] == cfg["sliding_window"]
    assert f["phi3.rope.dimension_count"] == hd


def test_llama_cpp_matches_reference_with_long_factors(setup, convert, llama):
    fx, cfg, model, prompt, ref_gen, seq, ref_logits = setup
    out = llama({"model": str(convert(fx, "f32")), "evaluate": {"tokens": seq, "top": 2, "full": True}, "generate": {"prompt": prompt, "n": N_GEN}})
    got = np.array([row["logits"] for row in out["evaluate"]], dtype=np.float64)
    scale = max(1.0, float(np.abs(ref_logits).max()))
    err = float(np.abs(got - ref_logits).max())
    assert err <= F32_LOGIT_RTOL * scale, f"llama.cpp vs reference: {err:.3g} > {F32_LOGIT_RTOL * scale:.3g}"
    # The short factors (or none) give other logits: the comparison sees which were used.
    short = ref_forward.load_hf(fx)
    short.long_inv_freq = None
    assert float(np.abs(got - short.logits(seq)).max()) > 10 * F32_LOGIT_RTOL * scale
    clear = rel_margins(ref_logits) > MARGIN
    got_arg = np.array([row["argmax"] for row in out["evaluate"]])
    bad = np.flatnonzero(clear & (ref_logits.argmax(-1) != got_arg))
    assert bad.size == 0, f"argmax differs at clear positions {bad.tolist()}"
    margins = rel_margins(ref_logits[len(prompt) - 1 : len(prompt) - 1 + N_GEN])
    n_clear = int(np.argmax(margins <= MARGIN)) if (margins <= MARGIN).any() else N_GEN
    assert n_clear >= 4
    assert out["generate"]["tokens"][:n_clear] == ref_gen[:n_clear]


def test_q8_0_loads_and_agrees_with_f32(setup, convert, llama):
    fx, _, _, prompt, _, seq, _ = setup
    f32 = llama({"model": str(convert(fx, "f32")), "evaluate": {"tokens": seq, "top": 2}})
    q8 = llama({"model": str(convert(fx, "q8_0")), "evaluate": {"tokens": seq, "top": 2}, "generate": {"prompt": prompt, "n": N_GEN}})
    a = np.array([r["argmax"] for r in f32["evaluate"]])
    b = np.array([r["argmax"] for r in q8["evaluate"]])
    assert float(np.mean(a == b)) >= Q8_0_MIN_AGREEMENT
    assert len(q8["generate"]["tokens"]) == N_GEN


@pytest.mark.parametrize("ctx", [128, 48])
def test_kiln_forward_matches_reference(setup, kiln, tmp_path, ctx):
    fx, _, model, *_ = setup
    per_path = tmp_path / "per.json"
    run_kiln(kiln, "eval", fx, "--text", TEXT, "--ctx", ctx, "--chunks", 2, "--per-token", per_path, "--json", "--quiet")
    per = json.loads(per_path.read_text())
    worst = 0.0
    for c, win in enumerate(per["windows"]):
        z = model.logits(win)
        m = z.max(axis=-1, keepdims=True)
        lp = z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))
        for s in per["scores"]:
            if s["chunk"] == c:
                worst = max(worst, abs(s["nll_original"] + lp[s["pos"]][s["target"]]))
    assert per["scores"] and worst <= NLL_TOL, f"ctx {ctx}: max |NLL kiln - numpy| = {worst:.3g}"


HOSTILE = [
    ({"partial_rotary_factor": 0.75}, "`partial_rotary_factor = 0.75` is not supported"),
    ({"partial_rotary_factor": 0.75, "rope_scaling": None}, "`partial_rotary_factor` (0.75; kiln carries 1) is not supported for Phi3ForCausalLM"),
    ({"hidden_act": "gelu"}, "`hidden_act`"),
    ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, "`rope_scaling.type = yarn` is not supported for `Phi3ForCausalLM`"),
    ({"rope_scaling": {"type": "longrope", "short_factor": [1.0] * 16}}, "`rope_scaling.long_factor` is missing"),
    ({"rope_scaling": {"type": "longrope", "short_factor": [1.0] * 8, "long_factor": [1.0] * 8}}, "`rope_scaling.long_factor` has 8 values; head_dim 32 needs 16"),
    ({"rope_scaling": {"type": "longrope", "short_factor": [1.0] * 16, "long_factor": [1.0] * 16, "attention_factor": 2.0}}, "llama.cpp derives"),
]


@pytest.mark.parametrize("change,message", HOSTILE)
def test_hostile_config_is_refused(kiln, tmp_path, change, message):
    src = fixture_path(FX)
    fx = tmp_path / "fx"
    fx.mkdir()
    for f in src.iterdir():
        if f.name != "config.json":
            (fx / f.name).symlink_to(f)
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(change)
    (fx / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out.gguf"
    proc = subprocess.run([str(kiln), "convert", str(fx), "--type", "q8_0", "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], proc.stderr
    assert not out.exists()
