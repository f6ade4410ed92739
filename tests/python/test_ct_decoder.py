"""An independent decoder for kiln's compressed-tensors artifacts (numpy only).

Written from compressed-tensors' source (0.19/0.20: `compressors/pack_quantized/
{base,helpers}.py` pack_to_int32/unpack_from_int32, `compressors/nvfp4/helpers.py`
pack_fp4_to_uint8/unpack_fp4_from_uint8, `compressors/mxfp4/base.py` and
`compressors/mx_utils.py`, `quantization/utils/helpers.py` calculate_qparams/
generate_gparam/_get_dtype_eps, `quantization/utils/mxfp_utils.py` round_to_power_2/
generate_mx_scales, `quantization/utils/fp4_utils.py` cast_to_fp4 (the CPU path),
`quantization/lifecycle/forward_helpers.py` _quantize/_dequantize), not from kiln's
code. For every scheme kiln writes, both tiny fixtures (bf16 and f16) are converted;
every stored tensor is read with a hand-written safetensors reader, unpacked, and
compared exactly with the quantization arithmetic applied here to the source
weights (values, scales, zero points, global scales), with its dtype and shape; the
decoded weight's error is bounded; and the `quantization_config` block is checked
field by field.

Torch computes each op on a bf16/f16 tensor in f32 and rounds the result to the
tensor's dtype; `R` below is that rounding. A bf16 tensor divided by an f32 tensor
promotes to f32 (NVFP4's global scale). A Python scalar divided by a tensor is
`tensor.reciprocal() * scalar` (two roundings).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, run_kiln

# --- safetensors, from the format's description -------------------------------

SIZES = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I8": 1, "U8": 1, "F8_E4M3": 1}


def read_safetensors(path: Path) -> dict[str, tuple[str, list[int], bytes]]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        a, b = e["data_offsets"]
        raw = data[8 + n + a : 8 + n + b]
        assert len(raw) == int(np.prod(e["shape"], dtype=np.int64)) * SIZES[e["dtype"]], name
        out[name] = (e["dtype"], e["shape"], raw)
    return out


def floats(dtype: str, raw: bytes, shape) -> np.ndarray:
    if dtype == "F32":
        v = np.frombuffer(raw, "<f4")
    elif dtype == "F16":
        v = np.frombuffer(raw, "<f2").astype(np.float32)
    elif dtype == "BF16":
        v = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
    else:
        raise AssertionError(dtype)
    return v.reshape(shape).astype(np.float32)


# --- rounding to the weight dtype -------------------------------------------------


def bf16(x: np.ndarray) -> np.ndarray:
    b = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    b = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) << 16
    return b.astype(np.uint32).view(np.float32)


def rounder(dtype: str):
    if dtype == "BF16":
        return bf16
    if dtype == "F16":
        return lambda x: np.asarray(x, np.float32).astype(np.float16).astype(np.float32)
    return lambda x: np.asarray(x, np.float32)


EPS = {"BF16": 0.0078125, "F16": float(np.finfo(np.float16).eps), "F32": float(np.finfo(np.float32).eps)}
TINY = {"BF16": float(np.finfo(np.float32).tiny), "F16": float(np.finfo(np.float16).tiny), "F32": float(np.finfo(np.float32).tiny)}

# --- E4M3FN: every code's value; encoding is round-to-nearest-even ------------------


def e4m3_table() -> np.ndarray:
    v = np.zeros(256, np.float32)
    for b in range(256):
        s = -1.0 if b & 0x80 else 1.0
        e, m = (b >> 3) & 0xF, b & 7
        if e == 0xF and m == 7:
            v[b] = np.nan
        elif e == 0:
            v[b] = s * m * 2.0**-9
        else:
            v[b] = s * (1 + m / 8) * 2.0 ** (e - 7)
    return v


E4M3 = e4m3_table()
POS = E4M3[:0x7F]  # 0 .. 448, increasing


def e4m3_encode(x: np.ndarray) -> np.ndarray:
    """Values already clamped to +-448; nearest code, ties to the even code."""
    x = np.asarray(x, np.float32)
    a = np.abs(x)
    hi = np.clip(np.searchsorted(POS, a, side="left"), 0, 0x7E)
    lo = np.clip(hi - 1, 0, 0x7E)
    dlo, dhi = a - POS[lo], POS[hi] - a
    pick = np.where(dlo < dhi, lo, np.where(dhi < dlo, hi, np.where(lo % 2 == 0, lo, hi)))
    return (pick | np.where(np.signbit(x), 0x80, 0)).astype(np.uint8)


# --- FP4 (E2M1) -------------------------------------------------------------------

FP4 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], np.float32)


def cast_to_fp4(x: np.ndarray) -> np.ndarray:
    """cast_to_fp4's CPU path: sign * rounded magnitude (-0.0 kept for small negatives)."""
    sign = np.sign(x)
    a = np.abs(x)
    q = np.select(
        [a <= 0.25, a < 0.75, a <= 1.25, a < 1.75, a <= 2.5, a < 3.5, a <= 5.0],
        [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0],
        6.0,
    ).astype(np.float32)
    return q * sign


