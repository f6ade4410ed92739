"""ref_moe: an independent numpy reference of the mixture-of-experts FFN of
MixtralForCausalLM, Qwen2MoeForCausalLM and Qwen3MoeForCausalLM, written from
transformers' modeling_mixtral.py (MixtralSparseMoeBlock), modeling_qwen2_moe.py
(Qwen2MoeSparseMoeBlock) and modeling_qwen3_moe.py (Qwen3MoeSparseMoeBlock), not
from kiln or llama.cpp. The attention, norms and head are ref_forward's (the
llama/qwen2 reference, with Qwen3's per-head q/k RMS norms).

What must stay true:
- the router is `softmax(gate(h))` over all experts, in float64; the top
  `num_experts_per_tok` by probability are kept (ties to the lower index, as
  torch.topk on distinct values); Mixtral divides the kept weights by their
  sum, Qwen2-MoE and Qwen3-MoE only when `norm_topk_prob` is true (the
  configs' default being false);
- an expert is `down(silu(gate(x)) * up(x))` (Mixtral: `w2(silu(w1(x)) * w3(x))`),
  weighted and summed; Qwen2-MoE adds `sigmoid(shared_expert_gate(h)) *
  shared_expert(h)`; Qwen3-MoE has no shared expert, and applies
  `q_norm` / `k_norm` (RMS over each head) before RoPE, with the config's own
  `head_dim`;
- weights come straight from the Hugging Face checkpoint (per-expert tensors),
  so kiln's stacking is what the tests judge.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import ref_forward
from ref_forward import Layer, RefModel, _f64, read_hf_weights


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


@dataclass
class MoeBlock:
    router: np.ndarray  # [n_expert, hidden]
    gate: list[np.ndarray]  # per expert [ffn, hidden]
    up: list[np.ndarray]
    down: list[np.ndarray]  # per expert [hidden, ffn]
    top_k: int
    norm_topk: bool
    shared: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # gate, up, down
    shared_gate: np.ndarray | None = None  # [1, hidden]
    # When a dict: per (weight kind, expert), [sum of squared inputs, rows]
    # of the rows routed to that expert (what llama-imatrix collects).
    seen: dict | None = None

    def _see(self, kind: str, e: int, x: np.ndarray) -> None:
        if self.seen is not None:
            acc = self.seen.setdefault((kind, int(e)), [0.0, 0])
            acc[0] = acc[0] + x * x
            acc[1] += 1

    def __call__(self, h: np.ndarray) -> np.ndarray:
        logits = h @ self.router.T
        logits = logits - logits.max(axis=-1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=-1, keepdims=True)
        out = np.zeros_like(h)
        for t in range(h.shape[0]):
            order = np.argsort(-probs[t], kind="stable")[: self.top_k]
            w = probs[t, order]
            if self.norm_topk:
                w = w / w.sum()
            for e, we in zip(order, w):
                x = h[t]
                a = silu(self.gate[e] @ x) * (self.up[e] @ x)
                self._see("gate_up", e, x)
                self._see("down", e, a)
                out[t] += we * (a @ self.down[e].T)
        if self.shared is not None:
            g, u, d = self.shared
            s = (silu(h @ g.T) * (h @ u.T)) @ d.T
            gate = 1.0 / (1.0 + np.exp(-(h @ self.shared_gate.T)))
            out += gate * s
        return out


class MoeRefModel(RefModel):
    def _ffn(self, layer, h: np.ndarray) -> np.ndarray:
        return layer.moe(h)


def load_hf(model_dir: Path) -> MoeRefModel:
    """A MoeRefModel from a MixtralForCausalLM, Qwen2MoeForCausalLM or
    Qwen3MoeForCausalLM checkpoint."""
    model_dir = Path(model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    arch = (cfg.get("architectures") or [None])[0]
    if arch not in ("MixtralForCausalLM", "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM"):
        raise ValueError(f"{model_dir}: architecture {arch} is not an MoE family here")
    w = read_hf_weights(model_dir)
    n_head = cfg["num_attention_heads"]
    hidden = cfg["hidden_size"]
    mixtral = arch == "MixtralForCausalLM"
    qwen3 = arch == "Qwen3MoeForCausalLM"
    n_expert = cfg["num_local_experts"] if mixtral else cfg["num_experts"]
    layers = []
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        if mixtral:
            x = p + "block_sparse_moe."
            names = ("w1", "w3", "w2")
            router = w[x + "gate.weight"]
            ex = [x + f"experts.{e}." for e in range(n_expert)]
        else:
            x = p + "mlp."
            names = ("gate_proj", "up_proj", "down_proj")
            router = w[x + "gate.weight"]
            ex = [x + f"experts.{e}." for e in range(n_expert)]
        gate, up, down = ([_f64(w[e + n + ".weight"]) for e in ex] for n in names)
        block = MoeBlock(
            router=_f64(router),
            gate=gate,
            up=up,
            down=down,
            top_k=cfg["num_experts_per_tok"],
            norm_topk=True if mixtral else bool(cfg.get("norm_topk_prob", False)),
        )
        if arch == "Qwen2MoeForCausalLM":
            s = x + "shared_expert."
            block.shared = tuple(_f64(w[s + n + ".weight"]) for n in names)
            block.shared_gate = _f64(w[x + "shared_expert_gate.weight"])
        layer = Layer(
            attn_norm=_f64(w[p + "input_layernorm.weight"]),
            wq=_f64(w[p + "self_attn.q_proj.weight"]),
            wk=_f64(w[p + "self_attn.k_proj.weight"]),
            wv=_f64(w[p + "self_attn.v_proj.weight"]),
            wo=_f64(w[p + "self_attn.o_proj.weight"]),
            ffn_norm=_f64(w[p + "post_attention_layernorm.weight"]),
            w_gate=None,
            w_up=None,
            w_down=None,
        )
        if p + "self_attn.q_proj.bias" in w:
            layer.bq = _f64(w[p + "self_attn.q_proj.bias"])
            layer.bk = _f64(w[p + "self_attn.k_proj.bias"])
            layer.bv = _f64(w[p + "self_attn.v_proj.bias"])
        if qwen3:
            layer.q_norm = _f64(w[p + "self_attn.q_norm.weight"])
            layer.k_norm = _f64(w[p + "self_attn.k_norm.weight"])
        layer.moe = block
        layers.append(layer)
    embed = _f64(w["model.embed_tokens.weight"])
    tied = "lm_head.weight" not in w
    output = embed if tied else _f64(w["lm_head.weight"])
    return MoeRefModel(
        n_head=n_head,
        n_kv_head=cfg.get("num_key_value_heads", n_head),
        head_dim=cfg.get("head_dim") or hidden // n_head,
        rope_theta=float(cfg.get("rope_theta", 10000.0)),
        rms_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        embed=embed,
        layers=layers,
        norm=_f64(w["model.norm.weight"]),
        output=output,
        meta={"config": cfg, "tied": tied},
    )


__all__ = ["load_hf", "MoeRefModel", "MoeBlock", "ref_forward"]
