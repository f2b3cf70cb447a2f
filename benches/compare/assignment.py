#!/usr/bin/env python3
"""Side-by-side timing of the exact linear assignment: transferlens (`align::assignment::solve`)
against scipy.optimize.linear_sum_assignment on the same dense N x N matrix, in one run.

Usage:  python3 benches/compare/assignment.py [--n N] [--rounds R] [--seed S]
Needs numpy and scipy; builds the `align` bench with cargo and runs its one-shot mode
(TL_ASSIGNMENT_ONCE=N,SEED), which generates the same matrix (splitmix64 of the entry index,
see benches/align.rs) and prints its solve time and optimum. Each round times one scipy call and
one transferlens call a moment apart (alternating which goes first), so that both see the same
load on a shared machine. Checks that both optima agree, prints the median times and the median
of the per-round ratios transferlens / scipy (below 1: transferlens is faster).
"""
import argparse
import json
import os
import statistics
import subprocess
import time

import numpy as np
from scipy.optimize import linear_sum_assignment

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def matrix(n, seed):
    """The matrix of benches/align.rs: entry i is splitmix64(seed * 2^32 + i + 1) as [0, 1)."""
    with np.errstate(over="ignore"):
        z = (np.arange(n * n, dtype=np.uint64) + np.uint64((seed << 32) + 1)) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return ((z >> np.uint64(11)).astype(np.float64) / float(1 << 53)).reshape(n, n)


def bench_executable():
    out = subprocess.run(
        ["cargo", "bench", "--bench", "align", "--no-run", "--message-format=json"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == "align" and msg.get("executable"):
            return msg["executable"]
    raise SystemExit("cargo built no align bench executable")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    exe = bench_executable()
    m = matrix(args.n, args.seed)
    env = dict(os.environ, TL_ASSIGNMENT_ONCE=f"{args.n},{args.seed}")

    def scipy_once():
        start = time.perf_counter()
        rows, cols = linear_sum_assignment(m)
        seconds = time.perf_counter() - start
        return seconds, float(m[rows, cols].sum())

    def tlens_once():
        res = json.loads(subprocess.run([exe], env=env, check=True, capture_output=True, text=True).stdout)
        return res["seconds"], res["total"]

    times = {"scipy": [], "tlens": []}
    ratios = []
    for r in range(args.rounds):
        order = [("scipy", scipy_once), ("tlens", tlens_once)]
        if r % 2:
            order.reverse()
        got = {name: fn() for name, fn in order}
        (ts, vs), (tt, vt) = got["scipy"], got["tlens"]
        if abs(vs - vt) > 1e-9 * max(1.0, abs(vs)):
            raise SystemExit(f"optima differ: scipy {vs!r}, transferlens {vt!r}")
        times["scipy"].append(ts)
        times["tlens"].append(tt)
        ratios.append(tt / ts)
        print(f"round {r}: scipy {ts:.3f} s, transferlens {tt:.3f} s, optimum {vs:.12f} (both)", flush=True)
    print(f"n = {args.n}, load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores")
    print(f"median scipy        {statistics.median(times['scipy']):.3f} s")
    print(f"median transferlens {statistics.median(times['tlens']):.3f} s")
    print(f"median ratio transferlens / scipy: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
