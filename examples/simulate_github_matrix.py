#!/usr/bin/env python3
"""Run examples/github-workflow.yml's three jobs locally, as GitHub would.

list:  `kiln ci MANIFEST --list --format github` gives the matrix;
build: each matrix entry's `command` runs as its own process (its own
       output directory, as on its own runner), then its `out` directory is
       "uploaded": copied to units/kiln-<name> (download-artifact's layout);
merge: `kiln ci MANIFEST --merge units/kiln-* -o OUT` joins and gates.

Usage: simulate_github_matrix.py [--kiln PATH] [--manifest examples/kiln.toml] WORKDIR
Run from the repository root. Exit status: the merge's (0 all gates pass, 1 a
gate failed, 2 bad input). Prints the merged summary.md.
"""

import argparse
import glob
import json
import os
import shlex
import shutil
import subprocess
import sys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kiln", default="kiln")
    ap.add_argument("--manifest", default="examples/kiln.toml")
    ap.add_argument("workdir")
    a = ap.parse_args()
    work = os.path.abspath(a.workdir)
    runners = os.path.join(work, "runners")
    out = os.path.join(work, "ci-out")
    os.makedirs(runners, exist_ok=True)

    listing = subprocess.run([a.kiln, "ci", a.manifest, "--list", "--format", "github", "-o", "ci-out"],
                             check=True, capture_output=True, text=True).stdout
    matrix = json.loads(listing)
    for unit in matrix["include"]:
        # A fresh "runner" per unit: the command's relative output lands in its own directory.
        runner = os.path.join(runners, unit["name"])
        os.makedirs(runner, exist_ok=True)
        argv = shlex.split(unit["command"])
        argv[0] = a.kiln
        # The manifest path is relative to the checkout: run from the repo root,
        # but point -o into this runner.
        o = argv.index("-o")
        argv[o + 1] = os.path.join(runner, unit["out"])
        r = subprocess.run(argv, capture_output=True, text=True)
        if r.returncode not in (0, 1):
            sys.stderr.write(r.stderr)
            return r.returncode
        shutil.copytree(argv[o + 1], os.path.join(out, "units", "kiln-" + unit["name"]), dirs_exist_ok=True)

    units = sorted(glob.glob(os.path.join(out, "units", "kiln-*")))
    r = subprocess.run([a.kiln, "ci", a.manifest, "--merge", *units, "-o", out], capture_output=True, text=True)
    sys.stdout.write(r.stdout)
    sys.stderr.write(r.stderr)
    return r.returncode


if __name__ == "__main__":
    sys.exit(main())
