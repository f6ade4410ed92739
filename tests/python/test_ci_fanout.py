"""kiln ci's fan-out forms checked against their published schemas, and the
GitHub example run end to end in a local simulation of its matrix.

- The Kubernetes Indexed Job that `--list --format k8s` prints validates
  against the Kubernetes API schema (kubernetes-validate's vendored
  schemas, strict: no unknown fields).
- examples/github-workflow.yml, and the same workflow with the matrix that
  `--list --format github` prints put in place of the expression, validate
  against SchemaStore's github-workflow schema (vendored by check-jsonschema).
- examples/simulate_github_matrix.py runs list, one process per unit, and
  merge; the merged summary.json is byte-identical to one `kiln ci` run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, require, run_kiln

MANIFEST = "examples/kiln.toml"


def _import(name: str):
    try:
        return __import__(name)
    except ImportError:
        require(False, f"python package {name} missing (tests/python/requirements.txt)")


def test_k8s_listing_is_a_valid_indexed_job(kiln):
    kv = _import("kubernetes_validate")
    proc = run_kiln(kiln, "ci", MANIFEST, "--list", "--format", "k8s", "-o", "ci-out", cwd=ROOT)
    body = "\n".join(l for l in proc.stdout.splitlines() if not l.startswith("#"))
    job = json.loads(body)
    # Raises ValidationError (unknown or mistyped fields, missing required ones).
    kv.validate(job, "1.30.0", True)
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == 3
    script = spec["template"]["spec"]["containers"][0]["command"][-1]
    assert "--shard $((JOB_COMPLETION_INDEX + 1))/3" in script
    assert spec["template"]["spec"]["containers"][0]["image"] == "ghcr.io/example/kiln:latest"


def _github_schema() -> dict:
    _import("check_jsonschema")
    path = resources.files("check_jsonschema") / "builtin_schemas" / "vendor" / "github-workflows.json"
    return json.loads(path.read_text())


def _load_workflow() -> dict:
    wf = yaml.safe_load((ROOT / "examples" / "github-workflow.yml").read_text())
    # YAML 1.1 reads the key `on` as true; GitHub (and the schema) mean "on".
    if True in wf:
        wf["on"] = wf.pop(True)
    return wf


def test_github_workflow_and_matrix_validate(kiln):
    jsonschema = _import("jsonschema")
    schema = _github_schema()
    wf = _load_workflow()
    jsonschema.validate(wf, schema)
    proc = run_kiln(kiln, "ci", MANIFEST, "--list", "--format", "github", "-o", "ci-out", cwd=ROOT)
    matrix = json.loads(proc.stdout)
    assert [u["name"] for u in matrix["include"]] == ["tiny-llama-h100", "tiny-llama-m2-max", "tiny-qwen2-h100-vllm"]
    wf["jobs"]["build"]["strategy"]["matrix"] = matrix
    jsonschema.validate(wf, schema)
    # A broken workflow is caught by the same check (the test can fail).
    wf["jobs"]["build"]["strategy"]["matrix"] = 3
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(wf, schema)


def test_github_example_runs_end_to_end_in_a_simulated_matrix(kiln, tmp_path):
    sim = tmp_path / "sim"
    proc = subprocess.run(
        [sys.executable, "examples/simulate_github_matrix.py", "--kiln", str(kiln), str(sim)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| tiny-llama-h100 |" in proc.stdout
    single = tmp_path / "single"
    run_kiln(kiln, "ci", MANIFEST, "-o", single, cwd=ROOT)
    assert (sim / "ci-out" / "summary.json").read_bytes() == (single / "summary.json").read_bytes()
    for name in ("tiny-llama-h100", "tiny-llama-m2-max", "tiny-qwen2-h100-vllm"):
        a = sorted(p.name for p in (sim / "ci-out" / name).iterdir())
        b = sorted(p.name for p in (single / name).iterdir())
        assert a == b
        for f in a:
            assert (sim / "ci-out" / name / f).read_bytes() == (single / name / f).read_bytes(), f"{name}/{f}"
