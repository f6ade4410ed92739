#!/usr/bin/env bash
# bench/gptq_speed.sh: GPTQ conversion time and peak memory of one kiln binary
# against another (an older build: BEFORE=path/to/kiln), on the same model,
# type and calibration, runs alternated so that both see the same machine
# load; and whether both wrote the same bytes.
#
#   BEFORE=/tmp/kiln-old bash bench/gptq_speed.sh MODEL [TYPE] [RUNS]
#
# MODEL: a checkpoint directory or GGUF (e.g. the off-grid SmolLM2 that
# bench/gptq_gguf_smollm2.py writes); TYPE: a GGUF type (Q4_K_M) or
# `W4A16` for compressed-tensors (group 64); RUNS: per binary (default 3).
# Calibration: SAMPLES (default 16) windows of CTX (default 512) tokens
# from the first 60% of the bundled text. Prints a markdown table of the
# median wall and CPU seconds and peak RSS per binary, and their ratios.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KILN=${KILN:-$ROOT/target/release/kiln}
BEFORE=${BEFORE:?set BEFORE to the kiln binary to compare with}
MODEL=${1:?usage: BEFORE=old/kiln $0 MODEL [TYPE] [RUNS]}
TYPE=${2:-Q4_K_M}
RUNS=${3:-3}
SAMPLES=${SAMPLES:-16}
CTX=${CTX:-512}
WORK=$(mktemp -d /tmp/kiln-gptq-speed.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
TEXT=$ROOT/fixtures/text/pride-and-prejudice-ch1-17.txt
head -c $(($(wc -c <"$TEXT") * 6 / 10)) "$TEXT" >"$WORK/calib.txt"

# one LABEL BIN RUN: convert once, append "label wall cpu rss_mib sha" to results.
one() {
    local label=$1 bin=$2 run=$3 out args
    if [ "$TYPE" = W4A16 ]; then
        out=$WORK/$label-$run
        args=(--format compressed-tensors --scheme W4A16 --group-size 64)
    else
        out=$WORK/$label-$run.gguf
        args=(-t "$TYPE")
    fi
    /usr/bin/time -v "$bin" convert "$MODEL" "${args[@]}" --gptq --text "$WORK/calib.txt" \
        --gptq-samples "$SAMPLES" --gptq-ctx "$CTX" -o "$out" -q 2>"$WORK/time.log" >/dev/null
    local wall cpu rss sha
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, t, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + t[i]; printf "%.1f", s}' "$WORK/time.log")
    cpu=$(awk -F': ' '/User time|System time/ {s += $2} END {printf "%.1f", s}' "$WORK/time.log")
    rss=$(awk -F': ' '/Maximum resident set size/ {printf "%.0f", $2 / 1024}' "$WORK/time.log")
    if [ -d "$out" ]; then sha=$(cat "$out"/*.safetensors | sha256sum | cut -c1-16); else sha=$(sha256sum <"$out" | cut -c1-16); fi
    echo "$label $wall $cpu $rss $sha" >>"$WORK/results"
    echo "$label run $run: ${wall}s wall, ${cpu}s CPU, ${rss} MiB, $sha" >&2
    rm -rf "$out"
}

for run in $(seq 1 "$RUNS"); do
    one before "$BEFORE" "$run"
    one after "$KILN" "$run"
done

median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
stat() { awk -v l="$1" -v c="$2" '$1 == l {print $c}' "$WORK/results" | median; }
bw=$(stat before 2); aw=$(stat after 2)
bc=$(stat before 3); ac=$(stat after 3)
br=$(stat before 4); ar=$(stat after 4)
shas=$(awk '{print $5}' "$WORK/results" | sort -u | wc -l)
echo "| kiln | median wall s | median CPU s | median peak RSS MiB |"
echo "|---|---:|---:|---:|"
echo "| before ($BEFORE) | $bw | $bc | $br |"
echo "| after ($KILN) | $aw | $ac | $ar |"
echo "| after / before | $(awk -v a="$aw" -v b="$bw" 'BEGIN {printf "%.2f", a / b}') | $(awk -v a="$ac" -v b="$bc" 'BEGIN {printf "%.2f", a / b}') | $(awk -v a="$ar" -v b="$br" 'BEGIN {printf "%.2f", a / b}') |"
if [ "$shas" = 1 ]; then echo "Same bytes from both binaries in every run."; else echo "DIFFERENT bytes: $shas distinct outputs" >&2; exit 1; fi
