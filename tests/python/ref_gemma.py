"""ref_gemma: an independent numpy reference of the Gemma 2 / Gemma 3 text forward pass.

Written from transformers' modeling_gemma2.py / modeling_gemma3.py (Gemma2ForCausalLM,
Gemma3ForCausalLM), not from kiln or llama.cpp, so that it can judge both. What must
stay true:

- It reads the Hugging Face checkpoint itself (ref_forward.read_hf_weights: safetensors
  parsed in Python, BF16 widened exactly) and uses HF's conventions: RMSNorm scales by
  (1 + w), embeddings are multiplied by sqrt(hidden_size), RoPE is rotate-half on the
  unpermuted weights, GELU is the tanh approximation (gelu_pytorch_tanh).
- Sandwich norms: post_attention_layernorm after attention, pre_/post_feedforward_layernorm
  around the MLP; Gemma 3 normalizes q and k per head before RoPE.
- Attention scores are scaled by query_pre_attn_scalar ** -0.5, soft-capped by
  attn_logit_softcapping when set (cap * tanh(s / cap)), then masked: causal, and on
  sliding layers also limited to keys with q_idx - kv_idx < sliding_window.
- Sliding layers: config `layer_types`, else HF's default pattern ((i + 1) % n != 0 slides,
  n = 2 for Gemma 2, sliding_window_pattern (6) for Gemma 3). Gemma 3's sliding layers use
  RoPE base rope_local_base_freq; its global layers rope_theta with linear rope_scaling.
- The logits are soft-capped by final_logit_softcapping when set. All arithmetic float64.

Public API: `load_hf(dir, converter_norms=False, plus_one=True, **overrides)` -> `GemmaRef`;
`.logits(ids)` -> [len(ids), vocab]; `.greedy(prompt, n)` -> (tokens, margins).
`overrides` replace config values (the tests use them to show that a window or a soft-cap
changes the logits). `converter_norms=True` rounds each norm's (1 + w) to the checkpoint's
dtype, which is what llama.cpp's converter stores (it adds 1 in torch, in that dtype; HF's
runtime adds in float32); `plus_one=False` is the wrong math a converter that forgot the
+ 1 would run (for tests that must be able to fail). `round_to(x, torch_dtype)` rounds as
torch does (round to nearest even).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ref_forward import read_hf_weights


def round_to(x: np.ndarray, torch_dtype: str) -> np.ndarray:
    """float64 values rounded to `torch_dtype` (nearest even), back as float64."""
    x = np.asarray(x, dtype=np.float64)
    if torch_dtype == "float16":
        return x.astype(np.float16).astype(np.float64)
    f = x.astype(np.float32)
    if torch_dtype == "bfloat16":
        b = f.view(np.uint32).astype(np.uint64)
        b = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) << 16
        f = b.astype(np.uint32).view(np.float32)
    return f.astype(np.float64)


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


class GemmaRef:
    def __init__(self, cfg: dict, w: dict[str, np.ndarray], converter_norms: bool = False, plus_one: bool = True):
        self.cfg = cfg
        self.norm_dtype = cfg.get("torch_dtype", "float32") if converter_norms else None
        self.plus_one = plus_one
        arch = (cfg.get("architectures") or [""])[0]
        if arch not in ("Gemma2ForCausalLM", "Gemma3ForCausalLM"):
            raise ValueError(f"architecture {arch!r} is not Gemma2ForCausalLM or Gemma3ForCausalLM")
        self.v3 = arch == "Gemma3ForCausalLM"
        if cfg.get("hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
            raise ValueError(f"hidden_activation {cfg['hidden_activation']} is not modelled")
        self.w = {k: np.asarray(v, dtype=np.float64) for k, v in w.items()}
        self.n_layer = cfg["num_hidden_layers"]
        self.n_head = cfg["num_attention_heads"]
        self.n_kv = cfg.get("num_key_value_heads", self.n_head)
        self.hd = cfg["head_dim"]
        self.hidden = cfg["hidden_size"]
        self.eps = cfg.get("rms_norm_eps", 1e-6)
        if "layer_types" in cfg and cfg["layer_types"] is not None:
            self.sliding = [t == "sliding_attention" for t in cfg["layer_types"]]
        else:
            n = cfg.get("sliding_window_pattern", 6) if self.v3 else 2
            self.sliding = [bool((i + 1) % n) for i in range(self.n_layer)]
        self.embed = self.w["model.embed_tokens.weight"]
        self.output = self.w.get("lm_head.weight", self.embed)

    def _rms(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        var = np.mean(x * x, axis=-1, keepdims=True)
        gain = (1.0 + w) if self.plus_one else w
        if self.norm_dtype:
            gain = round_to(gain, self.norm_dtype)
        return x / np.sqrt(var + self.eps) * gain

    def _rope(self, x: np.ndarray, base: float, factor: float) -> np.ndarray:
        t, d = x.shape[0], self.hd
        inv_freq = 1.0 / (base ** (np.arange(0, d, 2, dtype=np.float64) / d)) / factor
        freqs = np.arange(t, dtype=np.float64)[:, None] * inv_freq[None, :]
        emb = np.concatenate([freqs, freqs], axis=-1)
        cos, sin = np.cos(emb)[:, None, :], np.sin(emb)[:, None, :]
        half = d // 2
        rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
        return x * cos + rot * sin

    def logits(self, ids: list[int]) -> np.ndarray:
        c, w = self.cfg, self.w
        ids = np.asarray(ids, dtype=np.int64)
        t = len(ids)
        x = self.embed[ids] * np.sqrt(self.hidden)
        group = self.n_head // self.n_kv
        scale = float(c.get("query_pre_attn_scalar", self.hd)) ** -0.5
        cap = c.get("attn_logit_softcapping")
        q_idx, k_idx = np.arange(t)[:, None], np.arange(t)[None, :]
        causal = k_idx <= q_idx
        window = c.get("sliding_window")
        rs = c.get("rope_scaling") or {}
        factor = float(rs.get("factor", 1.0)) if rs.get("rope_type", rs.get("type")) == "linear" else 1.0
        theta = float(c.get("rope_theta", 10000.0))
        for i in range(self.n_layer):
            p = f"model.layers.{i}."
            h = self._rms(x, w[p + "input_layernorm.weight"])
            q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(t, self.n_head, self.hd)
            k = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(t, self.n_kv, self.hd)
            v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(t, self.n_kv, self.hd)
            if self.v3:
                q = self._rms(q, w[p + "self_attn.q_norm.weight"])
                k = self._rms(k, w[p + "self_attn.k_norm.weight"])
            if self.v3 and self.sliding[i]:
                base, f = float(c.get("rope_local_base_freq", 10000.0)), 1.0
            else:
                base, f = theta, factor
            q, k = self._rope(q, base, f), self._rope(k, base, f)
            k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
            s = np.einsum("qhd,khd->hqk", q, k) * scale
            if cap:
                s = np.tanh(s / cap) * cap
            allowed = causal & ((q_idx - k_idx < window) if self.sliding[i] and window else True)
            s = np.where(allowed[None], s, -np.inf)
            s -= s.max(axis=-1, keepdims=True)
            pr = np.exp(s)
            pr /= pr.sum(axis=-1, keepdims=True)
            a = np.einsum("hqk,khd->qhd", pr, v).reshape(t, self.n_head * self.hd)
            a = a @ w[p + "self_attn.o_proj.weight"].T
            x = x + self._rms(a, w[p + "post_attention_layernorm.weight"])
            h = self._rms(x, w[p + "pre_feedforward_layernorm.weight"])
            m = _gelu_tanh(h @ w[p + "mlp.gate_proj.weight"].T) * (h @ w[p + "mlp.up_proj.weight"].T)
            m = m @ w[p + "mlp.down_proj.weight"].T
            x = x + self._rms(m, w[p + "post_feedforward_layernorm.weight"])
        logits = self._rms(x, w["model.norm.weight"]) @ self.output.T
        fcap = c.get("final_logit_softcapping")
        if fcap:
            logits = np.tanh(logits / fcap) * fcap
        return logits

    def greedy(self, prompt: list[int], n: int) -> tuple[list[int], list[float]]:
        ids, out, margins = list(prompt), [], []
        for _ in range(n):
            row = self.logits(ids)[-1]
            order = np.argsort(-row, kind="stable")
            out.append(int(order[0]))
            margins.append(float((row[order[0]] - row[order[1]]) / max(abs(row[order[0]]), 1e-12)))
            ids.append(int(order[0]))
        return out, margins


def load_hf(model_dir: Path, converter_norms: bool = False, plus_one: bool = True, **overrides) -> GemmaRef:
    model_dir = Path(model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg.update(overrides)
    return GemmaRef(cfg, read_hf_weights(model_dir), converter_norms, plus_one)
