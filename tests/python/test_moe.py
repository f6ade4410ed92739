"""Mixture-of-experts families end to end: tiny seeded MixtralForCausalLM,
Qwen2MoeForCausalLM and Qwen3MoeForCausalLM checkpoints (fixtures/tiny-mixtral,
fixtures/tiny-qwen2-moe, fixtures/tiny-qwen3-moe: 4 experts, 2 used per token;
Qwen2-MoE with a gated shared expert; Qwen3-MoE with per-head q/k norms, an
explicit head_dim and renormalized top-k weights).

- kiln's GGUF holds the experts stacked `[n_expert, out, in]` exactly as the
  checkpoint's per-expert tensors, the router and shared expert under llama.cpp's
  names, and the MoE keys;
- llama.cpp (node-llama-cpp) runs kiln's F32 file: its logits equal the float64
  numpy reference (ref_moe.py, written from transformers' modeling_mixtral.py /
  modeling_qwen2_moe.py / modeling_qwen3_moe.py) within F32_LOGIT_RTOL, greedy tokens equal at clear
  steps; kiln's Q8_0 file agrees with the F32 one on Q8_0_MIN_AGREEMENT;
- kiln's own forward pass (`kiln eval --per-token`) gives the reference's NLL per
  position within 1e-4 nats, and `kiln imatrix` collects per-expert statistics
  (in_sum2 per expert, counts = tokens routed to each expert) equal to the
  reference's routing;
- hostile configs and checkpoints exit 2 with one `error:` line and write nothing.

The fixtures' experts are drawn wide enough that routing matters: swapping the
router's rows moves the logits by about 1, renormalizing or not by about 0.15,
both far above the tolerances.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

import ref_moe
from conftest import ROOT, fixture_path, run_kiln
from runtime_common import F32_LOGIT_RTOL, MARGIN, Q8_0_MIN_AGREEMENT, prompt_ids, rel_margins
from test_eval_forward import CHUNKS, CTX, NLL_TOL, kiln_eval, reference_scores

MOE = ["tiny-mixtral", "tiny-qwen2-moe", "tiny-qwen3-moe"]
ARCH = {"tiny-mixtral": "llama", "tiny-qwen2-moe": "qwen2moe", "tiny-qwen3-moe": "qwen3moe"}
N_GEN = 16
TEXT = ROOT / "fixtures" / "text" / "pride-and-prejudice-ch1-17.txt"


@pytest.fixture(scope="module")
def reference():
    cache = {}

    def get(name):
        if name not in cache:
            fx = fixture_path(name)
            model = ref_moe.load_hf(fx)
            prompt = prompt_ids(fx)
            gen, _ = model.greedy(prompt, N_GEN)
            seq = prompt + gen
            cache[name] = (prompt, gen, seq, model.logits(seq))
        return cache[name]

    return get


def gguf_f32(path: Path):
    import ref_forward

    return ref_forward.gguf_tensors_f32(path)


@pytest.mark.parametrize("name", MOE)
def test_gguf_stacks_experts_and_writes_moe_keys(name, convert):
    import gguf

    fx = fixture_path(name)
    cfg = json.loads((fx / "config.json").read_text())
    hf = ref_moe.read_hf_weights(fx)
    reader, t = gguf_f32(convert(fx, "f32"))
    mixtral = name == "tiny-mixtral"
    arch = ARCH[name]
    n_expert = cfg["num_local_experts"] if mixtral else cfg["num_experts"]
    kv = {f.name: f for f in reader.fields.values()}

    def value(key):
        f = kv[key]
        return f.parts[f.data[0]].tolist()[0]

    assert bytes(kv["general.architecture"].parts[-1]).decode() == arch
    assert value(f"{arch}.expert_count") == n_expert
    assert value(f"{arch}.expert_used_count") == cfg["num_experts_per_tok"]
    if not mixtral:
        assert value(f"{arch}.expert_feed_forward_length") == cfg["moe_intermediate_size"]
    if "shared_expert_intermediate_size" in cfg:
        assert value(f"{arch}.expert_shared_feed_forward_length") == cfg["shared_expert_intermediate_size"]
    else:
        assert f"{arch}.expert_shared_feed_forward_length" not in kv
        assert not any("shexp" in k for k in t), "no shared expert"
    if arch == "qwen3moe":
        # qwen3's attention: head_dim stated (32, not hidden / heads = 16), q/k norms per head.
        assert value(f"{arch}.attention.key_length") == value(f"{arch}.attention.value_length") == cfg["head_dim"]
        for i in range(cfg["num_hidden_layers"]):
            for n in ("q", "k"):
                assert np.array_equal(t[f"blk.{i}.attn_{n}_norm.weight"], hf[f"model.layers.{i}.self_attn.{n}_norm.weight"])
    names = (
        {"gate": "w1", "up": "w3", "down": "w2"}
        if mixtral
        else {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}
    )
    moe = "block_sparse_moe" if mixtral else "mlp"
    for i in range(cfg["num_hidden_layers"]):
        for kind, hf_name in names.items():
            want = np.stack([hf[f"model.layers.{i}.{moe}.experts.{e}.{hf_name}.weight"] for e in range(n_expert)])
            got = t[f"blk.{i}.ffn_{kind}_exps.weight"]
            assert got.shape == want.shape and np.array_equal(got, want), f"blk.{i}.ffn_{kind}_exps"
        assert np.array_equal(t[f"blk.{i}.ffn_gate_inp.weight"], hf[f"model.layers.{i}.{moe}.gate.weight"])
        if "shared_expert_intermediate_size" in cfg:
            for kind, hf_name in names.items():
                assert np.array_equal(
                    t[f"blk.{i}.ffn_{kind}_shexp.weight"], hf[f"model.layers.{i}.mlp.shared_expert.{hf_name}.weight"]
                )
            gate = t[f"blk.{i}.ffn_gate_inp_shexp.weight"]
            assert np.array_equal(gate.reshape(-1), hf[f"model.layers.{i}.mlp.shared_expert_gate.weight"].reshape(-1))
    # The router is never quantized, and from a checkpoint it is F32 (as convert_hf_to_gguf writes it).
    q8 = gguf.GGUFReader(str(convert(fx, "q8_0")))
    types = {x.name: x.tensor_type.name for x in q8.tensors}
    assert types["blk.0.ffn_gate_inp.weight"] == "F32"
    assert types["blk.0.ffn_down_exps.weight"] == "Q8_0"


@pytest.mark.parametrize("name", MOE)
def test_llama_cpp_f32_matches_numpy_reference(name, convert, llama, reference):
    prompt, ref_gen, seq, ref_logits = reference(name)
    path = convert(fixture_path(name), "f32")
    out = llama({"model": str(path), "evaluate": {"tokens": seq, "top": 2, "full": True}, "generate": {"prompt": prompt, "n": N_GEN}})
    got = np.array([row["logits"] for row in out["evaluate"]], dtype=np.float64)
    assert got.shape == ref_logits.shape
    scale = max(1.0, float(np.abs(ref_logits).max()))
    err = float(np.abs(got - ref_logits).max())
    assert err <= F32_LOGIT_RTOL * scale, f"llama.cpp vs numpy: max |delta logit| {err:.3g} > {F32_LOGIT_RTOL * scale:.3g}"
    clear = rel_margins(ref_logits) > MARGIN
    got_arg = np.array([row["argmax"] for row in out["evaluate"]])
    bad = np.flatnonzero(clear & (ref_logits.argmax(-1) != got_arg))
    assert bad.size == 0, f"argmax differs at clear positions {bad.tolist()}"
    gen = out["generate"]["tokens"]
    margins = rel_margins(ref_logits[len(prompt) - 1 : len(prompt) - 1 + N_GEN])
    n_clear = int(np.argmax(margins <= MARGIN)) if (margins <= MARGIN).any() else N_GEN
    assert n_clear >= 4, f"only {n_clear} clear greedy steps"
    assert gen[:n_clear] == ref_gen[:n_clear], f"llama.cpp {gen}\nnumpy     {ref_gen}"


@pytest.mark.parametrize("name", MOE)
def test_llama_cpp_q8_0_agrees_with_f32(name, convert, llama, reference):
    fx = fixture_path(name)
    prompt, _, seq, _ = reference(name)
    f32 = llama({"model": str(convert(fx, "f32")), "evaluate": {"tokens": seq, "top": 2}})
    q8 = llama({"model": str(convert(fx, "q8_0")), "evaluate": {"tokens": seq, "top": 2}, "generate": {"prompt": prompt, "n": N_GEN}})
    a = np.array([r["argmax"] for r in f32["evaluate"]])
    b = np.array([r["argmax"] for r in q8["evaluate"]])
    assert float(np.mean(a == b)) >= Q8_0_MIN_AGREEMENT
    assert len(q8["generate"]["tokens"]) == N_GEN


@pytest.mark.parametrize("name", MOE)
def test_kiln_forward_matches_numpy_reference(kiln, tmp_path, name):
    fx = fixture_path(name)
    _, per = kiln_eval(kiln, tmp_path, fx)
    windows = per["windows"]
    assert len(windows) == CHUNKS
    ref = reference_scores(ref_moe.load_hf(fx), windows)
    worst = 0.0
    for s in per["scores"]:
        nll, _, top1, margin = ref[(s["chunk"], s["pos"])]
        worst = max(worst, abs(s["nll_original"] - nll))
        if margin > 1e-4:
            assert s["top1_original"] == top1, s
    assert worst <= NLL_TOL, f"{name}: max |NLL kiln - numpy| = {worst:.3g}"


def test_imatrix_collects_per_expert(kiln, tmp_path):
    import gguf

    name = "tiny-mixtral"
    fx = fixture_path(name)
    out = tmp_path / "moe.imatrix.gguf"
    _, per = kiln_eval(kiln, tmp_path, fx)
    run_kiln(kiln, "imatrix", fx, "--text", TEXT, "--ctx", CTX, "--chunks", CHUNKS, "-o", out, "--quiet")
    model = ref_moe.load_hf(fx)
    for layer in model.layers:
        layer.moe.seen = {}
    for win in per["windows"]:
        model.logits(win)
    reader = gguf.GGUFReader(str(out))
    data = {t.name: np.asarray(t.data, dtype=np.float64).reshape(-1) for t in reader.tensors}
    n_expert = 4
    for i, layer in enumerate(model.layers):
        for kind, gguf_kind in (("gate_up", "ffn_gate_exps"), ("down", "ffn_down_exps"), ("gate_up", "ffn_up_exps")):
            key = f"blk.{i}.{gguf_kind}.weight"
            counts = data[key + ".counts"]
            want = [layer.moe.seen.get((kind, e), [0, 0])[1] for e in range(n_expert)]
            assert counts.tolist() == want, f"{key}: counts {counts.tolist()} vs routed {want}"
            assert sum(want) == CHUNKS * CTX * 2, "every token goes to two experts"
            sums = data[key + ".in_sum2"].reshape(n_expert, -1)
            for e in range(n_expert):
                ref = layer.moe.seen.get((kind, e), [np.zeros(sums.shape[1]), 0])[0]
                assert np.allclose(sums[e], ref, rtol=1e-4, atol=1e-6), f"{key} expert {e}"


# -- hostile inputs ---------------------------------------------------------------


def rewrite_safetensors(path: Path, drop: set[str] = frozenset(), reshape: dict[str, list[int]] | None = None) -> None:
    """Rewrite a safetensors file without `drop`, and with `reshape`d tensors (filled with zeros)."""
    raw = path.read_bytes()
    (n,) = struct.unpack_from("<Q", raw, 0)
    header = json.loads(raw[8 : 8 + n])
    base = 8 + n
    meta = header.pop("__metadata__", None)
    out_header, chunks, off = {}, [], 0
    for name in sorted(header, key=lambda k: header[k]["data_offsets"][0]):
        if name in drop:
            continue
        info = dict(header[name])
        a, b = info["data_offsets"]
        data = raw[base + a : base + b]
        if reshape and name in reshape:
            info["shape"] = reshape[name]
            size = {"BF16": 2, "F16": 2, "F32": 4}[info["dtype"]]
            data = bytes(int(np.prod(reshape[name])) * size)
        info["data_offsets"] = [off, off + len(data)]
        off += len(data)
        out_header[name] = info
        chunks.append(data)
    if meta is not None:
        out_header["__metadata__"] = meta
    h = json.dumps(out_header).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(chunks))


def hostile(tmp_path, name, config=None, drop=frozenset(), reshape=None):
    d = tmp_path / name
    shutil.copytree(fixture_path(name), d)
    if config:
        cfg = json.loads((d / "config.json").read_text())
        cfg.update(config)
        (d / "config.json").write_text(json.dumps(cfg))
    if drop or reshape:
        rewrite_safetensors(d / "model.safetensors", set(drop), reshape)
    return d


MIX = "model.layers.1.block_sparse_moe.experts"
QMOE = "model.layers.0.mlp.experts"
Q3 = "Qwen3MoeForCausalLM"

HOSTILE = [
    ("more-used-than-experts", "tiny-mixtral", {"num_experts_per_tok": 5}, (), None, "num_experts_per_tok` (5)"),
    ("no-experts-used", "tiny-qwen2-moe", {"num_experts_per_tok": 0}, (), None, "`num_experts_per_tok` is 0"),
    ("config-says-more-experts", "tiny-mixtral", {"num_local_experts": 6}, (), None, "`num_local_experts` is 6 but tensor `model.layers.0.block_sparse_moe.gate.weight`"),
    ("expert-tensor-missing", "tiny-mixtral", None, {f"{MIX}.2.w3.weight"}, None, f"{MIX}.2.w3.weight` is missing"),
    ("expert-past-the-count", "tiny-qwen2-moe", {"num_experts": 3}, (), None, "is 3 but tensor `model.layers.0.mlp.experts.3."),
    ("expert-shape-disagrees", "tiny-qwen2-moe", None, (), {f"{QMOE}.1.up_proj.weight": [64, 64]}, "`moe_intermediate_size` is 96 but tensor"),
    ("norm-topk", "tiny-qwen2-moe", {"norm_topk_prob": True}, (), None, "`norm_topk_prob` (true) is not supported for Qwen2MoeForCausalLM"),
    ("sparse-step", "tiny-qwen2-moe", {"decoder_sparse_step": 2}, (), None, "`decoder_sparse_step` (2; kiln carries 1)"),
    ("dense-layers", "tiny-qwen2-moe", {"mlp_only_layers": [1]}, (), None, "`mlp_only_layers` ([1])"),
    ("q3-no-renormalization", "tiny-qwen3-moe", {"norm_topk_prob": False}, (), None, f"`norm_topk_prob` (false; kiln carries true) is not supported for {Q3}"),
    ("q3-renormalization-unstated", "tiny-qwen3-moe", {"norm_topk_prob": None}, (), None, "`norm_topk_prob` (absent, i.e. false; kiln carries true)"),
    ("q3-sparse-step", "tiny-qwen3-moe", {"decoder_sparse_step": 2}, (), None, f"`decoder_sparse_step` (2; kiln carries 1) is not supported for {Q3}"),
    ("q3-dense-layers", "tiny-qwen3-moe", {"mlp_only_layers": [0]}, (), None, f"`mlp_only_layers` ([0]) is not supported for {Q3}"),
    ("q3-attention-bias", "tiny-qwen3-moe", {"attention_bias": True}, (), None, f"`attention_bias` (true) is not supported for {Q3}"),
    ("q3-head-dim-disagrees", "tiny-qwen3-moe", {"head_dim": 16}, (), None, "`head_dim`"),
    ("q3-expert-count", "tiny-qwen3-moe", {"num_experts": 5}, (), None, "`num_experts` is 5 but tensor `model.layers.0.mlp.gate.weight`"),
    ("q3-norm-missing", "tiny-qwen3-moe", None, {"model.layers.1.self_attn.k_norm.weight"}, None, "model.layers.1.self_attn.k_norm.weight` is missing"),
    ("q3-expert-width-disagrees", "tiny-qwen3-moe", None, (), {"model.layers.0.mlp.experts.0.up_proj.weight": [96, 32]}, "`hidden_size` is 64 but tensor"),
]


@pytest.mark.parametrize("case,name,config,drop,reshape,want", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_moe_inputs_exit_2_and_write_nothing(kiln, tmp_path, case, name, config, drop, reshape, want):
    src = hostile(tmp_path, name, config, drop, reshape)
    out = tmp_path / "out" / "model.gguf"
    proc = run_kiln(kiln, "convert", src, "--type", "q8_0", "-o", out, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, f"{case}: exit {proc.returncode}\n{proc.stderr}"
    assert len(lines) == 1 and lines[0].startswith("error:"), f"{case}: {proc.stderr}"
    assert want in lines[0], f"{case}: {lines[0]}"
    assert not out.exists() and not out.parent.exists(), f"{case}: something was written"


@pytest.mark.parametrize("name", MOE)
def test_estimate_counts_total_and_active_parameters(kiln, convert, name):
    """`kiln estimate`: all parameters in memory, per token only the used experts
    (and neither the embedding lookup nor the norms) multiply activations."""
    fx = fixture_path(name)
    cfg = json.loads((fx / "config.json").read_text())
    hf = ref_moe.read_hf_weights(fx)
    total = sum(v.size for v in hf.values())
    routed = sum(v.size for k, v in hf.items() if ".experts." in k)
    norms = sum(v.size for k, v in hf.items() if "norm" in k)
    embed = hf["model.embed_tokens.weight"].size
    n_expert = cfg.get("num_local_experts") or cfg["num_experts"]
    active = total - norms - embed - routed * (1 - cfg["num_experts_per_tok"] / n_expert)
    for model in (fx, fx / "config.json", convert(fx, "f32")):
        out = json.loads(run_kiln(kiln, "estimate", model, "--target", "cpu", "--json", "--quiet").stdout)
        e = out[0] if isinstance(out, list) else out
        assert (e["params"], e["active_params"]) == (total, round(active)), model
