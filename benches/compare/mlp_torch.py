#!/usr/bin/env python3
"""PyTorch on the GPU evaluating K perturbed copies of an MLP the way a PyTorch user would batch
them, for the side-by-side time of benches/gpu.rs (d):

  MLP 784-1024-1024-1024-10, 10000 rows, K = 10 copies whose last hidden layer (fc3, weight and
  bias) carries Gaussian noise; per copy the mean cross-entropy and the 0-1 error.

The reference is torch.func.vmap over torch.func.functional_call on the K stacked parameter sets
(every layer stacked, as vmap needs one batch dimension for all parameters), the noise drawn
inside the timed region as transferlens draws it inside its call. f32 with TF32 off (full f32
products, as transferlens computes them). Times are medians of 15 runs after 3 warm-ups by CUDA
events, each run ending with the K metrics on the host.

Usage: python3 benches/compare/mlp_torch.py [--transferlens-log FILE]
  FILE: the output of `gpu --bench` (its "RESULT mlp_noise_device_ms" and "RESULT
  mlp_noise_floor_ms" lines), to print the ratios. Prints "skipped: ..." without torch or a GPU.
"""
import argparse
import re
import statistics
import sys

REPS, WARMUP = 15, 3
SIZES = [784, 1024, 1024, 1024, 10]
ROWS, COPIES, NOISY = 10_000, 10, 2  # noise on fc3 (0-based layer 2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--transferlens-log")
    args = ap.parse_args()
    try:
        import torch
        from torch.func import functional_call, vmap
    except ImportError as e:
        print(f"skipped: {e}")
        return 0
    if not torch.cuda.is_available():
        print("skipped: torch sees no CUDA device")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)

    layers = []
    for i in range(len(SIZES) - 1):
        layers.append(torch.nn.Linear(SIZES[i], SIZES[i + 1]))
        if i + 2 < len(SIZES):
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers).to(dev).eval()
    x = torch.randn(ROWS, SIZES[0], device=dev, generator=g)
    y = torch.randint(0, SIZES[-1], (ROWS,), device=dev, generator=g)
    base = {k: v.detach() for k, v in model.named_parameters()}
    noisy_names = [f"{2 * NOISY}.weight", f"{2 * NOISY}.bias"]  # Sequential index of fc3
    stacked = {k: v.unsqueeze(0).expand(COPIES, *v.shape).contiguous() for k, v in base.items()}

    def metrics(params, x, y):
        logits = functional_call(model, params, (x,))
        loss = torch.nn.functional.cross_entropy(logits, y)
        error = (logits.argmax(1) != y).float().mean()
        return loss, error

    batched = vmap(metrics, in_dims=(0, None, None))

    def run():
        params = dict(stacked)
        for name in noisy_names:
            w = base[name]
            params[name] = w + 0.01 * torch.randn(COPIES, *w.shape, device=dev, generator=g)
        with torch.no_grad():
            loss, error = batched(params, x, y)
        return loss.cpu(), error.cpu()

    for _ in range(WARMUP):
        run()
    torch.cuda.synchronize()
    times = []
    for _ in range(REPS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    vmap_ms = statistics.median(times)

    macs = sum(SIZES[i] * SIZES[i + 1] for i in range(len(SIZES) - 1))
    flops = 2.0 * ROWS * COPIES * macs
    print(f"PyTorch {torch.__version__} on {torch.cuda.get_device_name(0)}, TF32 off")
    print(f"{'what':<52} {'ms':>10} {'TFLOP/s':>10}")
    print(f"{'torch.func.vmap over functional_call, K copies':<52} {vmap_ms:>10.3f} {flops / vmap_ms / 1e9:>10.1f}")

    if args.transferlens_log:
        text = open(args.transferlens_log).read()
        found = dict(re.findall(r"RESULT (mlp_noise_\w+_ms) ([0-9.]+)", text))
        if "mlp_noise_device_ms" in found:
            ours = float(found["mlp_noise_device_ms"])
            floor = float(found.get("mlp_noise_floor_ms", "nan"))
            print(f"{'transferlens (from the gpu bench)':<52} {ours:>10.3f}")
            print(f"speed-up over vmap: {vmap_ms / ours:.2f}x (goal >= 3x); transferlens at {ours / floor:.2f}x the FLOP floor (goal <= 1.5x)")
        else:
            print(f"no RESULT mlp_noise_device_ms line in {args.transferlens_log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
