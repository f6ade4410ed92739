#!/usr/bin/env bash
# tests/kill_campaign.sh: kill -9 kiln at random points during `kiln convert`
# and during `kiln build`, and check after every kill that
#   - the output path holds either the old complete output or the complete new
#     one (compared with the sha256 of runs that were not killed: the GGUF for
#     convert, every file of the artifact directory for build), never a partial
#     file, a mixture, or nothing;
#   - the next run (not killed) succeeds, writes the complete new output, and
#     leaves no kiln temp file, staging or set-aside directory behind (it
#     removes what the killed run left).
#
# usage: tests/kill_campaign.sh [KILLS] [MODEL_DIR]
#   KILLS     kills per command (default 20: 20 during convert, 20 during build)
#   MODEL_DIR a checkpoint directory (default: a generated 69 MB F32 Llama,
#             `kiln-fixture large --params-gb 0.07 --dtype f32`)
# Environment: KILN (default target/release/kiln), KILN_FIXTURE (default
#   target/release/kiln-fixture, used only without MODEL_DIR), SEED (default 1:
#   the kill delays are drawn from it), KEEP=1 keeps the work directory.
# Exit status 0 when every check held; the last line is the summary.
# Linux (or any system with GNU coreutils' sleep and sha256sum).

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KILLS="${1:-20}"
MODEL="${2:-}"
KILN="${KILN:-$ROOT/target/release/kiln}"
KILN_FIXTURE="${KILN_FIXTURE:-$ROOT/target/release/kiln-fixture}"
RANDOM="${SEED:-1}"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/kiln-kill.XXXXXX")"
cleanup() { [[ "${KEEP:-}" == 1 ]] || rm -rf "$WORK"; }
trap cleanup EXIT

fail() {
    printf 'kill_campaign: FAILED: %s\n' "$*" >&2
    exit 1
}

if [[ -z "$MODEL" ]]; then
    MODEL="$WORK/model"
    "$KILN_FIXTURE" large --params-gb 0.07 --dtype f32 "$MODEL" >/dev/null
fi

now_ms() { date +%s%3N; }

# sha256 of a file, or `absent`.
file_sum() {
    if [[ -e "$1" ]]; then sha256sum <"$1" | cut -d' ' -f1; else echo absent; fi
}

# One sha256 over every entry of a directory (names, types and contents), or `absent`.
dir_sum() {
    [[ -e "$1" ]] || {
        echo absent
        return
    }
    (
        cd "$1"
        find . -mindepth 1 -printf '%y %p\n' | LC_ALL=C sort
        find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum
    ) | sha256sum | cut -d' ' -f1
}

# kiln's temp files, staging and set-aside directories in a directory.
leftovers() {
    find "$1" -mindepth 1 -maxdepth 1 \( -name '*.kiln-tmp' -o -name '*.kiln-old' \) -printf '%f\n'
}

# campaign NAME SUM_FN OUT CMD_A... -- CMD_B...: alternate between two
# commands writing OUT (so the old output is always the other command's).
campaign() {
    local name=$1 sum=$2 out=$3
    shift 3
    local a=() b=()
    while [[ $1 != -- ]]; do
        a+=("$1")
        shift
    done
    shift
    b=("$@")
    local dir
    dir="$(dirname "$out")"

    # Known-good outputs: each command run to completion, timed (every next
    # run below must write the same bytes again).
    local t0 ta tb sa sb
    t0=$(now_ms)
    "${a[@]}" >/dev/null 2>&1 || fail "$name: reference run A failed"
    ta=$(($(now_ms) - t0))
    sa=$($sum "$out")
    t0=$(now_ms)
    "${b[@]}" >/dev/null 2>&1 || fail "$name: reference run B failed"
    tb=$(($(now_ms) - t0))
    sb=$($sum "$out")
    [[ "$sa" != "$sb" ]] || fail "$name: A and B write the same output"
    [[ -z "$(leftovers "$dir")" ]] || fail "$name: a complete run left $(leftovers "$dir")"

    local i r cmd new old pid st delay span got left n_old=0 n_new=0 n_left=0 n_done=0
    for ((i = 1; i <= KILLS; i++)); do
        if ((i % 2)); then
            cmd=("${a[@]}")
            new=$sa
            old=$sb
            span=$ta
        else
            cmd=("${b[@]}")
            new=$sb
            old=$sa
            span=$tb
        fi
        # A delay anywhere from the start to a little past the usual end, or
        # (every other draw) near the end, where the output is renamed into
        # place; the usual end is the last uninterrupted run of the command.
        r=$((RANDOM * 32768 + RANDOM))
        if ((RANDOM % 2)); then
            delay=$((r % (span * 12 / 10 + 1)))
        else
            delay=$((span * 85 / 100 + r % (span * 30 / 100 + 1)))
        fi
        "${cmd[@]}" >/dev/null 2>&1 &
        pid=$!
        sleep "$(printf '%d.%03d' $((delay / 1000)) $((delay % 1000)))"
        kill -9 "$pid" 2>/dev/null || true
        st=0
        wait "$pid" 2>/dev/null || st=$?
        ((st == 137)) || n_done=$((n_done + 1))
        got=$($sum "$out")
        left=$(leftovers "$dir" | wc -l)
        if [[ "$got" == "$old" ]]; then
            n_old=$((n_old + 1))
        elif [[ "$got" == "$new" ]]; then
            n_new=$((n_new + 1))
        else
            fail "$name kill $i at ${delay} ms: the output is neither the old nor the new one ($got)"
        fi
        ((left == 0)) || n_left=$((n_left + 1))
        # The next run, not killed: complete new output, nothing left over.
        t0=$(now_ms)
        "${cmd[@]}" >/dev/null 2>"$WORK/next.err" || fail "$name kill $i: the next run failed: $(cat "$WORK/next.err")"
        if ((i % 2)); then ta=$(($(now_ms) - t0)); else tb=$(($(now_ms) - t0)); fi
        [[ $($sum "$out") == "$new" ]] || fail "$name kill $i: the next run's output is not the known-good one"
        [[ -z "$(leftovers "$dir")" ]] || fail "$name kill $i: after the next run: $(leftovers "$dir" | tr '\n' ' ')"
        printf '%s kill %2d at %5d ms: %s output, %d leftover(s), cleaned by the next run\n' \
            "$name" "$i" "$delay" "$([[ "$got" == "$old" ]] && echo old || echo new)" "$left"
    done
    SUMMARY+="$name: $KILLS kills (runs of ${ta}/${tb} ms): $n_old left the old output, $n_new the new one ($n_done had finished), $n_left left temp files, all removed by the next run; "
}

SUMMARY=""
mkdir -p "$WORK/convert" "$WORK/build"
campaign convert file_sum "$WORK/convert/model.gguf" \
    "$KILN" convert "$MODEL" -t q8_0 -o "$WORK/convert/model.gguf" -- \
    "$KILN" convert "$MODEL" -t q4_k_m -o "$WORK/convert/model.gguf"
campaign build dir_sum "$WORK/build/out" \
    "$KILN" build "$MODEL" --target m2 --bpw 4.5 --sample 65536 -o "$WORK/build/out" -- \
    "$KILN" build "$MODEL" --target m2 --bpw 6 --sample 65536 -o "$WORK/build/out"
echo "kill_campaign: ok: ${SUMMARY%; }"
