#!/usr/bin/env bash
# bench/render_chart.sh OUTDIR [PNG]: render a build's chart.svg to PNG with
# rsvg-convert (librsvg; Debian: apt-get install librsvg2-bin) to look at it,
# and check that it renders at the size the SVG declares (720 x 440).
# The checks run in `cargo test`: tests/chart_png.rs renders chart.svg with
# resvg and checks the size and that no two texts' inked pixels overlap;
# this script is for eyes (with the system's fonts).
set -euo pipefail
out="${1:?usage: bench/render_chart.sh OUTDIR [PNG]}"
png="${2:-$out/chart.png}"
command -v rsvg-convert >/dev/null || { echo "rsvg-convert not found (apt-get install librsvg2-bin)" >&2; exit 1; }
rsvg-convert -o "$png" "$out/chart.svg"
size=$(python3 -c 'import struct,sys; d=open(sys.argv[1],"rb").read(24); print(*struct.unpack(">II", d[16:24]))' "$png")
[[ "$size" == "720 440" ]] || { echo "$png: rendered at $size, not 720 440" >&2; exit 1; }
echo "$png: 720 x 440"
