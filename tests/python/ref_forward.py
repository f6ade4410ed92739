"""ref_forward: an independent numpy reference of the llama-family forward pass.

Written from the Hugging Face modeling code's definitions (LlamaForCausalLM,
MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Phi3ForCausalLM: fused
qkv_proj and gate_up_proj split as Phi3Attention / Phi3MLP do), not from kiln or
llama.cpp, so that it can judge both. What must stay true:

- It reads Hugging Face checkpoints itself (safetensors parsed here, BF16/F16/F32
  widened exactly), so a bug in kiln's loader cannot hide in the reference.
- RoPE is the HF rotate-half form applied to the HF (unpermuted) q/k weights;
  ggml's interleaved form is only ever reached through kiln's permutation, which is
  what the tests check.
- Qwen3 (modeling_qwen3.py's Qwen3Attention): q and k are RMS-normalized per
  head over head_dim (`q_norm` / `k_norm`, eps `rms_norm_eps`) after the
  projection and before RoPE; head_dim is the config's own.
- All arithmetic is float64: the reference is the truth the runtime's float32 is
  compared with, at positions where the top-1/top-2 margin is clear.
- GGUF inputs (`load_gguf`) are dequantized with gguf-py and the q/k rows are
  un-permuted for llama, so the same forward serves a GGUF source (issue 5).
- RoPE scaling (`rope_scaling` / `rope_parameters`: linear, llama3, yarn) is
  transformers' rope init functions (`modeling_rope_utils.py`, v5:
  `_compute_linear_scaling_rope_parameters`, `_compute_llama3_parameters`,
  `_compute_yarn_parameters`) re-derived here in float64: inverse
  frequencies and the attention scaling applied to cos and sin; Phi-3's
  longrope (`_compute_longrope_parameters`) with the long factors for sequences
  longer than the original context, as `longrope_frequency_update` chooses.

Public API: `load_hf(dir)`, `load_gguf(path)` -> `RefModel`; `RefModel.logits(ids)`
-> [len(ids), vocab]; `RefModel.greedy(prompt, n)` -> (tokens, margins).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

_ST_DTYPES = {
    "F32": (np.float32, 4),
    "F16": (np.float16, 2),
    "BF16": (None, 2),
    "F64": (np.float64, 8),
}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Parse a .safetensors file into float32 arrays (BF16 widened bit-exactly)."""
    raw = Path(path).read_bytes()
    (hlen,) = struct.unpack_from("<Q", raw, 0)
    if 8 + hlen > len(raw):
        raise ValueError(f"{path}: header length {hlen} past the end of a {len(raw)}-byte file")
    header = json.loads(raw[8 : 8 + hlen])
    base = 8 + hlen
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = info["dtype"]
        if dtype not in _ST_DTYPES:
            raise ValueError(f"{path}: tensor {name}: unsupported dtype {dtype}")
        start, end = info["data_offsets"]
        buf = raw[base + start : base + end]
        shape = tuple(info["shape"])
        np_dtype, size = _ST_DTYPES[dtype]
        n = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if len(buf) != n * size:
            raise ValueError(f"{path}: tensor {name}: {len(buf)} bytes for shape {shape} {dtype}")
        if dtype == "BF16":
            bits = np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16
            arr = bits.view(np.float32)
        else:
            arr = np.frombuffer(buf, dtype=np.dtype(np_dtype).newbyteorder("<")).astype(np.float32)
        out[name] = arr.reshape(shape)
    return out


