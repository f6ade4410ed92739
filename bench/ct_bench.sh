#!/usr/bin/env bash
# kiln's compressed-tensors conversion against llm-compressor's RTN oneshot, on the
# same machine, model and thread count: wall time and peak RSS (/usr/bin/time -v),
# end to end (load, quantize, write the compressed checkpoint).
#
#   bench/ct_bench.sh [MODEL_DIR] [THREADS]
#
# MODEL_DIR defaults to a ~1 GB bf16 llama made by kiln-fixture (`large --params-gb 1`,
# hidden 2048, FFN 5632, 8 layers). THREADS (default: all cores) is RAYON_NUM_THREADS
# for kiln and OMP_NUM_THREADS / torch.set_num_threads for llm-compressor.
# Needs a Python with llmcompressor (PY, default python3; see
# fixtures/compressed_tensors/README.md) and `cargo build --release`.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
KILN="${KILN:-$ROOT/target/release/kiln}"
PY="${PY:-python3}"
THREADS="${2:-$(nproc)}"
WORK="$(mktemp -d /tmp/ct-bench.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
MODEL="${1:-}"
if [ -z "$MODEL" ]; then
    MODEL="$WORK/model"
    "$ROOT/target/release/kiln-fixture" large --params-gb 1 --dtype bf16 "$MODEL" >/dev/null
fi
export RAYON_NUM_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS"

measure() { # label, command...: prints "label wall_s peak_rss_mb"
    local label="$1"; shift
    /usr/bin/time -v -o "$WORK/time.txt" "$@" >"$WORK/out.txt" 2>&1 || { cat "$WORK/out.txt" >&2; exit 1; }
    local wall rss
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,p,":"); s=0; for(i=1;i<=n;i++) s=s*60+p[i]; print s}' "$WORK/time.txt")
    rss=$(awk -F': ' '/Maximum resident set size/ {printf "%.0f", $2/1024}' "$WORK/time.txt")
    echo "$label $wall $rss"
}

cat >"$WORK/lc.py" <<'EOF'
import sys, torch
torch.set_num_threads(int(sys.argv[3]))
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import QuantizationModifier
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype="auto")
oneshot(model=model, recipe=[QuantizationModifier(targets="Linear", scheme=sys.argv[2], ignore=["lm_head"])])
model.save_pretrained(sys.argv[4], save_compressed=True)
EOF

echo "model: $MODEL ($(du -sh "$MODEL" | cut -f1)), threads: $THREADS, $(nproc) cores"
printf '%-12s %10s %10s %12s %12s %8s\n' scheme kiln_s lc_s kiln_rss_MB lc_rss_MB speedup
for scheme in W4A16 FP8_DYNAMIC; do
    read -r _ kw kr < <(measure kiln "$KILN" convert "$MODEL" --format compressed-tensors --scheme "$scheme" -o "$WORK/kiln-$scheme")
    read -r _ lw lr < <(measure llmc "$PY" "$WORK/lc.py" "$MODEL" "$scheme" "$THREADS" "$WORK/lc-$scheme")
    printf '%-12s %10.1f %10.1f %12s %12s %7.1fx\n' "$scheme" "$kw" "$lw" "$kr" "$lr" "$(echo "$lw / $kw" | bc -l)"
    rm -rf "$WORK/kiln-$scheme" "$WORK/lc-$scheme"
done
