"""Pruning planned jointly with quantization (`kiln build|plan --prune-candidates`).

- A tight budget where pruning measures better: the artifact is pruned as the
  manifest says (GGUF keys `kiln.prune`, block count, KV heads, FFN length and
  tensor shapes agree with the chosen option), llama.cpp loads and generates
  from it, the manifest and report list every option weighed with and without
  pruning, and the chosen one is the one of lowest measured KL divergence.
- A generous budget where every pruning measures worse: nothing is pruned, and
  the file is what the same build without candidates writes.
- `kiln plan --json` lists kiln's plan and the pruned plans side by side, and
  without the flag has no pruning record.
- Hostile values: one `error:` line, exit code 2.
"""

from __future__ import annotations

import json
import math

import pytest

from conftest import ROOT, fixture_path, run_kiln
from runtime_common import prompt_ids

TEXT = ROOT / "fixtures" / "text" / "pride-and-prejudice-ch1-17.txt"
FX = "tiny-llama"
COMMON = ["--target", "m2", "--text", str(TEXT), "--ctx", "64", "--quiet"]


def gguf_fields(path):
    import gguf

    r = gguf.GGUFReader(str(path))
    f = {k: v.contents() for k, v in r.fields.items()}
    shapes = {t.name: tuple(int(x) for x in t.shape) for t in r.tensors}
    return f, shapes


@pytest.fixture(scope="module")
def tight(kiln, tmp_path_factory):
    out = tmp_path_factory.mktemp("joint") / "tight"
    run_kiln(kiln, "build", fixture_path(FX), *COMMON, "--bpw", "3.3", "--prune-candidates", "auto", "-o", out)
    return out, json.loads((out / "manifest.json").read_text())


def test_pruning_that_measures_better_is_built_and_llama_cpp_runs_it(tight, llama):
    out, m = tight
    p = m["pruning"]
    opts = p["options"]
    assert opts[0]["spec"] == "none" and len(opts) > 1
    weighed = [o for o in opts if o["measured"] is not None]
    assert p["chosen"] is not None, "on this budget a pruning measures better"
    best = min(weighed, key=lambda o: o["measured"]["kld_mean"])
    assert best["spec"] != "none" and best["chosen"] and best["resolved"] == p["chosen"]
    assert sum(o["chosen"] for o in opts) == 1
    assert best["measured"]["kld_mean"] < opts[0]["measured"]["kld_mean"]
    # The artifact's measured accuracy is the chosen option's.
    assert m["accuracy"]["text"]["kld_mean"] == pytest.approx(best["measured"]["kld_mean"], rel=1e-12)
    # The same budget: an explicit --bpw size, no KV credit.
    assert all(o["budget_tensor_bytes"] == opts[1]["budget_tensor_bytes"] for o in weighed[1:])
    assert best["tensor_bytes"] <= best["budget_tensor_bytes"] == opts[0]["tensor_bytes"]

    f, shapes = gguf_fields(out / "tiny-llama.gguf")
    cfg = json.loads((fixture_path(FX) / "config.json").read_text())
    assert f["kiln.prune"] == p["chosen"]
    assert f["llama.block_count"] == best["n_layer"]
    assert f["llama.attention.head_count_kv"] == best["n_head_kv"]
    assert f["llama.feed_forward_length"] == best["ffn"]
    assert (best["n_layer"], best["n_head_kv"], best["ffn"]) != (
        cfg["num_hidden_layers"],
        cfg["num_key_value_heads"],
        cfg["intermediate_size"],
    )
    assert {int(n.split(".")[1]) for n in shapes if n.startswith("blk.")} == set(range(best["n_layer"]))
    assert shapes["blk.0.ffn_down.weight"] == (best["ffn"], cfg["hidden_size"])
    assert shapes["blk.0.attn_k.weight"][1] == best["n_head_kv"] * cfg["head_dim"]
    assert [t["name"] for t in m["tensors"]] == list(shapes)
    assert m["size"]["actual_bytes"] == (out / "tiny-llama.gguf").stat().st_size

    report = (out / "report.md").read_text()
    assert "## Pruning weighed with quantization" in report
    assert f"Built with pruning `{p['chosen']}`" in report
    # Among the recipes, the built plan is named as pruned, at its own bits
    # per weight (over the pruned model's parameters), and without the
    # quantization-only prediction the recipes' column would compare it with.
    row = m["comparison"][0]
    assert row["name"] == f"kiln plan, pruned {p['chosen']}" and row["predicted_kld"] is None, row
    assert row["tensor_bytes"] == best["tensor_bytes"]
    bpw = row["tensor_bytes"] * 8 / best["parameters"]
    assert best["bits_per_weight"] == pytest.approx(bpw, rel=1e-9)
    cell = f"{bpw:.{max(0, 2 - math.floor(math.log10(bpw)))}f}"  # 3 significant digits, as the report
    assert f"| kiln plan, pruned {p['chosen']} | " in report and f" | {cell} | " in report.split("## Compared with")[1]

    prompt = prompt_ids(fixture_path(FX))
    res = llama({"model": str(out / "tiny-llama.gguf"), "evaluate": {"tokens": prompt, "top": 2}, "generate": {"prompt": prompt, "n": 8}})
    assert res["info"]["architecture"] == "llama"
    assert len(res["generate"]["tokens"]) == 8


