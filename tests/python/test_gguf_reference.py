"""kiln's GGUF output judged by the PyPI `gguf` package (gguf-py), llama.cpp's own Python library.

For every committed fixture and every output type, kiln converts the checkpoint
and gguf-py reads the file back. What these tests pin down:

- structure: GGUF v3, alignment 32, tensor names/shapes as llama.cpp names them,
  the metadata keys llama.cpp needs with the values of config.json, and the
  tokenizer arrays equal to the HF tokenizer files;
- F32 output equals the HF weights exactly (q/k rows permuted here, in numpy);
- every quantized or half tensor is byte-identical to `gguf.quants.quantize` of
  the F32 file's tensor, with the type llama.cpp would choose (1-D -> F32; a
  row not divisible by the block -> F16);
- output is byte-identical across runs and across RAYON_NUM_THREADS=1 and 2.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import gguf
import numpy as np
import pytest

from conftest import FIXTURES, TYPES, fixture_path, run_kiln, sha256
from ref_convert import ARCHS, expected_type, gguf_name, hf_to_gguf_arrays, spm_vocab

GT = gguf.GGMLQuantizationType

QTYPE = {
    "f32": GT.F32,
    "f16": GT.F16,
    "bf16": GT.BF16,
    "q8_0": GT.Q8_0,
    "q4_0": GT.Q4_0,
    "q4_1": GT.Q4_1,
    "q5_0": GT.Q5_0,
    "q5_1": GT.Q5_1,
}

# llama.cpp's `llama_ftype` for a file whose main type is this one.
FILE_TYPE = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9, "bf16": 32}


def field(reader: gguf.GGUFReader, key: str):
    f = reader.fields.get(key)
    if f is None:
        return None
    return f.contents()


def hf_config(fx: Path) -> dict:
    return json.loads((fx / "config.json").read_text())


def _reader(path: Path) -> gguf.GGUFReader:
    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:  # gguf-py refusing the file is the finding
        pytest.fail(f"gguf-py cannot read {path.name}: {type(e).__name__}: {e}", pytrace=False)


@pytest.fixture(scope="module")
def hf_arrays():
    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = hf_to_gguf_arrays(fixture_path(name))
        return cache[name]

    return get


# -- structure and metadata ------------------------------------------------------


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("fx_name", FIXTURES)
def test_structure_and_metadata(fx_name, qtype, convert, hf_arrays):
    fx = fixture_path(fx_name)
    cfg, arch, expected = hf_arrays(fx_name)
    path = convert(fx, qtype)
    r = _reader(path)
    problems: list[str] = []

    def check(cond, msg):
        if not cond:
            problems.append(msg)

    # Container.
    raw = path.read_bytes()
    check(raw[:4] == b"GGUF", f"magic {raw[:4]!r}")
    check(int(np.frombuffer(raw[4:8], "<u4")[0]) == 3, f"version {np.frombuffer(raw[4:8], '<u4')[0]} != 3")
    align = field(r, "general.alignment")
    check(align in (None, 32), f"general.alignment {align} != 32")
    check(r.data_offset % 32 == 0, f"data section starts at {r.data_offset}, not a multiple of 32")
    ends = []
    for t in r.tensors:
        check((t.data_offset - r.data_offset) % 32 == 0, f"{t.name}: offset {t.data_offset - r.data_offset} not aligned to 32")
        ends.append(t.data_offset + t.n_bytes)
    if ends:
        check(len(raw) >= max(ends), f"file is {len(raw)} bytes, tensors end at {max(ends)}")
        check(len(raw) - max(ends) < 32, f"{len(raw) - max(ends)} stray bytes after the last tensor")

    # Tensors: names, shapes (innermost first), types.
    names = [t.name for t in r.tensors]
    check(len(names) == len(set(names)), "duplicate tensor names")
    missing = sorted(set(expected) - set(names))
    extra = sorted(set(names) - set(expected))
    check(not missing, f"tensors missing: {missing}")
    check(not extra, f"unexpected tensors: {extra}")
    want = QTYPE[qtype]
    for t in r.tensors:
        if t.name not in expected:
            continue
        hf_shape = expected[t.name].shape
        got_shape = tuple(int(x) for x in t.shape)
        check(got_shape == tuple(reversed(hf_shape)), f"{t.name}: ne {got_shape}, expected {tuple(reversed(hf_shape))}")
        exp_t = expected_type(hf_shape, want)
        check(t.tensor_type == exp_t, f"{t.name} {hf_shape}: stored as {t.tensor_type.name}, llama.cpp would use {exp_t.name}")

    # Architecture metadata, with the values of config.json.
    check(field(r, "general.architecture") == arch, f"general.architecture {field(r, 'general.architecture')!r} != {arch!r}")
    n_head = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head
    want_kv = {
        f"{arch}.context_length": cfg.get("max_position_embeddings"),
        f"{arch}.embedding_length": cfg["hidden_size"],
        f"{arch}.block_count": cfg["num_hidden_layers"],
        f"{arch}.feed_forward_length": cfg["intermediate_size"],
        f"{arch}.attention.head_count": n_head,
        f"{arch}.attention.head_count_kv": cfg.get("num_key_value_heads", n_head),
        f"{arch}.rope.dimension_count": head_dim,
    }
    if arch == "qwen3":  # head_dim is independent of hidden / heads: llama.cpp needs both lengths
        want_kv[f"{arch}.attention.key_length"] = cfg["head_dim"]
        want_kv[f"{arch}.attention.value_length"] = cfg["head_dim"]
    for key, val in want_kv.items():
        got = field(r, key)
        check(got is not None, f"metadata {key} missing")
        if got is not None and val is not None:
            check(int(got) == int(val), f"{key} = {got}, config.json says {val}")
    for key, val in (
        (f"{arch}.rope.freq_base", cfg.get("rope_theta", 10000.0)),
        (f"{arch}.attention.layer_norm_rms_epsilon", cfg.get("rms_norm_eps")),
    ):
        got = field(r, key)
        check(got is not None, f"metadata {key} missing")
        if got is not None and val is not None:
            check(np.float32(got) == np.float32(val), f"{key} = {got}, config.json says {val}")

    ft = field(r, "general.file_type")
    check(ft is not None and int(ft) == FILE_TYPE[qtype], f"general.file_type {ft}, expected {FILE_TYPE[qtype]} for {qtype}")
    quantized = any(t.tensor_type not in (GT.F32, GT.F16, GT.BF16) for t in r.tensors)
    qv = field(r, "general.quantization_version")
    if quantized:
        check(qv is not None and int(qv) == 2, f"general.quantization_version {qv}, must be 2 when a tensor is quantized")

    # Tokenizer.
    problems += tokenizer_problems(r, fx, cfg)
    assert not problems, f"{path.name}:\n  " + "\n  ".join(problems[:40])


def tokenizer_problems(r: gguf.GGUFReader, fx: Path, cfg: dict) -> list[str]:
    problems = []
    model = field(r, "tokenizer.ggml.model")
    tokens = field(r, "tokenizer.ggml.tokens")
    types = field(r, "tokenizer.ggml.token_type")
    if tokens is None:
        return ["tokenizer.ggml.tokens missing"]
    if types is None or len(types) != len(tokens):
        problems.append(f"tokenizer.ggml.token_type has {None if types is None else len(types)} entries for {len(tokens)} tokens")
    special = {}
    if (fx / "tokenizer.json").exists():
        tj = json.loads((fx / "tokenizer.json").read_text())
        if model != "gpt2":
            problems.append(f"tokenizer.ggml.model {model!r}, byte-level BPE must be 'gpt2'")
        vocab = dict(tj["model"]["vocab"])
        for a in tj.get("added_tokens", []):
            vocab[a["content"]] = a["id"]
        for tok, i in vocab.items():
            if i >= len(tokens) or tokens[i] != tok:
                problems.append(f"token {i}: file has {tokens[i] if i < len(tokens) else None!r}, tokenizer.json has {tok!r}")
                break
        added = {a["id"]: a for a in tj.get("added_tokens", [])}
        if types is not None:
            for i, a in added.items():
                if a.get("special") and i < len(types) and int(types[i]) != int(gguf.TokenType.CONTROL):
                    problems.append(f"special token {a['content']!r} ({i}) has token_type {types[i]}, expected CONTROL (3)")
        merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"].get("merges", [])]
        got_merges = field(r, "tokenizer.ggml.merges")
        if got_merges != merges:
            n = None if got_merges is None else len(got_merges)
            first = next((i for i, (a, b) in enumerate(zip(got_merges or [], merges)) if a != b), None)
            problems.append(f"tokenizer.ggml.merges: {n} entries vs {len(merges)} in tokenizer.json; first difference at {first}")
        if not field(r, "tokenizer.ggml.pre"):
            problems.append("tokenizer.ggml.pre missing (llama.cpp needs a pre-tokenizer name for gpt2)")
        special = vocab
    elif (fx / "tokenizer.model").exists():
        want_tokens, want_scores, want_types = spm_vocab(fx)
        if model != "llama":
            problems.append(f"tokenizer.ggml.model {model!r}, SentencePiece must be 'llama'")
        if list(tokens) != want_tokens:
            first = next((i for i, (a, b) in enumerate(zip(tokens, want_tokens)) if a != b), min(len(tokens), len(want_tokens)))
            problems.append(f"tokens ({len(tokens)}) differ from tokenizer.model's pieces ({len(want_tokens)}) at {first}")
        scores = field(r, "tokenizer.ggml.scores")
        if scores is None or len(scores) != len(want_scores) or not np.array_equal(np.float32(scores), np.float32(want_scores)):
            diff = None if scores is None else [(i, a, b) for i, (a, b) in enumerate(zip(scores, want_scores)) if np.float32(a) != np.float32(b)][:5]
            problems.append(f"tokenizer.ggml.scores differ from convert_hf_to_gguf's (index, file, expected): {diff}")
        if types is not None and [int(t) for t in types] != want_types:
            diff = [(i, int(a), b) for i, (a, b) in enumerate(zip(types, want_types)) if int(a) != b][:5]
            problems.append(f"tokenizer.ggml.token_type differs from convert_hf_to_gguf's (index, file, expected): {diff}")
        special = {p: i for i, p in enumerate(want_tokens)}
    else:
        problems.append(f"{fx} has no tokenizer file")

    tc_path = fx / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text()) if tc_path.exists() else {}
    for key, gkey in (("bos", "tokenizer.ggml.bos_token_id"), ("eos", "tokenizer.ggml.eos_token_id")):
        tok = tc.get(f"{key}_token")
        if isinstance(tok, dict):
            tok = tok.get("content")
        want = special.get(tok) if isinstance(tok, str) else cfg.get(f"{key}_token_id")
        got = field(r, gkey)
        if want is not None and (got is None or int(got) != int(want)):
            problems.append(f"{gkey} = {got}, the HF files say {want} ({tok!r})")
    if tc.get("chat_template") and isinstance(tc["chat_template"], str):
        if field(r, "tokenizer.chat_template") != tc["chat_template"]:
            problems.append("tokenizer.chat_template missing or different from tokenizer_config.json's")
    return problems


# -- tensor data -------------------------------------------------------------------


def tensors_by_name(r: gguf.GGUFReader) -> dict:
    return {t.name: t for t in r.tensors}


def f32_array(t) -> np.ndarray:
    assert t.tensor_type == GT.F32, f"{t.name} is {t.tensor_type.name} in the F32 file"
    shape = tuple(int(x) for x in reversed(t.shape.tolist()))
    return np.asarray(t.data, dtype=np.float32).reshape(shape)


@pytest.mark.parametrize("fx_name", FIXTURES)
def test_f32_equals_hf_weights(fx_name, convert, hf_arrays):
    """F32 output == HF weights widened to f32, q/k permuted in numpy: exactly, bit for bit."""
    fx = fixture_path(fx_name)
    _, _, expected = hf_arrays(fx_name)
    r = _reader(convert(fx, "f32"))
    got = tensors_by_name(r)
    bad = []
    for name, want in expected.items():
        if name not in got:
            bad.append(f"{name}: missing")
            continue
        a = f32_array(got[name])
        if a.shape != want.shape:
            bad.append(f"{name}: shape {a.shape} != {want.shape}")
        elif not np.array_equal(a.view(np.uint32), want.view(np.uint32)):
            diff = np.flatnonzero(a.view(np.uint32) != want.view(np.uint32))
            i = np.unravel_index(diff[0], a.shape)
            hint = ""
            if name.endswith(("attn_q.weight", "attn_k.weight")):
                hint = " (a q/k permutation problem?)"
            bad.append(f"{name}: {diff.size} of {a.size} values differ, first at {i}: {a[i]} vs {want[i]}{hint}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("qtype", [t for t in TYPES if t != "f32"])
@pytest.mark.parametrize("fx_name", FIXTURES)
def test_quantized_bytes_match_gguf_py(fx_name, qtype, convert):
    """Every tensor's bytes == gguf.quants.quantize(F32 tensor, the type llama.cpp would choose)."""
    fx = fixture_path(fx_name)
    f32 = tensors_by_name(_reader(convert(fx, "f32")))
    q = tensors_by_name(_reader(convert(fx, qtype)))
    assert set(q) == set(f32), f"tensor sets differ: {sorted(set(q) ^ set(f32))}"
    want = QTYPE[qtype]
    bad = []
    compared = {}
    for name, t in q.items():
        src = f32_array(f32[name])
        exp_t = expected_type(src.shape, want)
        if t.tensor_type != exp_t:
            bad.append(f"{name} {src.shape}: {t.tensor_type.name}, llama.cpp would use {exp_t.name}")
            continue
        ref = src if exp_t == GT.F32 else gguf.quants.quantize(src, exp_t)
        got_b = np.asarray(t.data).tobytes()
        ref_b = np.ascontiguousarray(ref).tobytes()
        compared[exp_t.name] = compared.get(exp_t.name, 0) + 1
        if got_b != ref_b:
            n = min(len(got_b), len(ref_b))
            first = next((i for i in range(n) if got_b[i] != ref_b[i]), n)
            bsize = gguf.GGML_QUANT_SIZES[exp_t][1]
            nblocks = sum(
                1 for i in range(0, n, bsize) if got_b[i : i + bsize] != ref_b[i : i + bsize]
            )
            bad.append(
                f"{name} {exp_t.name}: {len(got_b)} bytes vs {len(ref_b)}; {nblocks} blocks differ, "
                f"first byte {first} (block {first // bsize}): kiln {got_b[first // bsize * bsize:(first // bsize + 1) * bsize].hex()} "
                f"gguf-py {ref_b[first // bsize * bsize:(first // bsize + 1) * bsize].hex()}"
            )
    assert want.name in compared or want == GT.F32, f"no tensor was stored as {want.name}: {compared}"
    assert not bad, f"{len(bad)} tensors differ ({compared} compared):\n" + "\n".join(bad[:20])


