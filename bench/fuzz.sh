#!/usr/bin/env bash
# bench/fuzz.sh: the long fuzz run (the CI test runs 20,000 cases per kind with
# seed 1; this runs more, with another seed, and reports throughput).
#
# Usage: bash bench/fuzz.sh [CASES_PER_KIND] [SEED] [JOBS]
#   defaults: 200000 cases per kind, seed 2, 2 workers.
# Environment: KINDS (default all), MEM_MIB (512), SLOW_MS (2000), HANG_S (20).
#
# Writes bench/out/fuzz-seed<SEED>/summary.json and, for each finding,
# bench/out/fuzz-seed<SEED>/findings/<class>/<kind>-<index>/ (the input, the
# checkpoint around it, and README.txt with the command that replays it).
# Prints the table the README quotes: cases and outcomes per kind, and
# execs/s per worker (cases over the time spent inside them).
# Exit status: 0 if nothing was found, 1 if something was.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CASES="${1:-200000}"
SEED="${2:-2}"
JOBS="${3:-2}"
OUT="bench/out/fuzz-seed$SEED"

cargo build --release --locked --quiet -p fuzz
rm -rf "$OUT"
echo "kiln-fuzz: $CASES cases per kind, seed $SEED, $JOBS workers -> $OUT"
target/release/kiln-fuzz run \
    --kinds "${KINDS:-all}" \
    --cases "$CASES" --seed "$SEED" --jobs "$JOBS" \
    --mem-mib "${MEM_MIB:-512}" --slow-ms "${SLOW_MS:-2000}" --hang-s "${HANG_S:-20}" \
    --out "$OUT"
