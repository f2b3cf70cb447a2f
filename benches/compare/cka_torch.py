#!/usr/bin/env python3
"""PyTorch on the GPU running the published feature-space linear CKA (Kornblith et al. 2019,
`feature_space_linear_cka`) on the shapes of benches/gpu.rs, for side-by-side times:

  (b) one 65536 x 2048 f32 pair;
  (c) a 5 x 5 layer matrix, n = 8192, widths 256 .. 2048 on both sides (the published function
      called for each of the 25 pairs, as a user of it would);
  and, on (b)'s pair, minibatch linear CKA as the popular PyTorch CKA packages compute it
  (Nguyen et al. 2021): the unbiased HSIC estimator of Song et al. (2012) on each minibatch of
  1024 rows, averaged over the minibatches, CKA = mean HSIC(K, L) / sqrt(mean HSIC(K, K) mean
  HSIC(L, L)). It estimates another quantity than the full-data CKA (the values are printed),
  at a fraction of the FLOPs; it is what a user of those packages would time.

f32 throughout with TF32 off (full f32 products, as transferlens computes them). Times are
medians of 15 runs after 3 warm-ups, by CUDA events, each run ending with the scalar on the host
(`.item()`), as transferlens's calls do.

Usage: python3 benches/compare/cka_torch.py [--transferlens-log FILE]
  FILE: the output of `gpu --bench` (benches/gpu.rs), whose "RESULT cka_*_ms" lines give
  transferlens's times for the ratio lines. Prints "skipped: ..." without torch or a GPU.
"""
import argparse
import re
import statistics
import sys

REPS, WARMUP = 15, 3


def feature_space_linear_cka(x, y, debiased=False):
    """The published formula (Kornblith et al. 2019, CKA colab), in torch."""
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    dot_product_similarity = torch.linalg.norm(x.T @ y) ** 2
    normalization_x = torch.linalg.norm(x.T @ x)
    normalization_y = torch.linalg.norm(y.T @ y)
    if debiased:
        n = x.shape[0]
        sum_squared_rows_x = (x * x).sum(1)
        sum_squared_rows_y = (y * y).sum(1)
        squared_norm_x = sum_squared_rows_x.sum()
        squared_norm_y = sum_squared_rows_y.sum()

        def debias(xty, ssx, ssy, snx, sny):
            return xty - n / (n - 2.0) * (ssx @ ssy) + snx * sny / ((n - 1) * (n - 2))

        dot_product_similarity = debias(
            dot_product_similarity, sum_squared_rows_x, sum_squared_rows_y, squared_norm_x, squared_norm_y
        )
        normalization_x = torch.sqrt(
            debias(normalization_x**2, sum_squared_rows_x, sum_squared_rows_x, squared_norm_x, squared_norm_x)
        )
        normalization_y = torch.sqrt(
            debias(normalization_y**2, sum_squared_rows_y, sum_squared_rows_y, squared_norm_y, squared_norm_y)
        )
    return dot_product_similarity / (normalization_x * normalization_y)


def unbiased_hsic(k, l):
    """The unbiased HSIC estimator (Song et al. 2012) of two n x n Gram matrices, n > 3."""
    n = k.shape[0]
    k = k - torch.diag(torch.diagonal(k))
    l = l - torch.diag(torch.diagonal(l))
    ones = torch.ones(n, 1, device=k.device, dtype=k.dtype)
    trace = torch.sum(k * l)
    sums = (ones.T @ k @ ones) * (ones.T @ l @ ones) / ((n - 1) * (n - 2))
    cross = 2.0 / (n - 2) * (ones.T @ k @ l @ ones)
    return ((trace + sums - cross) / (n * (n - 3))).squeeze()


def minibatch_linear_cka(x, y, batch=1024):
    """Minibatch linear CKA as the popular PyTorch packages accumulate it."""
    xy = xx = yy = 0.0
    batches = 0
    for start in range(0, x.shape[0] - batch + 1, batch):
        xb, yb = x[start:start + batch], y[start:start + batch]
        k, l = xb @ xb.T, yb @ yb.T
        xy = xy + unbiased_hsic(k, l)
        xx = xx + unbiased_hsic(k, k)
        yy = yy + unbiased_hsic(l, l)
        batches += 1
    return xy / torch.sqrt(xx * yy)


