#!/usr/bin/env python3
"""numpy's equivalents of transferlens' weight-space kernels, timed on the same sizes as
benches/geometry.rs, reported in the same unit (bytes read + written per second).

    pip install numpy
    python3 benches/compare/geometry.py            # 64,000,001 elements, like the criterion bench
    TL_BENCH_ELEMENTS=4000000 python3 benches/compare/geometry.py

Equivalents:
  distance     sqrt(sum((a - b)^2)) accumulated in f64, as transferlens does:
               d = a.astype(f64) - b; np.dot(d, d)  (for f64 data: d = a - b)
  distance32   the fast, less accurate f32 form: d = a - b; np.dot(d, d)  (f32 accumulation)
  interpolate  out = (1 - l) a + l b in the storage dtype, into a preallocated out:
               np.multiply(a, 1 - l, out=out); out += l * b
  copy         np.copyto(out, a)
numpy has no bfloat16; f16 arithmetic in numpy is emulated and slow, which is why it is listed.
"""
import os
import platform
import time

import numpy as np

N = int(os.environ.get("TL_BENCH_ELEMENTS", "64000001"))
REPEATS = int(os.environ.get("TL_BENCH_REPEATS", "7"))


def best(fn):
    fn()  # warm up: page faults, caches
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), sorted(times)[len(times) // 2]


def main():
    rng = np.random.default_rng(1)
    base_a = rng.uniform(-1, 1, N)
    base_b = rng.uniform(-1, 1, N)
    print(f"numpy {np.__version__}, python {platform.python_version()}, {N} elements, "
          f"best and median of {REPEATS}")
    print(f"{'dtype':6} {'op':12} {'GB/s best':>10} {'GB/s median':>12} {'ms best':>9}")
    for dtype in (np.float32, np.float16, np.float64):
        a = base_a.astype(dtype)
        b = base_b.astype(dtype)
        out = np.empty_like(a)
        nbytes = a.nbytes
        lam = 0.3

        def copy():
            np.copyto(out, a)

        def distance():
            d = a.astype(np.float64) - b if dtype != np.float64 else a - b
            return np.sqrt(np.dot(d, d))

        def distance32():
            d = a - b
            with np.errstate(over="ignore"):  # f16 sums overflow: one reason not to do this
                return np.sqrt(np.dot(d, d))

        def interpolate():
            np.multiply(a, dtype(1 - lam), out=out)
            out.__iadd__(dtype(lam) * b)

        for name, fn, touched in (
            ("copy", copy, 2 * nbytes),
            ("distance", distance, 2 * nbytes),
            ("distance32", distance32, 2 * nbytes),
            ("interpolate", interpolate, 3 * nbytes),
        ):
            if dtype == np.float64 and name == "distance32":
                continue
            t_best, t_med = best(fn)
            print(f"{np.dtype(dtype).name:6} {name:12} {touched / t_best / 1e9:10.1f} "
                  f"{touched / t_med / 1e9:12.1f} {t_best * 1e3:9.2f}")


if __name__ == "__main__":
    main()
