"""The numpy reference pruned from kiln's `--json` record (`prune`: kept
columns by pre-depth GGUF name, layer map), independently of kiln's code:
the same rows and columns cut out of the original checkpoint's weights."""

from __future__ import annotations

import numpy as np

import ref_forward


def prune_reference(model: ref_forward.RefModel, rec: dict) -> ref_forward.RefModel:
    """Apply kiln's record (kept columns by pre-depth GGUF name, layer map) to the reference."""
    kept = rec["kept_columns"]
    n_head, n_kv, hd = model.n_head, model.n_kv_head, model.head_dim
    for i, layer in enumerate(model.layers):
        o = kept.get(f"blk.{i}.attn_output.weight")
        if o is not None:
            o = np.asarray(o)
            heads = sorted({c // hd for c in o})
            group = n_head // n_kv
            groups = sorted({h // group for h in heads})
            kv_rows = np.concatenate([np.arange(g * hd, (g + 1) * hd) for g in groups])
            layer.wq = layer.wq[o]
            layer.wk = layer.wk[kv_rows]
            layer.wv = layer.wv[kv_rows]
            layer.wo = layer.wo[:, o]
            if layer.bq is not None:
                layer.bq, layer.bk, layer.bv = layer.bq[o], layer.bk[kv_rows], layer.bv[kv_rows]
        d = kept.get(f"blk.{i}.ffn_down.weight")
        if d is not None:
            d = np.asarray(d)
            layer.w_gate, layer.w_up, layer.w_down = layer.w_gate[d], layer.w_up[d], layer.w_down[:, d]
    if rec["after"]["n_head"] != n_head:
        model.n_head, model.n_kv_head = rec["after"]["n_head"], rec["after"]["n_head_kv"]
    if rec["layer_map"]:
        model.layers = [l for l, m in zip(model.layers, rec["layer_map"]) if m is not None]
    return model