def time_ms(f):
    for _ in range(WARMUP):
        f()
    torch.cuda.synchronize()
    times = []
    for _ in range(REPS):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        f()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main():
    global torch
    ap = argparse.ArgumentParser()
    ap.add_argument("--transferlens-log")
    args = ap.parse_args()
    ours = {}
    if args.transferlens_log:
        ours = {k: float(v) for k, v in re.findall(r"RESULT (cka_\w+_ms) ([0-9.]+)", open(args.transferlens_log).read())}
    try:
        import torch
    except ImportError as e:
        print(f"skipped: no torch ({e})")
        return 0
    if not torch.cuda.is_available():
        print("skipped: torch sees no CUDA device")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    print(f"PyTorch {torch.__version__} on {torch.cuda.get_device_name(0)}, f32, TF32 off, "
          f"medians of {REPS} after {WARMUP} warm-ups")

    n, p = 65536, 2048
    x = torch.randn(n, p, device=dev, generator=g)
    y = 0.6 * x + 0.8 * torch.randn(n, p, device=dev, generator=g) + 1.0
    print(f"\n(b) torch: CKA of a {n} x {p} f32 pair")
    print(f"{'what':<44} {'ms':>10} {'TFLOP/s':>10}")
    flops = 2.0 * n * p * p * 3  # three p x p products, as the published formula forms them
    value = None
    torch_pair = {}
    for debiased in (False, True):
        out = {}

        def run():
            out["v"] = feature_space_linear_cka(x, y, debiased).item()

        ms = time_ms(run)
        torch_pair[debiased] = ms
        value = out["v"] if not debiased else value
        name = "feature_space_linear_cka, " + ("debiased" if debiased else "biased")
        print(f"{name:<44} {ms:>10.3f} {flops / (ms * 1e-3) / 1e12:>10.1f}")
    print(f"CKA = {value:.6f}")
    out = {}

    def minibatch():
        out["v"] = minibatch_linear_cka(x, y).item()

    mb_ms = time_ms(minibatch)
    print(f"{'minibatch linear CKA (1024 rows, unbiased HSIC)':<44} {mb_ms:>10.3f}")
    print(f"minibatch CKA = {out['v']:.6f} (another estimator than the full-data CKA above)")
    if "cka_pair_ms" in ours:
        r = ours["cka_pair_ms"] / torch_pair[False]
        print(f"transferlens {ours['cka_pair_ms']:.3f} ms: {r:.2f}x torch's published formula (goal <= 0.8x), "
              f"{ours['cka_pair_ms'] / mb_ms:.2f}x the minibatch estimator's time")
    if "cka_pair_debiased_ms" in ours:
        r = ours["cka_pair_debiased_ms"] / torch_pair[True]
        print(f"transferlens debiased {ours['cka_pair_debiased_ms']:.3f} ms: {r:.2f}x torch's debiased formula")
    del x, y
    torch.cuda.empty_cache()

    n = 8192
    widths = [256, 512, 1024, 1536, 2048]
    xs = [torch.randn(n, w, device=dev, generator=g) for w in widths]
    ys = [0.6 * a + 0.8 * torch.randn(n, a.shape[1], device=dev, generator=g) + 1.0 for a in xs]
    print(f"\n(c) torch: 5 x 5 layer matrix, n = {n}, widths {widths} on both sides")

    def matrix():
        vals = torch.stack([feature_space_linear_cka(a, b) for a in xs for b in ys])
        return vals.cpu()

    ms = time_ms(matrix)
    print(f"{'what':<44} {'ms':>10}")
    print(f"{'feature_space_linear_cka x 25 pairs':<44} {ms:>10.3f}")
    diag = matrix().reshape(5, 5).diagonal()
    print("diagonal: " + str([f"{v:.4f}" for v in diag.tolist()]))
    if "cka_matrix_ms" in ours:
        print(f"transferlens {ours['cka_matrix_ms']:.3f} ms: {ours['cka_matrix_ms'] / ms:.2f}x torch (goal <= 0.4x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
