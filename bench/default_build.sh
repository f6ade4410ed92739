#!/usr/bin/env bash
# bench/default_build.sh [WORKDIR]: the default `kiln build` before and after
# issue 12 (the cost objective and the 512 Ki measuring sample), on the same
# generated 1.5B llama with the same flags, each under `/usr/bin/time -v`.
#
# "before" is commit c46c164, the last main commit before the issue-12 work
# (the merge 43606b5 "Merge wt/ux" is the first after it), with the one-line
# compile fix of formats/src/write/engine.rs that 43606b5 carries (c46c164 is
# an integration merge that does not compile on its own: `nonfinite_error`
# names a `ctx` it was not given); nothing else of 43606b5 is applied.
# "after" is this checkout's target/release/kiln (`cargo build --release`).
#
# The model: `kiln-fixture large --params-gb 3 --dtype bf16` (hidden 2048,
# 31 layers, vocab 32000, 1.50 B parameters, 2.99 GB of BF16 tensors); no
# text, so both sides plan on the role priors. Needs about 8 GB of disk
# under WORKDIR and, for "before", a release build of the old tree (several
# minutes). Prints each side's time, chosen plan, predicted tokens/s and
# predicted KL divergence, and leaves the artifacts (report.md, manifest.json,
# chart.svg) in WORKDIR/out-before and WORKDIR/out-after.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="${1:-/tmp/kiln-default-build}"
old_rev=c46c164
fix_rev=43606b5
mkdir -p "$work"
new_kiln="$repo/target/release/kiln"
[[ -x "$new_kiln" && -x "$repo/target/release/kiln-fixture" ]] || (cd "$repo" && cargo build --release --bins)

model="$work/model"
[[ -f "$model/config.json" ]] || "$repo/target/release/kiln-fixture" large --params-gb 3 --dtype bf16 "$model"

old="$work/old"
if [[ ! -x "$old/target/release/kiln" ]]; then
    [[ -d "$old" ]] || git -C "$repo" worktree add --detach "$old" "$old_rev"
    if ! grep -q 'fn nonfinite_error(ctx' "$old/formats/src/write/engine.rs"; then
        git -C "$repo" diff "$old_rev" "$fix_rev" -- formats/src/write/engine.rs | git -C "$old" apply
    fi
    (cd "$old" && CARGO_TARGET_DIR="$old/target" cargo build --release --bin kiln)
fi

for side in before after; do
    bin="$new_kiln"
    [[ "$side" == before ]] && bin="$old/target/release/kiln"
    out="$work/out-$side"
    rm -rf "$out"
    echo "== $side: $bin build MODEL --target rtx-4090 -o $out" >&2
    /usr/bin/time -v "$bin" build "$model" --target rtx-4090 -o "$out" \
        >"$work/$side.stdout" 2>"$work/$side.stderr"
done

for side in before after; do
    echo "== $side"
    grep -E 'Elapsed \(wall clock\)|User time|Maximum resident' "$work/$side.stderr" | sed 's/^\t*/  /'
    grep -E '^(measuring|probing|writing|evaluating)[^:]*: |^measured ' "$work/$side.stderr" | sed 's/^/  /' || true
    python3 - "$work/out-$side/manifest.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
plan, cost = m["plan"], m["cost"]
print("  schema:", m["schema"], "objective:", plan["objective"])
print("  chosen:", ", ".join(f'{t.get("type", t.get("ty"))} {t["tensors"]}' for t in plan["by_type"]),
      "tensors;", m["size"]["actual_bytes"], "bytes,", round(plan["bits_per_weight"], 3), "bpw")
print("  predicted decode tokens/s:", round(cost["decode_tokens_per_second"], 1))
print("  predicted KL divergence:", plan["predicted_kld"])
EOF
done
