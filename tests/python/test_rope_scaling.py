"""RoPE scaling carried over: Llama 3.1-style `rope_scaling` (type `llama3`).

fixtures/tiny-llama31 is a tiny LlamaForCausalLM with Llama 3.1's llama3 factors
and an original context of 64 positions; every sequence below is longer than that.

- kiln's F32 and Q8_0 conversions hold a `rope_freqs.weight` F32 tensor whose
  values equal llama.cpp's converter formula (conversion/llama.py, re-derived in
  numpy float32 here, not from kiln) and no `rope.scaling.*` key;
- llama.cpp (node-llama-cpp) on the F32 file gives the float64 numpy reference's
  logits (transformers' llama3 rope init, ref_forward.rope_init) within
  F32_LOGIT_RTOL, the same argmax at clear positions and the same greedy tokens;
  the same comparison against plain RoPE, or against the factors llama.cpp's
  converter would compute from its 8192 default, is far outside that tolerance,
  so the test fails when `rope_freqs` is missing or wrong;
- kiln's own forward pass (`kiln eval`) matches the reference per position;
- hostile `rope_scaling` values exit 2 with one `error:` line and write nothing.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import ref_forward
from conftest import ROOT, fixture_path, run_kiln
from runtime_common import F32_LOGIT_RTOL, MARGIN, PROMPT_TEXT, Q8_0_MIN_AGREEMENT, hf_encoder, rel_margins

FX = "tiny-llama31"
N_GEN = 16
NLL_TOL = 1e-4


def llama_cpp_rope_freqs(cfg: dict, old_context_len: int | None = None) -> np.ndarray:
    """llama.cpp's converter (conversion/llama.py, generate_extra_tensors), in float32
    as torch computes it: freqs = 1 / base ** (arange(0, dim, 2) / dim), then per
    frequency 1, factor, or 1 / ((1 - smooth) / factor + smooth)."""
    rs = cfg["rope_scaling"]
    f32 = np.float32
    base = f32(cfg["rope_theta"])
    dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    freqs = f32(1.0) / (base ** (np.arange(0, dim, 2, dtype=np.float32) / f32(dim)))
    factor = rs["factor"]
    low, high = rs["low_freq_factor"], rs["high_freq_factor"]
    old = old_context_len or rs["original_max_position_embeddings"]
    low_wavelen, high_wavelen = f32(old / low), f32(old / high)
    out = []
    for freq in freqs:
        wavelen = f32(2 * math.pi) / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (f32(old) / wavelen - f32(low)) / f32(high - low)
            out.append(f32(1) / ((f32(1) - smooth) / f32(factor) + smooth))
    return np.array(out, dtype=np.float32)


def long_prompt(fx: Path) -> list[int]:
    ids = hf_encoder(fx)(" ".join([PROMPT_TEXT] * 4))
    cfg = json.loads((fx / "config.json").read_text())
    return [cfg["bos_token_id"]] + ids[:90]


@pytest.fixture(scope="module")
def setup():
    fx = fixture_path(FX)
    cfg = json.loads((fx / "config.json").read_text())
    assert cfg["rope_scaling"]["rope_type"] == "llama3"
    model = ref_forward.load_hf(fx)
    prompt = long_prompt(fx)
    gen, _ = model.greedy(prompt, N_GEN)
    seq = prompt + gen
    assert len(prompt) > cfg["rope_scaling"]["original_max_position_embeddings"]
    return fx, cfg, model, prompt, gen, seq, model.logits(seq)


def gguf_reader(path: Path):
    import gguf

    return gguf.GGUFReader(str(path))


@pytest.mark.parametrize("qtype", ["f32", "q8_0"])
def test_rope_freqs_tensor_is_llama_cpp_formula(setup, convert, qtype):
    fx, cfg, *_ = setup
    r = gguf_reader(convert(fx, qtype))
    t = {t.name: t for t in r.tensors}["rope_freqs.weight"]
    assert t.tensor_type.name == "F32", "rope_freqs is never quantized"
    got = np.asarray(t.data, dtype=np.float32)
    want = llama_cpp_rope_freqs(cfg)
    assert got.shape == want.shape == (cfg["head_dim"] // 2,)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
    # The fixture exercises all three branches of the formula.
    assert (want == 1).any() and (want == cfg["rope_scaling"]["factor"]).any()
    assert ((want > 1) & (want < cfg["rope_scaling"]["factor"])).any()
    assert not [k for k in r.fields if ".rope.scaling." in k], "llama3 scaling writes no rope.scaling.* key"


def test_llama_cpp_matches_reference_past_original_context(setup, convert, llama):
    fx, cfg, model, prompt, ref_gen, seq, ref_logits = setup
    out = llama({"model": str(convert(fx, "f32")), "evaluate": {"tokens": seq, "top": 2, "full": True}, "generate": {"prompt": prompt, "n": N_GEN}})
    got = np.array([row["logits"] for row in out["evaluate"]], dtype=np.float64)
    assert got.shape == ref_logits.shape
    scale = max(1.0, float(np.abs(ref_logits).max()))
    err = float(np.abs(got - ref_logits).max())
    assert err <= F32_LOGIT_RTOL * scale, f"llama.cpp vs reference: max |delta logit| {err:.3g} > {F32_LOGIT_RTOL * scale:.3g}"

    # Sensitivity: without rope_freqs (plain RoPE), or with factors from another
    # original context (llama.cpp's converter's 8192 default), the logits past the
    # first positions are far from llama.cpp's.
    plain = ref_forward.load_hf(fx)
    plain.inv_freq = None
    other = ref_forward.load_hf(fx)
    d = cfg["head_dim"]
    base_inv = 1.0 / (cfg["rope_theta"] ** (np.arange(0, d, 2, dtype=np.float64) / d))
    other.inv_freq = base_inv / llama_cpp_rope_freqs(cfg, old_context_len=8192).astype(np.float64)
    for wrong in (plain, other):
        werr = float(np.abs(got - wrong.logits(seq)).max())
        assert werr > 100 * F32_LOGIT_RTOL * scale, f"the comparison cannot tell wrong RoPE factors apart ({werr:.3g})"

    clear = rel_margins(ref_logits) > MARGIN
    got_arg = np.array([row["argmax"] for row in out["evaluate"]])
    bad = np.flatnonzero(clear & (ref_logits.argmax(-1) != got_arg))
    assert bad.size == 0, f"argmax differs at clear positions {bad.tolist()}"
    gen = out["generate"]["tokens"]
    margins = rel_margins(ref_logits[len(prompt) - 1 : len(prompt) - 1 + N_GEN])
    n_clear = int(np.argmax(margins <= MARGIN)) if (margins <= MARGIN).any() else N_GEN
    assert n_clear >= 4, f"only {n_clear} clear greedy steps"
    assert gen[:n_clear] == ref_gen[:n_clear], f"greedy: llama.cpp {gen} vs numpy {ref_gen}"


def test_q8_0_loads_and_agrees_with_f32(setup, convert, llama):
    fx, _, _, prompt, _, seq, _ = setup
    f32 = llama({"model": str(convert(fx, "f32")), "evaluate": {"tokens": seq, "top": 2}})
    q8 = llama({"model": str(convert(fx, "q8_0")), "evaluate": {"tokens": seq, "top": 2}, "generate": {"prompt": prompt, "n": N_GEN}})
    a = np.array([r["argmax"] for r in f32["evaluate"]])
    b = np.array([r["argmax"] for r in q8["evaluate"]])
    assert float(np.mean(a == b)) >= Q8_0_MIN_AGREEMENT
    assert len(q8["generate"]["tokens"]) == N_GEN


@pytest.mark.parametrize("source", ["hf", "gguf"])
def test_kiln_forward_matches_reference(setup, kiln, convert, tmp_path, source):
    """`kiln eval` (its forward pass, RoPE factors read from the model) per position."""
    fx, _, model, *_ = setup
    text = ROOT / "fixtures" / "text" / "pride-and-prejudice-ch1-17.txt"
    ctx = 128
    target = fx if source == "hf" else convert(fx, "f32")
    per_path = tmp_path / "per.json"
    run_kiln(kiln, "eval", target, "--text", text, "--ctx", ctx, "--chunks", 2, "--per-token", per_path, "--json", "--quiet")
    per = json.loads(per_path.read_text())
    worst = 0.0
    logits = {}
    for s in per["scores"]:
        c = s["chunk"]
        if c not in logits:
            z = model.logits(per["windows"][c])
            m = z.max(axis=-1, keepdims=True)
            logits[c] = z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))
        row = logits[c][s["pos"]]
        worst = max(worst, abs(s["nll_original"] + row[s["target"]]))
    assert per["scores"] and max(s["pos"] for s in per["scores"]) > 64
    assert worst <= NLL_TOL, f"max |NLL kiln - numpy| = {worst:.3g}"


HOSTILE = [
    ({"rope_type": "longrope", "factor": 8.0}, "`rope_scaling.rope_type = longrope` is not supported for `LlamaForCausalLM`"),
    ({"type": "dynamic", "factor": 2.0}, "`rope_scaling.type = dynamic` is not supported"),
    ({"rope_type": "no-such-rope", "factor": 2.0}, "no-such-rope"),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "original_max_position_embeddings": 64}, "`rope_scaling.high_freq_factor` is missing"),
    ({"rope_type": "linear"}, "`rope_scaling.factor` is missing"),
    ({"rope_type": "linear", "factor": 0}, "`rope_scaling.factor` is 0: it must be a positive number"),
    ({"rope_type": "yarn", "factor": -4.0}, "must be a positive number"),
    ({"factor": 8.0}, "has no `rope_type`"),
    # llama.cpp's llama loader does not read yarn_beta_fast: it would run 32.
    ({"rope_type": "yarn", "factor": 4.0, "beta_fast": 16.0}, "`rope_scaling.beta_fast` is 16"),
]


@pytest.mark.parametrize("rope_scaling,message", HOSTILE)
def test_hostile_rope_scaling_is_refused(kiln, tmp_path, rope_scaling, message):
    src = fixture_path(FX)
    fx = tmp_path / "fx"
    fx.mkdir()
    for f in src.iterdir():
        (fx / f.name).symlink_to(f)
    cfg = json.loads((src / "config.json").read_text())
    cfg["rope_scaling"] = rope_scaling
    (fx / "config.json").unlink()
    (fx / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out.gguf"
    proc = subprocess.run([str(kiln), "convert", str(fx), "--type", "q8_0", "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert message in lines[0] and "config.json" in lines[0], lines[0]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["fx"]


VARIANTS = {
    # Qwen2.5's long-context form (rope_scaling yarn), on tiny-qwen2.
    "qwen2-yarn": ("tiny-qwen2", {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}),
    # YaRN (betas stated, at the only values llama.cpp's llama loader runs) and
    # linear, on tiny-llama31's sharp attention.
    "llama-yarn": ("tiny-llama31", {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "beta_fast": 32.0, "beta_slow": 1.0}),
    "llama-linear": ("tiny-llama31", {"rope_type": "linear", "factor": 4.0}),
}


def variant_dir(tmp_path: Path, name: str) -> Path:
    fx_name, rope_scaling = VARIANTS[name]
    src = fixture_path(fx_name)
    fx = tmp_path / name
    fx.mkdir()
    for f in src.iterdir():
        if f.name != "config.json":
            (fx / f.name).symlink_to(f)
    cfg = json.loads((src / "config.json").read_text())
    cfg["rope_scaling"] = rope_scaling
    (fx / "config.json").write_text(json.dumps(cfg))
    return fx


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_linear_and_yarn_run_as_transformers_computes_them(name, kiln, llama, tmp_path):
    """llama.cpp on kiln's F32 file and kiln's forward pass agree with
    transformers' linear / YaRN rope init (numpy reference) past the original context."""
    fx = variant_dir(tmp_path, name)
    out = tmp_path / f"{name}.gguf"
    run_kiln(kiln, "convert", fx, "--type", "f32", "-o", out, "--quiet")
    fields = gguf_reader(out).fields
    arch = "qwen2" if name.startswith("qwen2") else "llama"
    kind = VARIANTS[name][1].get("rope_type", VARIANTS[name][1].get("type"))
    assert fields[f"{arch}.rope.scaling.type"].contents() == kind
    assert fields[f"{arch}.rope.scaling.factor"].contents() == 4.0
    if kind == "yarn":
        assert fields[f"{arch}.rope.scaling.original_context_length"].contents() == 64
    model = ref_forward.load_hf(fx)
    seq = long_prompt(fx)
    ref_logits = model.logits(seq)
    res = llama({"model": str(out), "evaluate": {"tokens": seq, "top": 2, "full": True}})
    got = np.array([row["logits"] for row in res["evaluate"]], dtype=np.float64)
    scale = max(1.0, float(np.abs(ref_logits).max()))
    err = float(np.abs(got - ref_logits).max())
    assert err <= F32_LOGIT_RTOL * scale, f"{name}: llama.cpp vs reference {err:.3g} > {F32_LOGIT_RTOL * scale:.3g}"
    plain = ref_forward.load_hf(fx)
    plain.inv_freq, plain.attention_scaling = None, 1.0
    assert float(np.abs(got - plain.logits(seq)).max()) > 10 * F32_LOGIT_RTOL * scale, "scaling changed nothing measurable"
    # kiln's forward pass on its own file.
    text = ROOT / "fixtures" / "text" / "pride-and-prejudice-ch1-17.txt"
    per_path = tmp_path / "per.json"
    run_kiln(kiln, "eval", out, "--text", text, "--ctx", 128, "--chunks", 1, "--per-token", per_path, "--json", "--quiet")
    per = json.loads(per_path.read_text())
    z = model.logits(per["windows"][0])
    m = z.max(axis=-1, keepdims=True)
    lp = z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))
    worst = max(abs(s["nll_original"] + lp[s["pos"]][s["target"]]) for s in per["scores"])
    assert worst <= NLL_TOL, f"{name}: max |NLL kiln - numpy| = {worst:.3g}"
