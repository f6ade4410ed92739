"""The static-activation compressed-tensors schemes, FP8 (per-tensor E4M3 weights,
static per-tensor FP8 activations) and NVFP4 (W4A4), checked independently of kiln.

Weights: every stored tensor against compressed-tensors' arithmetic applied here to
the source weights (numpy, the helpers of `test_ct_decoder.py`): per-tensor FP8
scale = amax/448 in the weight dtype, codes e4m3(clip(w/scale)); NVFP4 as NVFP4A16.

Activations: the calibration text is tokenized here with the `tokenizers` package
and cut into kiln's windows (`--calib-ctx` tokens each, the first `--calib-windows`
the text fills; tiny-llama adds no BOS). The input of layer 0's q/k/v projections
is RMSNorm(embedding) x input_layernorm, which depends on the token alone, so its
largest magnitude over the calibration tokens is computed here from the embedding
table without running the model, and the stored `input_scale` (FP8: amax/448 in the
weight dtype) and `input_global_scale` (NVFP4: 448*6/amax in f32) must match it.
Layers further in need the whole forward pass: for them the test checks what must
hold of any calibration (one input, one scale: q/k/v equal, gate/up equal; positive
and finite), and the config block llm-compressor's presets write.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import ROOT, run_kiln
from test_ct_decoder import E4M3, EPS, TINY, e4m3_encode, floats, read_safetensors, rounder

CTX, WINDOWS = 64, 12
TEXT = ROOT / "fixtures" / "text" / "pride-and-prejudice-ch1-17.txt"


def layer0_qkv_input_amax(src) -> float:
    """max |RMSNorm(e) * w| over the embeddings e of the calibration tokens."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    ids = tok.encode(TEXT.read_text(), add_special_tokens=False).ids
    n = min(WINDOWS, len(ids) // CTX)
    used = sorted(set(ids[: n * CTX]))
    cfg = json.loads((src / "config.json").read_text())
    st = read_safetensors(src / "model.safetensors")
    d, shape, raw = st["model.embed_tokens.weight"]
    emb = floats(d, raw, shape)[used].astype(np.float64)
    d, shape, raw = st["model.layers.0.input_layernorm.weight"]
    w = floats(d, raw, shape).astype(np.float64)
    x = emb / np.sqrt((emb**2).mean(axis=1, keepdims=True) + cfg["rms_norm_eps"]) * w
    return float(np.abs(x).max())


def convert(kiln, tmp_path, scheme):
    out = tmp_path / scheme
    src = ROOT / "fixtures" / "tiny-llama"
    run_kiln(
        kiln, "convert", src, "--format", "compressed-tensors", "--scheme", scheme,
        "--text", TEXT, "--calib-ctx", str(CTX), "--calib-windows", str(WINDOWS), "-o", out,
    )
    return src, out, read_safetensors(out / "model.safetensors")


def scalar(stored, name):
    d, shape, raw = stored[name]
    assert shape == [1], name
    return float(floats(d, raw, shape)[0]), d


def check_one_scale_per_input(stored, suffix):
    for layer in (0, 1):
        p = f"model.layers.{layer}."
        qkv = {scalar(stored, f"{p}self_attn.{m}.{suffix}") for m in ("q_proj", "k_proj", "v_proj")}
        gu = {scalar(stored, f"{p}mlp.{m}.{suffix}") for m in ("gate_proj", "up_proj")}
        assert len(qkv) == 1 and len(gu) == 1, (layer, qkv, gu)
        for m in ("self_attn.o_proj", "mlp.down_proj", "self_attn.q_proj", "mlp.gate_proj"):
            v, _ = scalar(stored, f"{p}{m}.{suffix}")
            assert np.isfinite(v) and v > 0, (m, v)


def test_fp8_static(kiln, tmp_path):
    src, out, stored = convert(kiln, tmp_path, "FP8")
    g0 = json.loads((out / "config.json").read_text())["quantization_config"]["config_groups"]["group_0"]
    assert g0["format"] == "float-quantized"
    assert {k: g0["weights"][k] for k in ("num_bits", "type", "strategy", "dynamic")} == dict(
        num_bits=8, type="float", strategy="tensor", dynamic=False
    )
    ia = g0["input_activations"]
    assert {k: ia[k] for k in ("num_bits", "type", "strategy", "dynamic", "symmetric")} == dict(
        num_bits=8, type="float", strategy="tensor", dynamic=False, symmetric=True
    )
    source = read_safetensors(src / "model.safetensors")
    linears = [k[: -len(".weight")] for k in source if k.endswith("_proj.weight")]
    assert len(linears) >= 14
    for module in linears:
        d, shape, raw = source[module + ".weight"]
        R = rounder(d)
        w = floats(d, raw, shape)
        scale = R(np.float32(np.abs(w).max()) / np.float32(448.0))
        scale = np.float32(EPS[d]) if scale == 0 else np.float32(scale)
        got, sd = scalar(stored, module + ".weight_scale")
        assert sd == d and got == scale, (module, got, scale)
        codes = e4m3_encode(np.clip(R(w / scale) + np.float32(0.0), -448, 448))
        wd, wshape, wraw = stored[module + ".weight"]
        assert (wd, wshape) == ("F8_E4M3", shape), module
        np.testing.assert_array_equal(np.frombuffer(wraw, np.uint8).reshape(shape), codes, err_msg=module)
        assert np.linalg.norm(E4M3[codes] * scale - w) / np.linalg.norm(w) < 0.05, module
    check_one_scale_per_input(stored, "input_scale")
    amax = layer0_qkv_input_amax(src)
    got, d = scalar(stored, "model.layers.0.self_attn.q_proj.input_scale")
    want = float(rounder(d)(np.float32(amax / 448.0)))
    assert abs(got - want) <= 0.01 * want, (got, want)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["calibration"]["windows"] == WINDOWS and manifest["calibration"]["ctx"] == CTX


def test_nvfp4_w4a4(kiln, tmp_path):
    src, out, stored = convert(kiln, tmp_path, "NVFP4")
    g0 = json.loads((out / "config.json").read_text())["quantization_config"]["config_groups"]["group_0"]
    assert g0["format"] == "nvfp4-pack-quantized"
    ia = g0["input_activations"]
    assert {k: ia[k] for k in ("num_bits", "type", "strategy", "group_size", "dynamic")} == dict(
        num_bits=4, type="float", strategy="tensor_group", group_size=16, dynamic="local"
    )
    check_one_scale_per_input(stored, "input_global_scale")
    amax = np.float32(layer0_qkv_input_amax(src))
    got, d = scalar(stored, "model.layers.0.self_attn.q_proj.input_global_scale")
    assert d == "F32"
    want = float(np.float32(np.float32(1.0) / max(amax, np.float32(TINY["F32"]))) * np.float32(2688.0))
    assert abs(got - want) <= 0.01 * want, (got, want)


@pytest.mark.parametrize("scheme", ["FP8", "NVFP4"])
def test_static_schemes_need_text(kiln, tmp_path, scheme):
    out = tmp_path / "o"
    r = run_kiln(
        kiln, "convert", ROOT / "fixtures" / "tiny-llama", "--format", "compressed-tensors",
        "--scheme", scheme, "-o", out, check=False,
    )
    assert r.returncode == 2 and "--text" in r.stderr and not out.exists(), r.stderr


def test_calibration_context_longer_than_the_text_names_its_flag(kiln, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("It is a truth universally acknowledged.")
    out = tmp_path / "o"
    r = run_kiln(
        kiln, "convert", ROOT / "fixtures" / "tiny-llama", "--format", "compressed-tensors",
        "--scheme", "FP8", "--text", short, "--calib-ctx", "64", "-o", out, check=False,
    )
    assert r.returncode == 2 and not out.exists(), r.stderr
    lines = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "--calib-ctx 64" in lines[0] and "short.txt" in lines[0], r.stderr


GOLDENS = sorted((ROOT / "fixtures" / "compressed_tensors" / "goldens_static").glob("*.json"))


def without_null_dtypes(qc):
    """The config block as kiln writes it: null `scale_dtype`/`zp_dtype` left out
    (loaders before compressed-tensors 0.13 reject the keys), `ignore` as a set."""
    qc = json.loads(json.dumps(qc))
    for g in qc["config_groups"].values():
        for args in ("weights", "input_activations"):
            if g.get(args):
                for k in ("scale_dtype", "zp_dtype"):
                    if g[args].get(k) is None:
                        g[args].pop(k, None)
    qc["ignore"] = sorted(qc["ignore"])
    return qc


@pytest.mark.parametrize("golden", GOLDENS, ids=[g.stem for g in GOLDENS])
def test_matches_llm_compressor(kiln, tmp_path, golden):
    """llm-compressor's FP8 / NVFP4 presets calibrated on the same windows
    (fixtures/compressed_tensors/make_static_goldens.py): every weight tensor byte
    for byte, the config block, and each activation scale within 2% (kiln observes
    its f32 forward pass of the unquantized model, llm-compressor the model in its
    dtype: measured, the scales agree to 1.3% at most, most exactly)."""
    import hashlib

    g = json.loads(golden.read_text())
    cal = g["calibration"]
    out = tmp_path / "o"
    run_kiln(
        kiln, "convert", ROOT / g["model"], "--format", "compressed-tensors",
        "--scheme", g["scheme"], "--text", ROOT / cal["text"], "--calib-ctx", str(cal["ctx"]),
        "--calib-windows", str(cal["windows"]), "-o", out,
    )
    stored = read_safetensors(out / "model.safetensors")
    assert set(stored) == set(g["tensors"]), set(stored) ^ set(g["tensors"])
    scales = 0
    for name, want in g["tensors"].items():
        d, shape, raw = stored[name]
        assert (d, shape) == (want["dtype"], want["shape"]), name
        if "value" in want:
            got = float(floats(d, raw, shape).reshape(-1)[0])
            assert abs(got / want["value"] - 1) <= 0.02, (name, got, want["value"])
            scales += 1
        else:
            assert hashlib.sha256(raw).hexdigest() == want["sha256"], name
    assert scales == 14
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert without_null_dtypes(config) == without_null_dtypes(g["quantization_config"])