# -- determinism ------------------------------------------------------------------


@pytest.mark.parametrize("fx_name,qtype", [("tiny-llama", "q4_0"), ("tiny-qwen2", "q8_0"), ("tiny-llama-spm", "q5_1")])
def test_output_is_deterministic(fx_name, qtype, kiln, tmp_path):
    """Two runs, and 1 vs 2 rayon threads, give byte-identical files."""
    fx = fixture_path(fx_name)
    hashes = {}
    for label, threads in (("a", "2"), ("b", "2"), ("c", "1")):
        d = tmp_path / label
        d.mkdir()
        out = d / "model.gguf"
        run_kiln(kiln, "convert", fx, "--type", qtype, "-o", out, "--quiet", env={"RAYON_NUM_THREADS": threads})
        hashes[f"run {label}, RAYON_NUM_THREADS={threads}"] = sha256(out)
    assert len(set(hashes.values())) == 1, f"outputs differ: {hashes}"


def test_gguf_name_mapping_is_total():
    """Every HF tensor of every fixture has a GGUF name (guards the expected-name tables above)."""
    for fx_name in FIXTURES:
        fx = fixture_path(fx_name)
        cfg = json.loads((fx / "config.json").read_text())
        assert cfg["architectures"][0] in ARCHS
        from ref_forward import read_hf_weights

        for name in read_hf_weights(fx):
            gguf_name(name)


