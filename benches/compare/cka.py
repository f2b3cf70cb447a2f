#!/usr/bin/env python3
"""Side-by-side CKA timing: transferlens against numpy running the published feature-space
formula (Kornblith et al. 2019, `feature_space_linear_cka`) on the same data, in one run.

Usage:  python3 benches/compare/cka.py [--quick] [--rounds N] [--baseline EXE] [--blas]
Needs numpy; builds and runs `cargo run --release --example time_cka`. Each round times one
numpy call and one transferlens call a moment apart (alternating which goes first), so that both
see the same load on a shared machine. Prints the median times, the median of the per-round
ratios transferlens / numpy, and the largest difference between the two results.

--baseline EXE times a second build of the `time_cka` example (an earlier commit's, say) in the
same rounds, right after this build's call, and prints its ratio to numpy (and the largest
difference of its values from this build's) beside this one's: a before/after comparison under
the same load.

--blas also builds `time_cka` with `--features blas` (the CKA products through the system's
OpenBLAS; needs libopenblas-dev), keeps it as target/release/examples/time_cka_blas and times
it the same way, as one more pair of columns. Run it through run.sh, or unset OPENBLAS_CORETYPE
and OPENBLAS_L2_SIZE first: a forced core type changes numpy's kernels and the blas build's.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from safetensors_io import write_safetensors


def feature_space_linear_cka(x, y, debiased=False):
    """The published formula, as a user of numpy writes it (Kornblith et al.'s notebook)."""
    x = x - np.mean(x, 0, keepdims=True)
    y = y - np.mean(y, 0, keepdims=True)
    dot = np.linalg.norm(x.T.dot(y)) ** 2
    nx = np.linalg.norm(x.T.dot(x))
    ny = np.linalg.norm(y.T.dot(y))
    if debiased:
        n = x.shape[0]
        sx, sy = np.einsum("ij,ij->i", x, x), np.einsum("ij,ij->i", y, y)
        fx, fy = sx.sum(), sy.sum()
        def helper(xty, a, b, na, nb):
            return xty - n / (n - 2.0) * a.dot(b) + na * nb / ((n - 1) * (n - 2))
        dot = helper(dot, sx, sy, fx, fy)
        nx = np.sqrt(helper(nx ** 2, sx, sx, fx, fx))
        ny = np.sqrt(helper(ny ** 2, sy, sy, fy, fy))
    return dot / (nx * ny)


def start(exe, fa, fb, debiased):
    """Starts a time_cka process; returns it and its values (printed after its warm-up)."""
    proc = subprocess.Popen([exe, fa, fb, "debiased" if debiased else "biased"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    return proc, np.array([float(v) for v in proc.stdout.readline().split()])


def timed_call(proc):
    time.sleep(0.3)
    proc.stdin.write("run\n")
    proc.stdin.flush()
    return float(proc.stdout.readline())


def time_rounds(exe, fa, fb, xs, ys, debiased, rounds, others=()):
    """Median numpy and transferlens seconds, the median per-round ratio, both results, and for
    each other build in `others` (label, executable) its median per-round ratio and its values."""
    proc, tl_values = start(exe, fa, fb, debiased)
    extra = [start(other, fa, fb, debiased) for _, other in others]

    # Each call starts after a pause: OpenBLAS's and faer's worker threads spin for a while
    # after a call, and would take a core from the other side's next call.
    def numpy_call():
        time.sleep(0.3)
        start = time.perf_counter()
        values = [[feature_space_linear_cka(x, y, debiased) for y in ys] for x in xs]
        return time.perf_counter() - start, np.array(values).ravel()

    _, np_values = numpy_call()  # warm-up
    np_times, tl_times, extra_times = [], [], [[] for _ in extra]
    for r in range(rounds):
        if r % 2:
            tl_times.append(timed_call(proc))
            np_times.append(numpy_call()[0])
        else:
            np_times.append(numpy_call()[0])
            tl_times.append(timed_call(proc))
        for (p, _), times in zip(extra, extra_times):
            times.append(timed_call(p))
    for p in [proc] + [p for p, _ in extra]:
        p.stdin.close()
        p.wait()
    ratio = float(np.median(np.array(tl_times) / np.array(np_times)))
    extra_results = [(float(np.median(np.array(times) / np.array(np_times))), values)
                     for (_, values), times in zip(extra, extra_times)]
    return float(np.median(np_times)), float(np.median(tl_times)), ratio, np_values, tl_values, extra_results


def cpu_model():
    with open("/proc/cpuinfo") as info:
        return next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "unknown CPU")


def system_openblas():
    """The version pkg-config gives for the OpenBLAS the blas build links."""
    found = subprocess.run(["pkg-config", "--modversion", "openblas"], capture_output=True, text=True)
    return found.stdout.strip() if found.returncode == 0 else "(version unknown: pkg-config found none)"


def main():
    quick = "--quick" in sys.argv
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    exe = os.path.join(root, "target", "release", "examples", "time_cka")
    build = ["cargo", "build", "--release", "--example", "time_cka", "-q"]
    others = []
    if "--baseline" in sys.argv:
        others.append(("baseline", sys.argv[sys.argv.index("--baseline") + 1]))
    if "--blas" in sys.argv:
        # Both builds write the same file: the blas one is built first and copied aside.
        subprocess.run(build + ["--features", "blas"], cwd=root, check=True)
        others.append(("blas", shutil.copy(exe, exe + "_blas")))
    subprocess.run(build, cwd=root, check=True)
    rng = np.random.default_rng(0)
    cases = [
        ("pair 20000x1024", 20000, [1024], [1024]),
        ("5x5 layers, n=4096, p=256..1024", 4096, [256, 512, 640, 768, 1024], [256, 512, 640, 768, 1024]),
    ]
    if quick:
        cases = [("pair 4000x256", 4000, [256], [256]), ("3x3 layers, n=1024", 1024, [64, 128, 256], [64, 128, 256])]
    rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else (3 if quick else 9)
    try:
        from threadpoolctl import threadpool_info
        blas = ", ".join(f"{i['internal_api']} {i.get('version')} ({i.get('architecture')}, {i['num_threads']} threads)" for i in threadpool_info())
    except ImportError:
        blas = "unknown BLAS (pip install threadpoolctl to see it)"
    print(f"numpy {np.__version__} with {blas}; {os.cpu_count()} CPUs ({cpu_model()}); medians of {rounds} rounds")
    if "--blas" in sys.argv:
        print(f"blas build: the system's OpenBLAS {system_openblas()}")
    print(f"{'case':34} {'estimator':9} {'numpy s':>9} {'tlens s':>9} {'ratio':>7} {'max |diff|':>10} {'load':>5}"
          + "".join(f" {label + ' ratio':>14} {label + ' vs tlens':>15}" for label, _ in others))
    with tempfile.TemporaryDirectory() as tmp:
        for label, n, ps, qs in cases:
            base = rng.standard_normal((n, 64)).astype(np.float32)
            xs = [(base @ rng.standard_normal((64, p)) + rng.standard_normal((n, p))).astype(np.float32) for p in ps]
            ys = [(base @ rng.standard_normal((64, q)) + 2 * rng.standard_normal((n, q))).astype(np.float32) for q in qs]
            fa, fb = os.path.join(tmp, "a.safetensors"), os.path.join(tmp, "b.safetensors")
            write_safetensors(fa, [(f"x{i}", x) for i, x in enumerate(xs)])
            write_safetensors(fb, [(f"y{i}", y) for i, y in enumerate(ys)])
            for estimator in ("biased", "debiased"):
                np_med, tl_med, ratio, np_values, tl_values, extra = time_rounds(
                    exe, fa, fb, xs, ys, estimator == "debiased", rounds, others)
                diff = np.max(np.abs(tl_values - np_values))
                print(f"{label:34} {estimator:9} {np_med:9.3f} {tl_med:9.3f} {ratio:7.2f} {diff:10.2e} {os.getloadavg()[0]:5.2f}"
                      + "".join(f" {other_ratio:14.2f} {np.max(np.abs(values - tl_values)):15.2e}"
                                for other_ratio, values in extra))


if __name__ == "__main__":
    main()
