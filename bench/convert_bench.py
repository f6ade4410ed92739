#!/usr/bin/env python3
"""Throughput and peak RSS of `kiln convert` on generated models.

Generates llama-shaped BF16 checkpoints of about 0.5, 2 and 4 GB (seeded,
see fixtures/), then converts each to Q8_0 and Q4_0 with the release binary,
interleaving sizes and types, and reports wall time, GB/s of input and peak
resident memory (GNU time's %M of each child). As a peer in the same
run it times reading the same input with `cat > /dev/null` (the I/O ceiling)
and reports kiln's throughput as a ratio of it.

Usage: python3 bench/convert_bench.py [--sizes 0.5,2,4] [--types q8_0,q4_0]
       [--threads N] [--work DIR] [--repeat R]
Writes a markdown table to stdout and JSON to bench/out/convert.json.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(cmd, env=None):
    """Run cmd; return (seconds, peak RSS bytes), the RSS from GNU time's %M
    (ru_maxrss seen from here would include this process's RSS at fork)."""
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "%M", *map(str, cmd)], env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    secs = time.perf_counter() - t0
    err = p.stderr.decode()
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, cmd))}\n{err}")
    return secs, int(err.strip().splitlines()[-1]) * 1024


def dir_bytes(d):
    return sum(f.stat().st_size for f in Path(d).glob("*.safetensors"))


def drop_cache(d):
    # Best effort: evict the input from the page cache so every run reads the
    # same way (needs root; otherwise runs are warm-cache, said in the output).
    try:
        for f in Path(d).glob("*.safetensors"):
            fd = os.open(f, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
        return True
    except OSError:
        return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="0.5,2,4")
    ap.add_argument("--types", default="q8_0,q4_0")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--work", default=str(REPO / "bench" / "out" / "work"))
    args = ap.parse_args()

    subprocess.run(["cargo", "build", "--release", "-q", "--bin", "kiln", "-p", "kiln"], cwd=REPO, check=True)
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "fixtures", "--bin", "kiln-fixture"], cwd=REPO, check=True)
    kiln = REPO / "target" / "release" / "kiln"
    gen = REPO / "target" / "release" / "kiln-fixture"
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    sizes = [float(s) for s in args.sizes.split(",")]
    types = args.types.split(",")
    models = {}
    for gb in sizes:
        d = work / f"llama-{gb}gb"
        if not (d / "config.json").exists():
            shutil.rmtree(d, ignore_errors=True)
            subprocess.run([gen, "large", "--params-gb", str(gb), "--dtype", "bf16", d], check=True)
        models[gb] = d

    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    rows = []
    for rep in range(args.repeat):
        for gb in sizes:
            d = models[gb]
            size = dir_bytes(d)
            cold = drop_cache(d)
            cat_s, _ = run(["sh", "-c", f"cat {d}/*.safetensors > /dev/null"])
            for ty in types:
                out = work / f"out-{gb}-{ty}.gguf"
                drop_cache(d)
                secs, rss = run([kiln, "convert", d, "--type", ty, "-o", out, "--quiet"], env=env)
                rows.append({
                    "size_gb": gb, "input_bytes": size, "type": ty, "seconds": secs,
                    "gb_per_s": size / secs / 1e9, "peak_rss_mib": rss / 2**20,
                    "cat_gb_per_s": size / cat_s / 1e9, "cold_cache": cold, "threads": args.threads,
                    "output_bytes": out.stat().st_size, "repeat": rep,
                })
                out.unlink()

    (REPO / "bench" / "out").mkdir(exist_ok=True)
    (REPO / "bench" / "out" / "convert.json").write_text(json.dumps(rows, indent=1))
    print(f"threads: {args.threads}, cache: {'cold (fadvise DONTNEED)' if rows and rows[0]['cold_cache'] else 'warm'}")
    print("| input | type | seconds | GB/s of input | vs `cat` read | peak RSS |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['input_bytes']/1e9:.2f} GB BF16 | {r['type']} | {r['seconds']:.2f} | {r['gb_per_s']:.2f} "
              f"| {r['gb_per_s']/r['cat_gb_per_s']:.2f}x | {r['peak_rss_mib']:.0f} MiB |")


if __name__ == "__main__":
    main()