def test_pruning_that_measures_worse_is_rejected(kiln, tmp_path):
    out = tmp_path / "generous"
    base = tmp_path / "base"
    args = [*COMMON, "--bpw", "8", "--objective", "accuracy"]
    run_kiln(kiln, "build", fixture_path(FX), *args, "--prune-candidates", "ffn=0.75", "--prune-candidates", "layers=auto:1", "-o", out)
    m = json.loads((out / "manifest.json").read_text())
    p = m["pruning"]
    assert p["chosen"] is None
    none = p["options"][0]
    assert none["chosen"] and none["spec"] == "none"
    pruned = p["options"][1:]
    assert [o["spec"] for o in pruned] == ["ffn=0.75", "layers=auto:1"]
    for o in pruned:
        assert o["measured"]["kld_mean"] > none["measured"]["kld_mean"], o
        assert not o["chosen"]
    assert "No pruning measured better" in (out / "report.md").read_text()
    f, _ = gguf_fields(out / "tiny-llama.gguf")
    assert "kiln.prune" not in f
    # Rejected pruning leaves the model file as the build without candidates writes it.
    run_kiln(kiln, "build", fixture_path(FX), *args, "-o", base)
    assert (out / "tiny-llama.gguf").read_bytes() == (base / "tiny-llama.gguf").read_bytes()
    assert "pruning" not in json.loads((base / "manifest.json").read_text())


def test_plan_lists_plans_with_and_without_pruning(kiln):
    args = ["plan", fixture_path(FX), "--targets", "m2", "--bpw", "3.3", "--text", TEXT, "--ctx", "64", "--json", "--quiet"]
    j = json.loads(run_kiln(kiln, *args, "--prune-candidates", "ffn=0.75").stdout)
    t = j["targets"][0]
    names = [o["name"] for o in t["options"]]
    assert names[0] == "kiln plan" and names[1] == "kiln plan, pruned ffn=0.75"
    assert "Q4_K_M" in names
    assert t["pruning"]["options"][1]["measured"]["kld_mean"] == t["options"][1]["measured"]["kld_mean"]
    plain = json.loads(run_kiln(kiln, *args).stdout)
    assert "pruning" not in plain["targets"][0]
    assert not any("pruned" in o["name"] for o in plain["targets"][0]["options"])


@pytest.mark.parametrize(
    "extra,want",
    [
        (["--prune-candidates", "ffn=1.5"], "--prune-candidates `ffn=1.5`"),
        (["--prune-candidates", "none", "--prune-candidates", "auto"], "cannot be given with other candidates"),
        (["--prune-candidates", "layers=auto:2"], "removing 2 of 2 layers leaves no layer"),
        (["--prune-candidates", "layers=7"], "layer 7 does not exist"),
        (["--prune-candidates", "kv-groups=1;tp=2"], "not divisible by the tensor-parallel degree 2"),
    ],
)
def test_hostile_candidates(kiln, tmp_path, extra, want):
    out = tmp_path / "o"
    proc = run_kiln(kiln, "build", fixture_path(FX), *COMMON, "--bpw", "4", *extra, "-o", out, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and want in lines[0], proc.stderr
    assert not out.exists()


def test_a_named_candidate_the_model_cannot_take_is_refused_before_any_measurement(kiln, tmp_path):
    # Without --quiet, the imatrix, probes and measurements would each print
    # a progress line: the error must come before them.
    out = tmp_path / "o"
    args = ["--target", "m2", "--text", str(TEXT), "--ctx", "64", "--bpw", "4", "--prune-candidates", "layers=0,1", "-o", out]
    proc = run_kiln(kiln, "build", fixture_path(FX), *args, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --prune-candidates `layers=0,1`") and "leaves no layer" in lines[0], proc.stderr
    assert not out.exists()


def test_candidates_need_text(kiln, tmp_path):
    out = tmp_path / "o"
    proc = run_kiln(kiln, "build", fixture_path(FX), "--target", "m2", "--bpw", "4", "--prune-candidates", "auto", "-o", out, "--quiet", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: --prune-candidates") and "--text" in proc.stderr
    assert not out.exists()


def test_auto_lists_what_does_not_apply(kiln, tmp_path):
    # llama.cpp sizes qwen2 attention by the hidden size: KV pruning does not
    # apply to a GGUF of it, and auto says so instead of dropping it.
    out = tmp_path / "q"
    run_kiln(kiln, "build", fixture_path("tiny-qwen2"), *COMMON, "--bpw", "6", "--prune-candidates", "auto", "-o", out)
    p = json.loads((out / "manifest.json").read_text())["pruning"]
    kv = [o for o in p["options"] if o["spec"].startswith("kv-groups")]
    assert kv and kv[0]["not_applicable"] and kv[0]["measured"] is None
    # Named, the same candidate is an error.
    proc = run_kiln(
        kiln, "build", fixture_path("tiny-qwen2"), *COMMON, "--bpw", "6", "--prune-candidates", kv[0]["spec"], "-o", tmp_path / "e", check=False
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: --prune-candidates"), proc.stderr