def fp4_codes(q: np.ndarray) -> np.ndarray:
    """pack_fp4_to_uint8's index and sign bit."""
    sign = np.signbit(q).astype(np.uint8)
    idx = np.searchsorted(FP4, np.abs(q)).astype(np.uint8)
    assert np.all(FP4[idx] == np.abs(q))
    return idx | (sign << 3)


def unpack_fp4(raw: bytes, rows: int, cols: int) -> np.ndarray:
    b = np.frombuffer(raw, np.uint8)
    codes = np.stack([b & 0xF, b >> 4], axis=1).reshape(rows, cols)
    return np.where(codes & 8, -1.0, 1.0).astype(np.float32) * FP4[codes & 7]


# --- int32 packing (dense since compressed-tensors 0.18) ----------------------------


def unpack_from_int32(words: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Rows of int32 words -> rows of n signed values; element i at bit i*bits."""
    w = words.astype(np.uint32).astype(np.uint64)
    rows = w.shape[0]
    w = np.concatenate([w, np.zeros((rows, 1), np.uint64)], axis=1)
    i = np.arange(n)
    bit = i * bits
    lo, hi = w[:, bit // 32], w[:, bit // 32 + 1]
    v = ((lo | (hi << np.uint64(32))) >> (bit % 32).astype(np.uint64)) & np.uint64((1 << bits) - 1)
    return v.astype(np.int64) - (1 << (bits - 1))


# --- the schemes ---------------------------------------------------------------------

# name, --group-size, expected format, weight args (subset), activations
SCHEMES = [
    ("W4A16", None, "pack-quantized", dict(num_bits=4, type="int", strategy="group", group_size=128, symmetric=True), None),
    ("W4A16", "32", "pack-quantized", dict(num_bits=4, type="int", strategy="group", group_size=32, symmetric=True), None),
    ("W4A16", "0", "pack-quantized", dict(num_bits=4, type="int", strategy="channel", group_size=None, symmetric=True), None),
    ("W4A16_ASYM", None, "pack-quantized", dict(num_bits=4, type="int", strategy="group", group_size=128, symmetric=False), None),
    ("W4A16_ASYM", "64", "pack-quantized", dict(num_bits=4, type="int", strategy="group", group_size=64, symmetric=False), None),
    ("W8A16", None, "pack-quantized", dict(num_bits=8, type="int", strategy="group", group_size=128, symmetric=True), None),
    ("W8A8", None, "int-quantized", dict(num_bits=8, type="int", strategy="channel", symmetric=True), dict(num_bits=8, type="int", strategy="token", dynamic=True)),
    ("FP8_DYNAMIC", None, "float-quantized", dict(num_bits=8, type="float", strategy="channel", symmetric=True), dict(num_bits=8, type="float", strategy="token", dynamic=True)),
    ("FP8_BLOCK", None, "float-quantized", dict(num_bits=8, type="float", strategy="block", block_structure=[128, 128]), dict(num_bits=8, type="float", strategy="group", group_size=128, dynamic=True)),
    ("NVFP4A16", None, "nvfp4-pack-quantized", dict(num_bits=4, type="float", strategy="tensor_group", group_size=16, scale_dtype="torch.float8_e4m3fn"), None),
    ("MXFP4A16", None, "mxfp4-pack-quantized", dict(num_bits=4, type="float", strategy="group", group_size=32, scale_dtype="torch.uint8"), None),
]

ARG_FIELDS = {"actorder", "block_structure", "dynamic", "group_size", "num_bits", "observer", "observer_kwargs", "strategy", "symmetric", "type", "scale_dtype", "zp_dtype"}
# Phi-3's qkv_proj and gate_up_proj are single Linears (fused in the checkpoint);
# Mixtral's experts are w1 (gate), w3 (up), w2 (down). MoE routers (`mlp.gate`,
# `block_sparse_moe.gate`, `mlp.shared_expert_gate`) are not among them: kept and
# listed in `ignore`, as llm-compressor's MoE recipes do.
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "qkv_proj", "gate_up_proj", "w1", "w2", "w3")
FUSED = [("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"), ("w1", "w3")]
ROUTERS = ("gate", "shared_expert_gate")


def is_linear_name(module: str) -> bool:
    return module.rsplit(".", 1)[-1] in LINEARS


def fused_modules(module: str) -> list[str]:
    """The modules sharing `module`'s NVFP4 global scale (vLLM fuses them); itself alone otherwise."""
    stem, last = module.rsplit(".", 1)
    for group in FUSED:
        if last in group:
            return [f"{stem}.{o}" for o in group]
    return [module]


def int_qparams(w, g, bits, symmetric, R, dtype):
    rows, cols = w.shape
    x = w.reshape(rows, cols // g, g)
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    lo = np.minimum(x.min(axis=2), 0)
    hi = np.maximum(x.max(axis=2), 0)
    if symmetric:
        scale = R(np.maximum(np.abs(lo), np.abs(hi)) / R((qmax - qmin) / 2))
        zp = np.zeros_like(scale)
    else:
        scale = R(R(hi - lo) / (qmax - qmin))
        with np.errstate(divide="ignore", invalid="ignore"):
            zp = np.clip(R(qmin - R(lo / scale)), qmin, qmax)
    scale = np.where(scale == 0, np.float32(EPS[dtype]), scale).astype(np.float32)
    zp = np.rint(zp)
    scaled = R(x / scale[..., None])
    if not symmetric:
        scaled = R(scaled + zp[..., None])
    q = np.rint(np.clip(scaled, qmin, qmax)).reshape(rows, cols)
    return q.astype(np.int64), scale, zp.astype(np.int64)


def check_module(stored, module, w, dtype, scheme, args, fused_amax):
    """Every stored tensor of `module` against the arithmetic on `w`; returns the decoded weight."""
    R = rounder(dtype)
    rows, cols = w.shape
    fmt = scheme[2]
    names = {k[len(module) + 1 :] for k in stored if k.startswith(module + ".")} - {"bias"}
    if fmt in ("pack-quantized", "int-quantized"):
        bits, symmetric = args["num_bits"], args["symmetric"]
        g = args.get("group_size") or cols
        q, scale, zp = int_qparams(w, g, bits, symmetric, R, dtype)
        want = {"weight_scale"} | ({"weight_packed", "weight_shape"} if fmt == "pack-quantized" else {"weight"})
        want |= set() if symmetric else {"weight_zero_point"}
        assert names == want, (module, names)
        sd, sshape, sraw = stored[module + ".weight_scale"]
        assert (sd, sshape) == (dtype, [rows, cols // g]), module
        np.testing.assert_array_equal(floats(sd, sraw, sshape), scale, err_msg=module)
        if fmt == "pack-quantized":
            pd, pshape, praw = stored[module + ".weight_packed"]
            words = -(-cols * bits // 32)
            assert (pd, pshape) == ("I32", [rows, words]), module
            got = unpack_from_int32(np.frombuffer(praw, "<i4").reshape(rows, words), bits, cols)
            hd, hshape, hraw = stored[module + ".weight_shape"]
            assert (hd, hshape) == ("I64", [2]) and list(np.frombuffer(hraw, "<i8")) == [rows, cols], module
        else:
            pd, pshape, praw = stored[module + ".weight"]
            assert (pd, pshape) == ("I8", [rows, cols]), module
            got = np.frombuffer(praw, np.int8).reshape(rows, cols).astype(np.int64)
        np.testing.assert_array_equal(got, q, err_msg=module)
        if not symmetric:
            zd, zshape, zraw = stored[module + ".weight_zero_point"]
            zwords = -(-rows * bits // 32)
            assert (zd, zshape) == ("I32", [zwords, cols // g]), module
            # Packed along dim 0: unpack the transpose.
            zgot = unpack_from_int32(np.frombuffer(zraw, "<i4").reshape(zwords, cols // g).T.copy(), bits, rows).T
            np.testing.assert_array_equal(zgot, zp, err_msg=module)
        return R((R(got.reshape(rows, cols // g, g) - zp[..., None])) * scale[..., None]).reshape(rows, cols)
    if fmt == "float-quantized":
        assert names == {"weight", "weight_scale"}, (module, names)
        b = (args.get("block_structure") or [1, cols])[0] if args["strategy"] == "block" else None
        br, bc = (b, b) if b else (1, cols)
        nr, nc = -(-rows // br), -(-cols // bc)
        if b is None:
            amax = np.abs(w).max(axis=1, keepdims=True).astype(np.float32)
        else:
            amax = np.zeros((nr, nc), np.float32)
            for i in range(nr):
                for j in range(nc):
                    amax[i, j] = np.abs(w[i * br : (i + 1) * br, j * bc : (j + 1) * bc]).max()
        scale = R(amax / 448.0)
        scale = np.where(scale == 0, np.float32(EPS[dtype]), scale).astype(np.float32)
        full = np.repeat(np.repeat(scale, br, axis=0), bc, axis=1)[:rows, :cols]
        codes = e4m3_encode(np.clip(R(w / full) + np.float32(0.0), -448, 448))
        sd, sshape, sraw = stored[module + ".weight_scale"]
        assert (sd, sshape) == (dtype, [nr, nc] if b else [rows, 1]), module
        np.testing.assert_array_equal(floats(sd, sraw, sshape).reshape(nr, nc), scale, err_msg=module)
        wd, wshape, wraw = stored[module + ".weight"]
        assert (wd, wshape) == ("F8_E4M3", [rows, cols]), module
        got = np.frombuffer(wraw, np.uint8).reshape(rows, cols)
        np.testing.assert_array_equal(got, codes, err_msg=module)
        return R(E4M3[got] * full)
    if fmt == "nvfp4-pack-quantized":
        assert names == {"weight_packed", "weight_scale", "weight_global_scale"}, (module, names)
        amax = np.float32(max(fused_amax, TINY[dtype]))
        gscale = np.float32(R(R(np.float32(1.0) / amax) * np.float32(2688.0)))
        x = w.reshape(rows, cols // 16, 16)
        local = R(np.abs(x).max(axis=2) / 6.0)
        s = e4m3_encode(np.clip(gscale * local, -448, 448))
        s = np.where(E4M3[s] == 0, e4m3_encode(np.float32(0.125)), s)
        eff = (E4M3[s] / gscale).astype(np.float32)
        q = cast_to_fp4(np.clip((x / eff[..., None]).astype(np.float32) + np.float32(0.0), -6, 6)).reshape(rows, cols)
        gd, gshape, graw = stored[module + ".weight_global_scale"]
        assert (gd, gshape) == ("F32", [1]) and np.frombuffer(graw, "<f4")[0] == gscale, module
        sd, sshape, sraw = stored[module + ".weight_scale"]
        assert (sd, sshape) == ("F8_E4M3", [rows, cols // 16]), module
        np.testing.assert_array_equal(np.frombuffer(sraw, np.uint8).reshape(rows, cols // 16), s, err_msg=module)
        pd, pshape, praw = stored[module + ".weight_packed"]
        assert (pd, pshape) == ("U8", [rows, cols // 2]), module
        c = fp4_codes(q).reshape(-1, 2)
        np.testing.assert_array_equal(np.frombuffer(praw, np.uint8), c[:, 0] | (c[:, 1] << 4), err_msg=module)
        vals = unpack_fp4(praw, rows, cols).reshape(rows, cols // 16, 16)
        return bf16((vals * eff[..., None]).astype(np.float32)).reshape(rows, cols)
    if fmt == "mxfp4-pack-quantized":
        assert names == {"weight_packed", "weight_scale"}, (module, names)
        x = w.reshape(rows, cols // 32, 32)
        amax = R(np.abs(x).max(axis=2))
        if dtype == "BF16":
            bits_, add, mask = (bf16(amax).view(np.uint32) >> 16).astype(np.int64), 1 << 5, 0xFF80
            p = ((((bits_ + add) & mask) & 0xFFFF) << 16).astype(np.uint32).view(np.float32)
        elif dtype == "F16":
            bits_ = amax.astype(np.float16).view(np.uint16).astype(np.int64)
            p = ((((bits_ + (1 << 8)) & 0xFC00) & 0xFFFF).astype(np.uint16)).view(np.float16).astype(np.float32)
        else:
            p = ((amax.view(np.uint32).astype(np.int64) + (1 << 21)) & 0xFF800000).astype(np.uint32).view(np.float32)
        with np.errstate(divide="ignore"):
            e = np.clip(127 + np.floor(np.log2(p)) - 2, 0, 255).astype(np.int64)
        scale = R((2.0 ** (e - 127)).astype(np.float32))
        q = cast_to_fp4(np.clip(R(x / scale[..., None]) + np.float32(0.0), -6, 6)).reshape(rows, cols)
        sd, sshape, sraw = stored[module + ".weight_scale"]
        assert (sd, sshape) == ("U8", [rows, cols // 32]), module
        np.testing.assert_array_equal(np.frombuffer(sraw, np.uint8).reshape(rows, cols // 32), e, err_msg=module)
        pd, pshape, praw = stored[module + ".weight_packed"]
        assert (pd, pshape) == ("U8", [rows, cols // 2]), module
        c = fp4_codes(q).reshape(-1, 2)
        np.testing.assert_array_equal(np.frombuffer(praw, np.uint8), c[:, 0] | (c[:, 1] << 4), err_msg=module)
        vals = unpack_fp4(praw, rows, cols).reshape(rows, cols // 32, 32)
        s16 = bf16((2.0 ** (e - 127)).astype(np.float32))
        return bf16(vals * s16[..., None]).reshape(rows, cols)
    raise AssertionError(fmt)


@pytest.mark.parametrize("fixture", ["tiny-llama", "tiny-qwen2", "tiny-phi", "tiny-mixtral", "tiny-qwen2-moe", "tiny-qwen3-moe"])
@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s[0] + ("_G" + s[1] if s[1] else ""))
def test_decoder(kiln, tmp_path, fixture, scheme):
    name, group, fmt, args, acts = scheme
    src = ROOT / "fixtures" / fixture
    out = tmp_path / "ct"
    cmd = ["convert", src, "--format", "compressed-tensors", "--scheme", name, "-o", out]
    if group is not None:
        cmd += ["--group-size", group]
    run_kiln(kiln, *cmd)
    source = read_safetensors(src / "model.safetensors")
    stored = read_safetensors(out / "model.safetensors")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]

    # The config block.
    assert qc["quant_method"] == "compressed-tensors"
    assert qc["quantization_status"] == "compressed"
    assert qc["format"] == fmt and qc["version"] == "0.19.0"
    assert list(qc) == sorted(qc), "sorted keys, as compressed-tensors dumps them"
    assert set(qc["config_groups"]) == {"group_0"}
    g0 = qc["config_groups"]["group_0"]
    assert g0["targets"] == ["Linear"] and g0["format"] == fmt and g0["output_activations"] is None
    wa = g0["weights"]
    assert set(wa) <= ARG_FIELDS and {"num_bits", "type", "strategy", "symmetric", "dynamic"} <= set(wa), wa
    assert list(wa) == sorted(wa)
    for k, v in args.items():
        assert wa.get(k) == v, (k, wa)
    assert wa["dynamic"] is False and wa["actorder"] is None
    if acts is None:
        assert g0["input_activations"] is None
    else:
        for k, v in acts.items():
            assert g0["input_activations"][k] == v, (k, g0["input_activations"])
    assert "lm_head" in qc["ignore"]

    args = dict(wa)
    quantized = kept_linears = 0
    for tname, (dtype, shape, raw) in source.items():
        module = tname[: -len(".weight")] if tname.endswith(".weight") else None
        is_linear = module is not None and is_linear_name(module) and len(shape) == 2
        if module is not None and module.rsplit(".", 1)[-1] in ROUTERS and len(shape) == 2:
            assert module in qc["ignore"], f"router {module} not in ignore"
        if not is_linear or module in qc["ignore"]:
            # Kept as it is (embeddings, norms, ignored Linears).
            assert stored[tname] == (dtype, shape, raw), tname
            if is_linear:
                g = args.get("group_size") or 16
                assert shape[1] % (g if fmt != "float-quantized" else 128) != 0, f"{module} ignored but divisible"
                kept_linears += 1
            continue
        assert tname not in stored or stored[tname][0] in ("I8", "F8_E4M3"), tname
        w = floats(dtype, raw, shape)
        fused_amax = max(
            np.abs(floats(source[m + ".weight"][0], source[m + ".weight"][2], source[m + ".weight"][1])).max()
            for m in fused_modules(module)
        )
        decoded = check_module(stored, module, w, dtype, scheme, args, fused_amax)
        rel = np.linalg.norm(decoded - w) / np.linalg.norm(w)
        limit = {(4, "int"): 0.2, (4, "float"): 0.2, (8, "int"): 0.02, (8, "float"): 0.05}[args["num_bits"], args["type"]]
        assert rel < limit, (module, rel)
        quantized += 1
    # tiny-phi: 2 layers x (qkv, o, gate_up, down); every Linear either quantized or
    # kept because the group does not divide its width (tiny-qwen2-moe has no width
    # that 128 divides).
    assert quantized + kept_linears >= 8, (quantized, kept_linears)
    assert quantized >= 8 or 128 in (args.get("group_size"), (args.get("block_structure") or [0])[0]), quantized
    # Nothing stored beyond the source's tensors and the quantized modules' parameters.
    for k in stored:
        assert k in source or any(k.startswith(m) for m in {t.rsplit(".", 1)[0] for t in source}), k


def test_sharded_index_is_what_transformers_writes(kiln, tmp_path):
    """Shards and `model.safetensors.index.json` as transformers' save_pretrained writes
    them (`json.dumps(index, indent=2, sort_keys=True) + "\\n"`, metadata.total_size the
    tensor bytes), and the tensors read through the index decode as the single file's."""
    src = ROOT / "fixtures" / "tiny-llama"
    one, many = tmp_path / "one", tmp_path / "many"
    run_kiln(kiln, "convert", src, "--format", "compressed-tensors", "--scheme", "W4A16", "-o", one)
    run_kiln(kiln, "convert", src, "--format", "compressed-tensors", "--scheme", "W4A16", "--max-shard-size", "500KB", "-o", many)
    text = (many / "model.safetensors.index.json").read_text()
    index = json.loads(text)
    assert text == json.dumps(index, indent=2, sort_keys=True) + "\n"
    assert set(index) == {"metadata", "weight_map"}
    shards = sorted({f for f in index["weight_map"].values()})
    assert shards == [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    assert not (many / "model.safetensors").exists()
    stored = {}
    for f in shards:
        part = read_safetensors(many / f)
        assert all(index["weight_map"][k] == f for k in part)
        stored.update(part)
    assert set(stored) == set(index["weight_map"])
    assert index["metadata"]["total_size"] == sum(len(raw) for _, _, raw in stored.values())
    assert stored == read_safetensors(one / "model.safetensors")
