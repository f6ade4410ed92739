#!/usr/bin/env bash
# Builds ggml's quantizers (src/ggml-quants.c) with the driver in this
# directory into a `ggml_harness` binary, the reference that
# `cargo run -p quant --release --example bench -- --ggml PATH` compares and
# times against. ggml is compiled as llama.cpp builds ggml-base for x86-64:
# -O3, release (NDEBUG), baseline target (no -march=native, so no FMA).
#
# usage: quant/bench/build_ggml_harness.sh [GGML_CHECKOUT] [OUT_DIR]
#   GGML_CHECKOUT: a ggml-org/ggml checkout (default: cloned into OUT_DIR at
#                  the commit the crate's goldens come from)
#   OUT_DIR:       where to build (default: a new temporary directory)
# Prints the path of the harness. Needs gcc (and git when cloning).
set -euo pipefail
COMMIT=d99724f2b141fed9e1a9f402213506c081433465
here="$(cd "$(dirname "$0")" && pwd)"
out="${2:-$(mktemp -d)}"
ggml="${1:-}"
mkdir -p "$out"
if [ -z "$ggml" ]; then
  ggml="$out/ggml"
  git clone --quiet https://github.com/ggml-org/ggml "$ggml"
  git -C "$ggml" checkout --quiet "$COMMIT"
fi
flags=(-O3 -DNDEBUG -std=gnu11 -I"$ggml/include" -I"$ggml/src")
gcc "${flags[@]}" -c "$ggml/src/ggml-quants.c" -o "$out/quants.o"
gcc "${flags[@]}" -c "$here/ggml_harness.c" -o "$out/harness.o"
gcc "${flags[@]}" -c "$here/ggml_stubs.c" -o "$out/stubs.o"
gcc "$out/harness.o" "$out/quants.o" "$out/stubs.o" -lm -o "$out/ggml_harness"
echo "$out/ggml_harness"