def test_sharded_checkpoint_equals_hf_weights(kiln, kiln_fixture, tmp_path):
    """A checkpoint split over two shards with an index converts to the same exact F32 tensors."""
    src = tmp_path / "tiny-llama-sharded"
    gen = subprocess.run([str(kiln_fixture), "tiny-llama-sharded", str(src)], capture_output=True, text=True)
    assert gen.returncode == 0, f"kiln-fixture tiny-llama-sharded failed: {gen.stderr}"
    assert (src / "model.safetensors.index.json").is_file(), sorted(p.name for p in src.iterdir())
    out = tmp_path / "sharded.f32.gguf"
    run_kiln(kiln, "convert", src, "--type", "f32", "-o", out, "--quiet")
    _, _, expected = hf_to_gguf_arrays(src)
    got = tensors_by_name(_reader(out))
    assert set(got) == set(expected), f"tensor sets differ: {sorted(set(got) ^ set(expected))}"
    bad = [n for n, want in expected.items() if not np.array_equal(f32_array(got[n]).view(np.uint32), want.view(np.uint32))]
    assert not bad, f"tensors differ from the shards' weights: {bad}"


# -- a GGUF as the source ---------------------------------------------------------


def test_gguf_source_requantized_bytes_and_metadata(smollm2, convert):
    """SmolLM2 (Q4_1/Q8_0/F32 GGUF) -> kiln Q8_0: each tensor == gguf.quants.quantize(gguf-py's
    dequantization of the source), 1-D tensors F32 and equal, and every metadata key carried
    over unchanged except general.file_type."""
    src = _reader(smollm2)
    out = _reader(convert(smollm2, "q8_0", tag="smollm2"))
    s_t, o_t = tensors_by_name(src), tensors_by_name(out)
    assert list(s_t) == list(o_t) or set(s_t) == set(o_t), f"tensor sets differ: {sorted(set(s_t) ^ set(o_t))}"
    bad = []
    for name, t in s_t.items():
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        f32 = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        want_t = expected_type(shape, GT.Q8_0)
        got = o_t[name]
        if got.tensor_type != want_t:
            bad.append(f"{name} {shape}: {got.tensor_type.name}, expected {want_t.name}")
            continue
        ref = f32 if want_t == GT.F32 else gguf.quants.quantize(f32, want_t)
        if np.asarray(got.data).tobytes() != np.ascontiguousarray(ref).tobytes():
            bad.append(f"{name} ({t.tensor_type.name} -> {want_t.name}): bytes differ from gguf-py's dequantize+quantize")
    assert not bad, f"{len(bad)} tensors:\n" + "\n".join(bad[:20])

    skip = {"general.file_type"}
    s_keys = {k for k in src.fields if not k.startswith("GGUF.")}
    o_keys = {k for k in out.fields if not k.startswith("GGUF.")}
    missing = sorted(s_keys - o_keys - skip)
    assert not missing, f"metadata keys dropped: {missing}"
    changed = [k for k in sorted(s_keys & o_keys - skip) if field(src, k) != field(out, k)]
    assert not changed, f"metadata values changed: {changed}"
    assert int(field(out, "general.file_type")) == FILE_TYPE["q8_0"]
    assert int(field(out, "general.quantization_version")) == 2