def read_hf_weights(model_dir: Path) -> dict[str, np.ndarray]:
    """All tensors of an HF checkpoint dir (single file or index + shards), as float32."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        tensors: dict[str, np.ndarray] = {}
        for shard in sorted(set(weight_map.values())):
            tensors.update(read_safetensors(model_dir / shard))
        missing = set(weight_map) - set(tensors)
        if missing:
            raise ValueError(f"{index}: tensors named in the index but absent: {sorted(missing)[:5]}")
        return tensors
    return read_safetensors(model_dir / "model.safetensors")


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half row order -> ggml interleaved RoPE order (llama.cpp's convert_hf_to_gguf)."""
    rows = w.shape[0]
    rest = w.shape[1:]
    return (
        w.reshape(n_head, 2, rows // n_head // 2, *rest)
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of `permute_qk`."""
    rows = w.shape[0]
    rest = w.shape[1:]
    return (
        w.reshape(n_head, rows // n_head // 2, 2, *rest)
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


@dataclass
class Layer:
    attn_norm: np.ndarray
    wq: np.ndarray
    wk: np.ndarray
    wv: np.ndarray
    wo: np.ndarray
    ffn_norm: np.ndarray
    w_gate: np.ndarray
    w_up: np.ndarray
    w_down: np.ndarray
    bq: np.ndarray | None = None
    bk: np.ndarray | None = None
    bv: np.ndarray | None = None
    q_norm: np.ndarray | None = None  # [head_dim] (qwen3)
    k_norm: np.ndarray | None = None


@dataclass
class RefModel:
    n_head: int
    n_kv_head: int
    head_dim: int
    rope_theta: float
    rms_eps: float
    embed: np.ndarray  # [vocab, hidden]
    layers: list[Layer]
    norm: np.ndarray
    output: np.ndarray  # [vocab, hidden] (the embedding itself when tied)
    meta: dict = field(default_factory=dict)
    # transformers' rope init result: inverse frequencies [head_dim / 2] and
    # the attention scaling of cos/sin; None: plain RoPE of rope_theta.
    inv_freq: np.ndarray | None = None
    attention_scaling: float = 1.0
    # longrope (Phi-3): these inverse frequencies for sequences longer than
    # `long_after` positions (transformers' longrope_frequency_update).
    long_inv_freq: np.ndarray | None = None
    long_after: int = 0

    @property
    def vocab(self) -> int:
        return self.output.shape[0]

    # -- the forward pass -------------------------------------------------

    def _rms(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        var = np.mean(x * x, axis=-1, keepdims=True)
        return x / np.sqrt(var + self.rms_eps) * w

    def _rope(self, x: np.ndarray, pos: np.ndarray) -> np.ndarray:
        # x: [T, heads, head_dim]; HF rotate-half with cos/sin of cat(freqs, freqs).
        d = self.head_dim
        inv_freq = self.inv_freq
        if self.long_inv_freq is not None and int(pos.max()) + 1 > self.long_after:
            inv_freq = self.long_inv_freq
        if inv_freq is None:
            inv_freq = 1.0 / (self.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
        freqs = pos[:, None].astype(np.float64) * inv_freq[None, :]
        emb = np.concatenate([freqs, freqs], axis=-1)
        cos = np.cos(emb)[:, None, :] * self.attention_scaling
        sin = np.sin(emb)[:, None, :] * self.attention_scaling
        half = d // 2
        rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
        return x * cos + rot * sin

    def hidden_states(self, ids: list[int]) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim != 1 or len(ids) == 0:
            raise ValueError("ids must be a non-empty 1-D sequence")
        if ids.min() < 0 or ids.max() >= self.embed.shape[0]:
            raise ValueError(f"token id outside [0, {self.embed.shape[0]})")
        t = len(ids)
        pos = np.arange(t)
        x = self.embed[ids].astype(np.float64)
        group = self.n_head // self.n_kv_head
        mask = np.triu(np.full((t, t), -np.inf), k=1)
        scale = 1.0 / np.sqrt(self.head_dim)
        for layer in self.layers:
            h = self._rms(x, layer.attn_norm)
            q = h @ layer.wq.T
            k = h @ layer.wk.T
            v = h @ layer.wv.T
            if layer.bq is not None:
                q = q + layer.bq
                k = k + layer.bk
                v = v + layer.bv
            q = q.reshape(t, self.n_head, self.head_dim)
            k = k.reshape(t, self.n_kv_head, self.head_dim)
            if layer.q_norm is not None:  # Qwen3RMSNorm over each head
                q = self._rms(q, layer.q_norm)
                k = self._rms(k, layer.k_norm)
            q = self._rope(q, pos)
            k = self._rope(k, pos)
            v = v.reshape(t, self.n_kv_head, self.head_dim)
            k = np.repeat(k, group, axis=1)
            v = np.repeat(v, group, axis=1)
            scores = np.einsum("qhd,khd->hqk", q, k) * scale + mask
            scores -= scores.max(axis=-1, keepdims=True)
            p = np.exp(scores)
            p /= p.sum(axis=-1, keepdims=True)
            attn = np.einsum("hqk,khd->qhd", p, v).reshape(t, self.n_head * self.head_dim)
            x = x + attn @ layer.wo.T
            h = self._rms(x, layer.ffn_norm)
            x = x + self._ffn(layer, h)
        return self._rms(x, self.norm)

    def _ffn(self, layer, h: np.ndarray) -> np.ndarray:
        """The MLP block on the normalized input (a subclass may route to experts)."""
        gate = h @ layer.w_gate.T
        up = h @ layer.w_up.T
        act = gate / (1.0 + np.exp(-gate)) * up  # SiLU(gate) * up
        return act @ layer.w_down.T

    def logits(self, ids: list[int]) -> np.ndarray:
        """[len(ids), vocab] float64 logits; row i predicts token i+1."""
        return self.hidden_states(ids) @ self.output.T

    def greedy(self, prompt: list[int], n: int) -> tuple[list[int], list[float]]:
        """n greedy tokens after prompt, and each step's top-1/top-2 margin relative to |top-1|."""
        ids = list(prompt)
        out: list[int] = []
        margins: list[float] = []
        for _ in range(n):
            row = self.logits(ids)[-1]
            order = np.argsort(-row, kind="stable")
            top1, top2 = row[order[0]], row[order[1]]
            out.append(int(order[0]))
            margins.append(float((top1 - top2) / max(abs(top1), 1e-12)))
            ids.append(int(order[0]))
        return out, margins


def rope_init(cfg: dict) -> tuple[np.ndarray | None, float]:
    """transformers' ROPE_INIT_FUNCTIONS for a config dict: (inv_freq, attention_scaling);
    (None, 1.0) for plain RoPE. linear, llama3 and yarn; anything else raises."""
    rp = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    rope_type = rp.get("rope_type", rp.get("type", "default"))
    if rope_type == "default":
        return None, 1.0
    base = float(rp.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    dim = int(head_dim * rp.get("partial_rotary_factor", 1.0))
    inv_freq = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    # standardize_rope_params: a top-level original_max_position_embeddings wins.
    orig = cfg.get("original_max_position_embeddings") or rp.get(
        "original_max_position_embeddings", cfg.get("max_position_embeddings")
    )
    if rope_type == "linear":
        return inv_freq / rp["factor"], 1.0
    if rope_type == "llama3":
        factor = rp["factor"]
        low, high = rp["low_freq_factor"], rp["high_freq_factor"]
        low_wavelen, high_wavelen = orig / low, orig / high
        wavelen = 2 * np.pi / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (orig / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, scaled), 1.0
    if rope_type == "yarn":
        factor = rp.get("factor") or cfg["max_position_embeddings"] / orig

        def get_mscale(scale, mscale=1.0):
            return 1.0 if scale <= 1 else 0.1 * mscale * np.log(scale) + 1.0

        attention = rp.get("attention_factor")
        if attention is None:
            if rp.get("mscale") and rp.get("mscale_all_dim"):
                attention = get_mscale(factor, rp["mscale"]) / get_mscale(factor, rp["mscale_all_dim"])
            else:
                attention = get_mscale(factor)
        beta_fast = rp.get("beta_fast") or 32
        beta_slow = rp.get("beta_slow") or 1

        def correction_dim(rotations):
            return (dim * np.log(orig / (rotations * 2 * np.pi))) / (2 * np.log(base))

        low, high = correction_dim(beta_fast), correction_dim(beta_slow)
        if rp.get("truncate", True):
            low, high = np.floor(low), np.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001
        ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
        extrapolation = 1 - ramp
        interpolation = inv_freq / factor
        return interpolation * (1 - extrapolation) + inv_freq * extrapolation, float(attention)
    raise ValueError(f"rope type {rope_type!r} is not modelled")


def longrope_init(cfg: dict) -> tuple[np.ndarray, np.ndarray, int, float]:
    """transformers' `_compute_longrope_parameters` (v5): (short inv_freq, long
    inv_freq, original context, attention scaling)."""
    rp = cfg["rope_scaling"]
    base = float(cfg.get("rope_theta", 10000.0))
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    dim = int(head_dim * cfg.get("partial_rotary_factor", 1.0))
    orig = cfg.get("original_max_position_embeddings") or rp["original_max_position_embeddings"]
    factor = rp.get("factor") or cfg["max_position_embeddings"] / orig
    attention = rp.get("attention_factor")
    if attention is None:
        attention = 1.0 if factor <= 1.0 else float(np.sqrt(1 + np.log(factor) / np.log(orig)))
    shape = base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    short = 1.0 / (np.asarray(rp["short_factor"], dtype=np.float64) * shape)
    long = 1.0 / (np.asarray(rp["long_factor"], dtype=np.float64) * shape)
    return short, long, int(orig), float(attention)


def _f64(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64)


def load_hf(model_dir: Path) -> RefModel:
    """A RefModel from a Hugging Face llama/mistral/qwen2/qwen3 checkpoint directory."""
    model_dir = Path(model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    archs = cfg.get("architectures") or []
    supported = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Phi3ForCausalLM"}
    if not archs or archs[0] not in supported:
        raise ValueError(f"{model_dir}: architecture {archs} not in {sorted(supported)}")
    rs = cfg.get("rope_scaling") or {}
    long_inv_freq, long_after = None, 0
    if rs.get("rope_type", rs.get("type")) in ("longrope", "su"):
        inv_freq, long_inv_freq, long_after, attention_scaling = longrope_init(cfg)
    else:
        inv_freq, attention_scaling = rope_init(cfg)
    phi3 = archs[0] == "Phi3ForCausalLM"
    w = read_hf_weights(model_dir)
    n_head = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads", n_head)
    hidden = cfg["hidden_size"]
    head_dim = cfg.get("head_dim") or hidden // n_head
    layers = []
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        if phi3:
            # Phi3Attention: qkv_proj rows are q, k, v; Phi3MLP: gate_up_proj
            # output is chunked into gate, then up.
            qkv = w.pop(p + "self_attn.qkv_proj.weight")
            nq, nk = n_head * head_dim, n_kv * head_dim
            w[p + "self_attn.q_proj.weight"] = qkv[:nq]
            w[p + "self_attn.k_proj.weight"] = qkv[nq : nq + nk]
            w[p + "self_attn.v_proj.weight"] = qkv[nq + nk :]
            gate_up = w.pop(p + "mlp.gate_up_proj.weight")
            ffn = gate_up.shape[0] // 2
            w[p + "mlp.gate_proj.weight"] = gate_up[:ffn]
            w[p + "mlp.up_proj.weight"] = gate_up[ffn:]
        layer = Layer(
            attn_norm=_f64(w[p + "input_layernorm.weight"]),
            wq=_f64(w[p + "self_attn.q_proj.weight"]),
            wk=_f64(w[p + "self_attn.k_proj.weight"]),
            wv=_f64(w[p + "self_attn.v_proj.weight"]),
            wo=_f64(w[p + "self_attn.o_proj.weight"]),
            ffn_norm=_f64(w[p + "post_attention_layernorm.weight"]),
            w_gate=_f64(w[p + "mlp.gate_proj.weight"]),
            w_up=_f64(w[p + "mlp.up_proj.weight"]),
            w_down=_f64(w[p + "mlp.down_proj.weight"]),
        )
        if p + "self_attn.q_proj.bias" in w:
            layer.bq = _f64(w[p + "self_attn.q_proj.bias"])
            layer.bk = _f64(w[p + "self_attn.k_proj.bias"])
            layer.bv = _f64(w[p + "self_attn.v_proj.bias"])
        if p + "self_attn.q_norm.weight" in w:
            layer.q_norm = _f64(w[p + "self_attn.q_norm.weight"])
            layer.k_norm = _f64(w[p + "self_attn.k_norm.weight"])
        layers.append(layer)
    embed = _f64(w["model.embed_tokens.weight"])
    tied = "lm_head.weight" not in w
    if tied and not cfg.get("tie_word_embeddings", False):
        raise ValueError(f"{model_dir}: no lm_head.weight but tie_word_embeddings is not set")
    output = embed if tied else _f64(w["lm_head.weight"])
    return RefModel(
        n_head=n_head,
        n_kv_head=n_kv,
        head_dim=head_dim,
        rope_theta=float(cfg.get("rope_theta", 10000.0)),
        rms_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        embed=embed,
        layers=layers,
        norm=_f64(w["model.norm.weight"]),
        output=output,
        meta={"config": cfg, "tied": tied},
        inv_freq=inv_freq,
        attention_scaling=attention_scaling,
        long_inv_freq=long_inv_freq,
        long_after=long_after,
    )


def gguf_tensors_f32(path: Path) -> tuple[object, dict[str, np.ndarray]]:
    """(reader, {name: float32 array in PyTorch shape order}) of a GGUF file, dequantized by gguf-py."""
    import gguf  # imported here so that ref_forward works without gguf for HF inputs

    reader = gguf.GGUFReader(str(path))
    out = {}
    for t in reader.tensors:
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        data = gguf.quants.dequantize(t.data, t.tensor_type)
        out[t.name] = np.asarray(data, dtype=np.float32).reshape(shape)
    return reader, out


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def load_gguf(path: Path) -> RefModel:
    """A RefModel from a llama, qwen2 or qwen3 GGUF file (dequantized; llama q/k un-permuted)."""
    reader, w = gguf_tensors_f32(path)
    arch = _field(reader, "general.architecture")
    if arch not in ("llama", "qwen2", "qwen3"):
        raise ValueError(f"{path}: architecture {arch!r} not in ['llama', 'qwen2', 'qwen3']")
    if "rope_freqs.weight" in w or _field(reader, f"{arch}.rope.scaling.type") not in (None, "none"):
        raise ValueError(f"{path}: RoPE scaling is modelled from config.json only (use load_hf)")
    n_head = int(_field(reader, f"{arch}.attention.head_count"))
    n_kv = int(_field(reader, f"{arch}.attention.head_count_kv", n_head))
    hidden = int(_field(reader, f"{arch}.embedding_length"))
    n_layer = int(_field(reader, f"{arch}.block_count"))
    head_dim = int(_field(reader, f"{arch}.attention.key_length", hidden // n_head))
    layers = []
    for i in range(n_layer):
        p = f"blk.{i}."
        wq = w[p + "attn_q.weight"]
        wk = w[p + "attn_k.weight"]
        if arch == "llama":
            wq = unpermute_qk(wq, n_head)
            wk = unpermute_qk(wk, n_kv)
        layer = Layer(
            attn_norm=_f64(w[p + "attn_norm.weight"]),
            wq=_f64(wq),
            wk=_f64(wk),
            wv=_f64(w[p + "attn_v.weight"]),
            wo=_f64(w[p + "attn_output.weight"]),
            ffn_norm=_f64(w[p + "ffn_norm.weight"]),
            w_gate=_f64(w[p + "ffn_gate.weight"]),
            w_up=_f64(w[p + "ffn_up.weight"]),
            w_down=_f64(w[p + "ffn_down.weight"]),
        )
        if p + "attn_q.bias" in w:
            bq, bk = w[p + "attn_q.bias"], w[p + "attn_k.bias"]
            if arch == "llama":
                bq, bk = unpermute_qk(bq, n_head), unpermute_qk(bk, n_kv)
            layer.bq, layer.bk, layer.bv = _f64(bq), _f64(bk), _f64(w[p + "attn_v.bias"])
        if p + "attn_q_norm.weight" in w:
            layer.q_norm = _f64(w[p + "attn_q_norm.weight"])
            layer.k_norm = _f64(w[p + "attn_k_norm.weight"])
        layers.append(layer)
    embed = _f64(w["token_embd.weight"])
    tied = "output.weight" not in w
    return RefModel(
        n_head=n_head,
        n_kv_head=n_kv,
        head_dim=head_dim,
        rope_theta=float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        rms_eps=float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
        embed=embed,
        layers=layers,
        norm=_f64(w["output_norm.weight"]),
        output=embed if tied else _f64(w["output.weight"]),
        meta={"arch": arch, "tied": tied},
    )
