#!/usr/bin/env python3
"""The Python call against the C call, and against pytorch-cka-style minibatch code, on one
20000 x 1024 f32 CKA pair.

Usage:  python3 bindings/python/bench/cka_overhead.py [--rounds N] [--lib PATH]
Needs the package installed (pip install ./bindings/python), numpy, and the C library
(cargo build --release: target/release/libtransferlens.so, called through ctypes). With torch
importable it also times the minibatch CKA as pytorch-cka computes it (unbiased HSIC_1 summed over
batches of 1000 rows, Nguyen, Raghu and Kornblith 2021) on the same data.

Each round times the calls one after another, rotating which goes first, each after a 0.3 s
pause (OpenBLAS and rayon workers spin for a while after a call); it prints the medians and the
median of the per-round ratios.
"""
import argparse
import ctypes
import os
import statistics
import time
from pathlib import Path

import numpy as np

import transferlens as tl

ROOT = Path(__file__).resolve().parents[3]


class TlMatrix(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("dtype", ctypes.c_uint32),
        ("rows", ctypes.c_uint64),
        ("cols", ctypes.c_uint64),
        ("row_stride", ctypes.c_uint64),
        ("device", ctypes.c_int32),
    ]


def c_linear_cka(lib_path):
    lib = ctypes.CDLL(str(lib_path))
    ctx = ctypes.c_void_p()
    assert lib.tl_context_create(1, -1, ctypes.byref(ctx)) == 0  # TL_BACKEND_CPU
    lib.tl_cka_linear.argtypes = [ctypes.c_void_p, ctypes.POINTER(TlMatrix), ctypes.POINTER(TlMatrix), ctypes.c_uint32, ctypes.POINTER(ctypes.c_double)]

    def call(x, y):
        mx = TlMatrix(x.ctypes.data, 0, x.shape[0], x.shape[1], x.shape[1], -1)  # TL_DTYPE_F32
        my = TlMatrix(y.ctypes.data, 0, y.shape[0], y.shape[1], y.shape[1], -1)
        out = ctypes.c_double()
        status = lib.tl_cka_linear(ctx, ctypes.byref(mx), ctypes.byref(my), 0, ctypes.byref(out))
        assert status == 0, status
        return out.value

    return call


def torch_minibatch_cka(batch):
    """pytorch-cka's computation (CKA.py of the torch_cka package): per batch, the Grams, the
    unbiased HSIC_1 of each pair, summed; CKA from the sums."""
    import torch

    def hsic1(k, l):
        n = k.shape[0]
        k = k.clone().fill_diagonal_(0)
        l = l.clone().fill_diagonal_(0)
        ones = torch.ones(n, 1, dtype=k.dtype)
        result = torch.trace(k @ l)
        result += ((ones.t() @ k @ ones @ ones.t() @ l @ ones) / ((n - 1) * (n - 2))).item()
        result -= ((ones.t() @ k @ l @ ones) * 2 / (n - 2)).item()
        return (1 / (n * (n - 3)) * result).item()

    def call(x, y):
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        xy = xx = yy = 0.0
        with torch.no_grad():
            for start in range(0, xt.shape[0], batch):
                bx, by = xt[start : start + batch], yt[start : start + batch]
                k, l = bx @ bx.t(), by @ by.t()
                xy += hsic1(k, l)
                xx += hsic1(k, k)
                yy += hsic1(l, l)
        return xy / (xx**0.5 * yy**0.5)

    return call


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--lib", default=ROOT / "target" / "release" / "libtransferlens.so")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    x = np.maximum(rng.standard_normal((20000, 1024), dtype=np.float32), 0)
    y = (x @ rng.standard_normal((1024, 1024), dtype=np.float32) / 32 + rng.standard_normal((20000, 1024), dtype=np.float32)).astype(np.float32)
    calls = {
        "C (tl_cka_linear)": c_linear_cka(args.lib),
        "Python (transferlens.linear_cka)": lambda a, b: tl.linear_cka(a, b, backend="cpu"),
    }
    try:
        calls["pytorch-cka-style minibatch (torch, batch 1000)"] = torch_minibatch_cka(1000)
    except ImportError:
        print("torch is not installed: the minibatch comparison is left out")
    names = list(calls)
    times = {n: [] for n in names}
    values = {}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            time.sleep(0.3)
            t = time.perf_counter()
            values[n] = calls[n](x, y)
            times[n].append(time.perf_counter() - t)
    c, py = names[0], names[1]
    # The fixed cost per call, apart from the load's noise: many calls on a tiny pair.
    small_x = rng.standard_normal((64, 8), dtype=np.float32)
    small_y = rng.standard_normal((64, 8), dtype=np.float32)
    per_call = {c: [], py: []}
    for r in range(6):
        for n in ((c, py) if r % 2 == 0 else (py, c)):
            time.sleep(0.3)
            t = time.perf_counter()
            for _ in range(500):
                calls[n](small_x, small_y)
            per_call[n].append((time.perf_counter() - t) / 500 * 1e6)
    for n in (c, py):
        print(f"{n}: {statistics.median(per_call[n]):.1f} us per call on a 64 x 8 pair (median of 6 x 500 calls)")
    print(f"load average (1, 5, 15 min) after the rounds: {os.getloadavg()}")
    print("| call | median s | ratio to the C call: median of rounds (range) | CKA |")
    print("|---|---|---|---|")
    for n in names:
        ratios = [a / b for a, b in zip(times[n], times[c])]
        spread = f"{min(ratios):.3f} to {max(ratios):.3f}"
        print(f"| {n} | {statistics.median(times[n]):.4f} | {statistics.median(ratios):.3f} ({spread}) | {values[n]:.7f} |")
    assert abs(values[c] - values[py]) < 1e-12, (values[c], values[py])


if __name__ == "__main__":
    main()
