"""Structured pruning (`kiln convert --prune`), judged from outside.

For each pruning of a fixture:
- kiln's `--json` record names what was kept (layer map, kept FFN channels and
  attention columns); the float64 numpy reference (ref_forward) of the ORIGINAL
  checkpoint is pruned here the same way, independently of kiln's code;
- the pruned GGUF's keys and shapes are consistent (block count, heads, FFN
  length, layers renumbered);
- llama.cpp (node-llama-cpp) loads the F32 GGUF; its logits match the pruned
  reference (F32_LOGIT_RTOL) and its greedy tokens equal the reference's where
  the margin is clear;
- kiln's own forward pass (`kiln eval --per-token`) of the pruned GGUF gives the
  reference's NLLs;
- the compressed-tensors artifact's config.json and tensor names agree with the
  pruned shapes;
- hostile specs: one `error:` line, exit code 2, nothing written.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

import ref_forward
from ref_prune import prune_reference
from conftest import ROOT, fixture_path, run_kiln
from runtime_common import F32_LOGIT_RTOL, MARGIN, PROMPT_TEXT, hf_encoder, rel_margins

TEXT = ROOT / "fixtures" / "text" / "pride-and-prejudice-ch1-17.txt"
N_GEN = 12
NLL_TOL = 1e-3

CASES = [
    ("tiny-llama", "layers=1"),
    ("tiny-llama", "ffn=0.75"),
    ("tiny-llama", "kv-groups=1"),
    ("tiny-llama", "kv-groups=0:1,1:0;ffn=0.5"),
    ("tiny-qwen2", "ffn=0.5;layers=0"),  # NEOX RoPE, q/k/v biases kept
    ("tiny-qwen3", "ffn=0.5;kv-groups=1"),  # per-head q/k norms stay
    ("tiny-phi", "ffn=0.5;layers=1"),  # fused gate_up
]


@pytest.fixture(scope="module")
def pruned(kiln, tmp_path_factory):
    out = tmp_path_factory.mktemp("pruned")
    cache = {}

    def make(fx_name: str, spec: str):
        key = (fx_name, spec)
        if key not in cache:
            fx = fixture_path(fx_name)
            gguf = out / f"{fx_name}-{len(cache)}.gguf"
            proc = run_kiln(kiln, "convert", fx, "--type", "f32", "--pure", "--prune", spec, "-o", gguf, "--json", "--quiet")
            rec = json.loads(proc.stdout)["prune"]
            cache[key] = (fx, gguf, rec)
        return cache[key]

    return make


@pytest.mark.parametrize("fx_name,spec", CASES)
def test_gguf_keys_and_shapes(pruned, fx_name, spec):
    import gguf

    fx, path, rec = pruned(fx_name, spec)
    cfg = json.loads((fx / "config.json").read_text())
    after = rec["after"]
    r = gguf.GGUFReader(str(path))
    arch = r.fields["general.architecture"].contents()
    f = {k: v.contents() for k, v in r.fields.items()}
    assert f[f"{arch}.block_count"] == after["n_layer"]
    assert f[f"{arch}.feed_forward_length"] == after["ffn"]
    assert f[f"{arch}.attention.head_count"] == after["n_head"]
    assert f[f"{arch}.attention.head_count_kv"] == after["n_head_kv"]
    assert after["n_head"] % after["n_head_kv"] == 0
    assert f["kiln.prune"] == rec["resolved"]
    t = {t.name: tuple(int(x) for x in t.shape) for t in r.tensors}  # gguf-py: ne order (row length first)
    blocks = {int(n.split(".")[1]) for n in t if n.startswith("blk.")}
    assert blocks == set(range(after["n_layer"])), "layers renumbered 0..n-1"
    hd, h = after["head_dim"], cfg["hidden_size"]
    for i in range(after["n_layer"]):
        if f"blk.{i}.attn_q.weight" in t:
            assert t[f"blk.{i}.attn_q.weight"] == (h, after["n_head"] * hd)
            assert t[f"blk.{i}.attn_k.weight"] == (h, after["n_head_kv"] * hd)
        assert t[f"blk.{i}.attn_output.weight"] == (after["n_head"] * hd, h)
        assert t[f"blk.{i}.ffn_down.weight"] == (after["ffn"], h)
    if rec["layer_map"]:
        assert sum(m is not None for m in rec["layer_map"]) == after["n_layer"] < cfg["num_hidden_layers"]


@pytest.mark.parametrize("fx_name,spec", CASES)
def test_llama_cpp_and_kiln_run_the_pruned_model(pruned, kiln, llama, tmp_path, fx_name, spec):
    fx, path, rec = pruned(fx_name, spec)
    ref = prune_reference(ref_forward.load_hf(fx), rec)
    bos = json.loads((fx / "config.json").read_text()).get("bos_token_id")
    # Longer than tiny-phi's original context (64): llama.cpp then uses the
    # long RoPE factors, as the reference does past it.
    prompt = ([bos] if bos is not None else []) + hf_encoder(fx)(" ".join([PROMPT_TEXT] * 4))[:70]
    ref_gen, margins = ref.greedy(prompt, N_GEN)
    seq = prompt + ref_gen
    ref_logits = ref.logits(seq)
    out = llama({"model": str(path), "evaluate": {"tokens": seq, "top": 2, "full": True}, "generate": {"prompt": prompt, "n": N_GEN}})
    got = np.array([row["logits"] for row in out["evaluate"]], dtype=np.float64)
    scale = max(1.0, float(np.abs(ref_logits).max()))
    err = float(np.abs(got - ref_logits).max())
    assert err <= F32_LOGIT_RTOL * scale, f"llama.cpp vs pruned reference: {err:.3g}"
    n_clear = next((i for i, m in enumerate(margins) if m <= MARGIN), N_GEN)
    assert n_clear >= 3, f"reference margins too small to compare greedy tokens: {margins}"
    assert out["generate"]["tokens"][:n_clear] == ref_gen[:n_clear]
    clear = rel_margins(ref_logits) > MARGIN
    assert np.all(got.argmax(-1)[clear] == ref_logits.argmax(-1)[clear])

    # kiln's forward pass of the pruned file gives the reference's NLLs.
    per_path = tmp_path / "per.json"
    run_kiln(kiln, "eval", path, "--text", TEXT, "--ctx", 64, "--chunks", 1, "--per-token", per_path, "--json", "--quiet")
    per = json.loads(per_path.read_text())
    win = per["windows"][0]
    z = ref.logits(win)
    m = z.max(axis=-1, keepdims=True)
    lp = z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))
    worst = max(abs(s["nll_original"] + lp[s["pos"]][s["target"]]) for s in per["scores"] if s["chunk"] == 0)
    assert worst <= NLL_TOL, f"kiln forward vs pruned reference: {worst:.3g}"


def test_pruning_changes_the_model_and_eval_measures_it(pruned, kiln):
    fx, path, _ = pruned("tiny-llama", "ffn=0.75")
    proc = run_kiln(kiln, "eval", fx, path, "--text", TEXT, "--ctx", 64, "--chunks", 2, "--json", "--quiet")
    j = json.loads(proc.stdout)
    same = json.loads(run_kiln(kiln, "eval", fx, fx, "--text", TEXT, "--ctx", 64, "--chunks", 2, "--json", "--quiet").stdout)
    assert same["kld"]["mean"] < 1e-9
    # The fixtures' random weights make pruning cheap but never free.
    assert j["kld"]["mean"] > 1e-7, j["kld"]
    assert j["candidate"]["perplexity"] != j["original"]["perplexity"]


def test_eval_weights_compares_a_depth_pruned_candidate_with_the_blocks_it_kept(kiln, tmp_path):
    # F32 of a BF16 checkpoint is exact: each kept block, renumbered, equals
    # the original block it came from (comparing blk.0 with blk.0 would not).
    fx = fixture_path("tiny-llama")
    out = tmp_path / "l0.gguf"
    run_kiln(kiln, "convert", fx, "--type", "f32", "--pure", "--prune", "layers=0", "-o", out, "--quiet")
    w = json.loads(run_kiln(kiln, "eval", fx, out, "--weights", "--json", "--quiet").stdout)["weights"]
    blocks = [t for t in w["tensors"] if t["name"].startswith("blk.")]
    assert len(blocks) == 9, [t["name"] for t in w["tensors"]]
    for t in blocks:
        assert t["name"].startswith("blk.1.") and t["candidate_name"] == "blk.0." + t["name"][len("blk.1.") :], t
    assert all(t["rel_frobenius"] == 0.0 for t in w["tensors"]), w["tensors"]
    assert any("depth-pruned (`layers=0`)" in n for n in w["notes"]), w["notes"]
    # A compressed-tensors artifact records its pruning in manifest.json.
    ct = tmp_path / "ct"
    run_kiln(kiln, "convert", fx, "--format", "compressed-tensors", "--scheme", "W8A16", "--prune", "layers=0", "-o", ct, "--quiet")
    w = json.loads(run_kiln(kiln, "eval", fx, ct, "--weights", "--json", "--quiet").stdout)["weights"]
    blocks = [t for t in w["tensors"] if t["name"].startswith("blk.")]
    assert blocks and all(t["candidate_name"].startswith("blk.0.") and t["rel_frobenius"] < 0.02 for t in blocks), blocks
    # Without that record, blocks of models with other block counts are not
    # compared at all, and the notes say why.
    (ct / "manifest.json").unlink()
    w = json.loads(run_kiln(kiln, "eval", fx, ct, "--weights", "--json", "--quiet").stdout)["weights"]
    assert w["tensors"] and not any(t["name"].startswith("blk.") for t in w["tensors"])
    assert any("block tensors are not compared" in n for n in w["notes"]), w["notes"]


@pytest.mark.parametrize(
    "spec,message",
    [("ffn=0.5;kv-groups=2", "keeping 2 of 2 KV groups"), ("layers=auto:5", "removing 5 of 2 layers leaves no layer")],
)
def test_a_refused_spec_is_refused_before_calibrating(kiln, tmp_path, spec, message):
    # Not quiet: calibrating on the text would print a progress line first.
    out = tmp_path / "out.gguf"
    proc = subprocess.run(
        [str(kiln), "convert", str(fixture_path("tiny-llama")), "--type", "q8_0", "--prune", spec, "--text", str(TEXT), "-o", str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("spec", ["ffn=0.5", "kv-groups=1"])
def test_an_imatrix_of_a_pruned_model_is_refused(kiln, tmp_path, spec):
    # Wanda's statistics come from the imatrix of the model being pruned; one
    # of the pruned model has fewer columns and would score the wrong channels.
    fx = fixture_path("tiny-llama")
    pruned = tmp_path / "pruned.gguf"
    run_kiln(kiln, "convert", fx, "--type", "f32", "--prune", spec, "-o", pruned, "--quiet")
    im = tmp_path / "im.gguf"
    run_kiln(kiln, "imatrix", pruned, "--text", TEXT, "--ctx", 64, "--chunks", 2, "-o", im, "--quiet")
    out = tmp_path / "out.gguf"
    # With --text the pruning scores channels on the text, but the imatrix
    # would still be remapped onto the pruned tensors for the quantization.
    for extra in ([], ["--text", str(TEXT)]):
        proc = subprocess.run(
            [str(kiln), "convert", str(fx), "--type", "q8_0", "--prune", spec, "--imatrix", str(im), *extra, "-o", str(out)],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and "not of this model" in lines[0], proc.stderr
        assert not out.exists()


def test_calibrated_choices_differ_from_weight_norms_and_are_recorded(kiln, tmp_path):
    fx = fixture_path("tiny-llama")
    plain = json.loads(run_kiln(kiln, "convert", fx, "--type", "f32", "--prune", "ffn=0.5", "--dry-run", "--json", "--quiet").stdout)["prune"]
    cal = json.loads(
        run_kiln(kiln, "convert", fx, "--type", "f32", "--prune", "ffn=0.5;layers=auto:1", "--text", TEXT, "--dry-run", "--json", "--quiet").stdout
    )["prune"]
    assert "weight norms" in plain["passes"][0]
    assert "Wanda" in cal["passes"][0]
    assert cal["calibration"] and len(cal["block_influence"]) == 2
    bi = cal["block_influence"]
    removed = [i for i, m in enumerate(cal["layer_map"]) if m is None]
    assert removed == [int(np.argmin(bi))]
    assert cal["resolved"].startswith(f"layers={removed[0]}")
    assert plain["kept_columns"] != cal["kept_columns"]


def test_compressed_tensors_config_is_consistent(kiln, tmp_path):
    from safetensors import safe_open

    fx = fixture_path("tiny-llama")
    out = tmp_path / "ct"
    run_kiln(kiln, "convert", fx, "--format", "compressed-tensors", "--scheme", "W8A16", "--prune", "layers=0;ffn=0.5;kv-groups=1", "-o", out, "--quiet")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 1 and cfg["num_key_value_heads"] == 1 and cfg["num_attention_heads"] == 2
    hd = cfg["head_dim"]
    man = json.loads((out / "manifest.json").read_text())
    assert man["prune"]["after"]["ffn"] == cfg["intermediate_size"]
    with safe_open(str(out / "model.safetensors"), "np") as f:
        names = list(f.keys())
        assert not any(n.startswith("model.layers.1.") for n in names)
        shp = lambda n: tuple(f.get_slice(n).get_shape())
        assert shp("model.layers.0.self_attn.o_proj.weight_packed")[0] == cfg["hidden_size"]
        assert shp("model.layers.0.mlp.down_proj.weight_scale")[0] == cfg["hidden_size"]
        assert shp("model.layers.0.mlp.up_proj.weight_scale")[0] == cfg["intermediate_size"]
        assert shp("model.layers.0.self_attn.k_proj.weight_scale")[0] == cfg["num_key_value_heads"] * hd
        assert shp("model.layers.0.self_attn.q_proj.weight_scale")[0] == cfg["num_attention_heads"] * hd


HOSTILE = [
    ("tiny-llama", "layers=0,1", "leaves no layer"),
    ("tiny-llama", "layers=7", "layer 7 does not exist"),
    ("tiny-llama", "ffn=0", "above 0 and below 1"),
    ("tiny-llama", "ffn=1.5", "above 0 and below 1"),
    ("tiny-llama", "ffn=0.75;ffn=0.5", "`ffn` is given twice"),
    ("tiny-llama", "kv-groups=2", "keeping 2 of 2 KV groups"),
    ("tiny-llama", "kv-groups=1;tp=2", "not divisible by the tensor-parallel degree 2"),
    ("tiny-llama", "kv-groups=0:1", "every layer must lose the same number"),
    ("tiny-gemma3", "layers=0", "llama.cpp's positional pattern"),
    ("tiny-llama", "layers=auto:1", "give --text"),
    ("tiny-qwen2", "kv-groups=1", "llama.cpp sizes `qwen2` attention by the hidden size"),
    ("tiny-phi", "kv-groups=1", "llama.cpp sizes `phi3` attention by the hidden size"),
]


@pytest.mark.parametrize("fx_name,spec,message", HOSTILE)
def test_hostile_prune_is_refused(kiln, tmp_path, fx_name, spec, message):
    out = tmp_path / "out.gguf"
    proc = subprocess.run(
        [str(kiln), "convert", str(fixture_path(fx_name)), "--type", "q8_0", "--prune", spec, "-o", str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], proc.stderr
    assert not out.exists()
