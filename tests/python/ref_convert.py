"""ref_convert: a small, independent HF -> GGUF converter built on gguf-py's GGUFWriter.

It exists to prove the test harness, not to compete with kiln: the runtime tests
run llama.cpp on this file and on kiln's, so when they disagree the blame falls on
kiln and not on the harness. It follows llama.cpp's `convert_hf_to_gguf.py`
(names, q/k permutation for `llama`, metadata keys, tokenizer arrays), written
here from that script's documented behaviour. What must stay true:

- Only 2-D weights are quantized; 1-D tensors (norms, biases) stay F32.
- Quantization is gguf-py's own `gguf.quants.quantize`, the reference the
  byte-identity tests compare kiln with.
- Tokenizers: byte-level BPE from tokenizer.json -> `gpt2`; SentencePiece from
  tokenizer.model (protobuf parsed here, no sentencepiece dependency) -> `llama`.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np

from ref_forward import permute_qk, read_hf_weights

ARCHS = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}

FILE_TYPES = {
    "F32": gguf.LlamaFileType.ALL_F32,
    "F16": gguf.LlamaFileType.MOSTLY_F16,
    "BF16": gguf.LlamaFileType.MOSTLY_BF16,
    "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
    "Q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
    "Q5_0": gguf.LlamaFileType.MOSTLY_Q5_0,
    "Q5_1": gguf.LlamaFileType.MOSTLY_Q5_1,
}


def gguf_name(hf: str) -> str:
    """HF llama-family tensor name -> GGUF tensor name (formats.md's table)."""
    fixed = {
        "model.embed_tokens.weight": "token_embd.weight",
        "lm_head.weight": "output.weight",
        "model.norm.weight": "output_norm.weight",
    }
    if hf in fixed:
        return fixed[hf]
    parts = hf.split(".")
    if parts[:2] != ["model", "layers"]:
        raise KeyError(f"no GGUF name for {hf}")
    n = parts[2]
    rest = ".".join(parts[3:])
    table = {
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "self_attn.q_norm": "attn_q_norm",
        "self_attn.k_norm": "attn_k_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    stem, kind = rest.rsplit(".", 1)
    return f"blk.{n}.{table[stem]}.{kind}"


def expected_type(shape: tuple[int, ...], want: gguf.GGMLQuantizationType) -> gguf.GGMLQuantizationType:
    """The type llama.cpp stores a tensor of this (PyTorch-order) shape as, when asked for `want`."""
    if len(shape) == 1 or want == gguf.GGMLQuantizationType.F32:
        return gguf.GGMLQuantizationType.F32
    block, _ = gguf.GGML_QUANT_SIZES[want]
    if shape[-1] % block != 0:
        return gguf.GGMLQuantizationType.F16
    return want


def hf_to_gguf_arrays(model_dir: Path) -> tuple[dict, str, dict[str, np.ndarray]]:
    """(config, gguf arch, {gguf name: float32 array}) with llama q/k permuted."""
    model_dir = Path(model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    arch = ARCHS[cfg["architectures"][0]]
    n_head = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads", n_head)
    out = {}
    for name, arr in read_hf_weights(model_dir).items():
        if name.endswith("rotary_emb.inv_freq"):
            continue
        g = gguf_name(name)
        if arch == "llama" and g.endswith(("attn_q.weight", "attn_q.bias")):
            arr = permute_qk(arr, n_head)
        elif arch == "llama" and g.endswith(("attn_k.weight", "attn_k.bias")):
            arr = permute_qk(arr, n_kv)
        out[g] = np.ascontiguousarray(arr, dtype=np.float32)
    return cfg, arch, out


# -- tokenizers ---------------------------------------------------------------


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = 0
    val = 0
    while True:
        b = buf[i]
        i += 1
        val |= (b & 0x7F) << shift
        if not b & 0x80:
            return val, i
        shift += 7


def read_sentencepiece(path: Path) -> list[tuple[str, float, int]]:
    """(piece, score, type) for each piece of a SentencePiece ModelProto (field 1)."""
    buf = Path(path).read_bytes()
    pieces = []
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 2:
            ln, i = _read_varint(buf, i)
            body = buf[i : i + ln]
            i += ln
            if field == 1:
                piece, score, ptype = "", 0.0, 1
                j = 0
                while j < len(body):
                    k2, j = _read_varint(body, j)
                    f2, w2 = k2 >> 3, k2 & 7
                    if w2 == 2:
                        l2, j = _read_varint(body, j)
                        if f2 == 1:
                            piece = body[j : j + l2].decode("utf-8")
                        j += l2
                    elif w2 == 5:
                        if f2 == 2:
                            score = float(np.frombuffer(body[j : j + 4], "<f4")[0])
                        j += 4
                    elif w2 == 0:
                        v, j = _read_varint(body, j)
                        if f2 == 3:
                            ptype = v
                    elif w2 == 1:
                        j += 8
                    else:
                        raise ValueError(f"{path}: wire type {w2} in a piece")
                pieces.append((piece, score, ptype))
        elif wire == 0:
            _, i = _read_varint(buf, i)
        elif wire == 5:
            i += 4
        elif wire == 1:
            i += 8
        else:
            raise ValueError(f"{path}: wire type {wire} at byte {i}")
    return pieces


def does_token_look_special(token: str) -> bool:
    """convert_hf_to_gguf's heuristic for added tokens that ought to be CONTROL."""
    return (
        token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<\uff5c") and token.endswith("\uff5c>"))
        or (token.startswith("<unused") and token.endswith(">"))
    )


def spm_vocab(model_dir: Path) -> tuple[list[str], list[float], list[int]]:
    """(tokens, scores, token types) as convert_hf_to_gguf writes them for a SentencePiece model.

    Piece types map 1:1 to llama.cpp's (NORMAL=1, UNKNOWN=2, CONTROL=3,
    USER_DEFINED=4, UNUSED=5, BYTE=6); then added_tokens.json and
    tokenizer_config.json's added_tokens_decoder override their entries with
    score -1000 and CONTROL (special or special-looking) or USER_DEFINED.
    """
    model_dir = Path(model_dir)
    pieces = read_sentencepiece(model_dir / "tokenizer.model")
    tokens = [p for p, _, _ in pieces]
    scores = [s for _, s, _ in pieces]
    types = [t for _, _, t in pieces]
    cfg_path = model_dir / "config.json"
    n = len(tokens)
    if cfg_path.exists():
        n = max(n, int(json.loads(cfg_path.read_text()).get("vocab_size", n)))
    while len(tokens) < n:
        tokens.append(f"[PAD{len(tokens)}]")
        scores.append(-10000.0)
        types.append(int(gguf.TokenType.UNUSED))
    added_path = model_dir / "added_tokens.json"
    if added_path.exists():
        for tok, i in json.loads(added_path.read_text()).items():
            if i < n:
                tokens[i], scores[i], types[i] = tok, -1000.0, int(gguf.TokenType.USER_DEFINED)
    tc_path = model_dir / "tokenizer_config.json"
    if tc_path.exists():
        decoder = json.loads(tc_path.read_text()).get("added_tokens_decoder", {})
        for key, data in decoder.items():
            i = int(key)
            if i >= n:
                continue
            tok = data["content"]
            if data.get("special") or does_token_look_special(tok):
                types[i] = int(gguf.TokenType.CONTROL)
            else:
                tok = tok.replace("\u2581", " ")
                types[i] = int(gguf.TokenType.USER_DEFINED)
            tokens[i], scores[i] = tok, -1000.0
    return tokens, scores, types


def _special_ids(model_dir: Path, vocab: dict[str, int], cfg: dict) -> dict[str, int]:
    tc_path = model_dir / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text()) if tc_path.exists() else {}
    ids = {}
    for key in ("bos", "eos", "unk", "pad"):
        tok = tc.get(f"{key}_token")
        if isinstance(tok, dict):
            tok = tok.get("content")
        if isinstance(tok, str) and tok in vocab:
            ids[key] = vocab[tok]
        elif cfg.get(f"{key}_token_id") is not None:
            ids[key] = int(cfg[f"{key}_token_id"])
    return ids


def add_tokenizer(w: gguf.GGUFWriter, model_dir: Path, cfg: dict) -> None:
    model_dir = Path(model_dir)
    tj = model_dir / "tokenizer.json"
    if (model_dir / "tokenizer.model").exists() and not tj.exists():
        tokens, scores, types = spm_vocab(model_dir)
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        vocab = {p: i for i, p in enumerate(tokens)}
        w.add_add_space_prefix(True)
    else:
        t = json.loads(tj.read_text())
        model = t["model"]
        if model["type"] != "BPE":
            raise ValueError(f"{tj}: model type {model['type']} is not byte-level BPE")
        vocab = dict(model["vocab"])
        added = {a["content"]: a for a in t.get("added_tokens", [])}
        for a in added.values():
            vocab[a["content"]] = a["id"]
        n = max(cfg.get("vocab_size", 0), max(vocab.values()) + 1)
        tokens = [f"[PAD{i}]" for i in range(n)]
        types = [gguf.TokenType.UNUSED] * n
        for tok, i in vocab.items():
            tokens[i] = tok
            if tok in added:
                types[i] = gguf.TokenType.CONTROL if added[tok].get("special") else gguf.TokenType.USER_DEFINED
            else:
                types[i] = gguf.TokenType.NORMAL
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt-2")  # llama.cpp spells the GPT-2 regex "gpt-2"
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
    tc_path = model_dir / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text()) if tc_path.exists() else {}
    if isinstance(tc.get("chat_template"), str):
        w.add_chat_template(tc["chat_template"])
    if isinstance(tc.get("add_bos_token"), bool):
        w.add_add_bos_token(tc["add_bos_token"])
    ids = _special_ids(model_dir, vocab, cfg)
    if "bos" in ids:
        w.add_bos_token_id(ids["bos"])
    if "eos" in ids:
        w.add_eos_token_id(ids["eos"])
    if "unk" in ids:
        w.add_unk_token_id(ids["unk"])
    if "pad" in ids:
        w.add_pad_token_id(ids["pad"])


def convert(model_dir: Path, out: Path, qtype: str = "F32") -> Path:
    """Write `out` from the HF checkpoint at `model_dir`, 2-D weights as `qtype`."""
    want = gguf.GGMLQuantizationType[qtype]
    cfg, arch, tensors = hf_to_gguf_arrays(model_dir)
    w = gguf.GGUFWriter(str(out), arch)
    n_head = cfg["num_attention_heads"]
    hidden = cfg["hidden_size"]
    w.add_name(Path(model_dir).name)
    w.add_context_length(cfg.get("max_position_embeddings", 2048))
    w.add_embedding_length(hidden)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(cfg.get("num_key_value_heads", n_head))
    w.add_rope_dimension_count(cfg.get("head_dim") or hidden // n_head)
    if cfg.get("head_dim") is not None:  # as convert_hf_to_gguf: whenever the config states it
        w.add_key_length(cfg["head_dim"])
        w.add_value_length(cfg["head_dim"])
    w.add_rope_freq_base(float(cfg.get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
    w.add_file_type(FILE_TYPES[qtype])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_tokenizer(w, model_dir, cfg)
    for name, arr in tensors.items():
        t = expected_type(arr.shape, want)
        if t == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, arr)
        else:
            w.add_tensor(name, gguf.quants.quantize(arr, t), raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(out)
