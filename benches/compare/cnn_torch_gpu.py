#!/usr/bin/env python3
"""PyTorch on the GPU evaluating K perturbed copies of the study-sized CNN the way a PyTorch user
would batch them, for the side-by-side time of benches/gpu.rs (e):

  the CNN of benches/compare/cnn_spec.json (built by cnn_torch.py's builder, the same
  architecture and parameter names as transferlens), 10000 rows, K = 10 copies whose first conv
  module (its conv and the GroupNorm that joins it) carries Gaussian noise; per copy the mean
  cross-entropy and the 0-1 error.

The reference is torch.func.vmap over torch.func.functional_call on the K stacked parameter sets
(every tensor stacked, as vmap needs one batch dimension for all parameters), the noise drawn
inside the timed region as transferlens draws it inside its call. f32 with TF32 off (full f32
products, as transferlens computes them). Times are medians of 15 runs after 3 warm-ups by CUDA
events, each run ending with the K metrics on the host. The rows go through in chunks of 1000,
as vmap over the K copies of a whole 10000-row batch would hold K full activation sets.

Usage: python3 benches/compare/cnn_torch_gpu.py [--spec FILE] [--transferlens-log FILE]
  --transferlens-log: the output of `gpu --bench` (its "RESULT cnn_noise_device_ms" line), to
  print the ratio (goal: transferlens at least 3x faster). Prints "skipped: ..." without torch or
  a GPU.
"""
import argparse
import json
import os
import re
import statistics
import sys

REPS, WARMUP = 15, 3
ROWS, COPIES, CHUNK = 10_000, 10, 1000
HERE = os.path.dirname(os.path.abspath(__file__))


def first_conv_module(spec):
    """The tensor-name prefixes of the module of the spec's first conv layer (docs/cnn.md: a conv,
    dense or block starts a module named after it, a groupnorm joins the module before it, a
    `module` field overrides)."""
    modules, current = {}, None
    for layer in spec["layers"]:
        kind = layer["type"]
        if kind in ("conv", "dense", "block", "groupnorm"):
            if "module" in layer:
                current = layer["module"]
            elif kind != "groupnorm":
                current = layer["name"]
            modules.setdefault(current, []).append(layer["name"])
    first = next(l for l in spec["layers"] if l["type"] == "conv")
    owner = first.get("module", first["name"])
    return owner, [name + "." for name in modules[owner]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", default=os.path.join(HERE, "cnn_spec.json"))
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
    sys.path.insert(0, HERE)
    from cnn_torch import build_torch_model

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)

    spec = json.load(open(args.spec))
    model = build_torch_model(spec, torch).to(dev).eval()
    c, h, w = spec["input"]
    x = torch.randn(ROWS, c, h, w, device=dev, generator=g)
    y = torch.randint(0, spec["classes"], (ROWS,), device=dev, generator=g)
    base = {k: v.detach() for k, v in model.named_parameters()}
    module, prefixes = first_conv_module(spec)
    noisy_names = [k for k in base if any(k.startswith(p) for p in prefixes)]
    stacked = {k: v.unsqueeze(0).expand(COPIES, *v.shape).contiguous() for k, v in base.items()}

    def metrics(params, x, y):
        logits = functional_call(model, params, (x,))
        loss = torch.nn.functional.cross_entropy(logits, y, reduction="sum")
        wrong = (logits.argmax(1) != y).float().sum()
        return loss, wrong

    batched = vmap(metrics, in_dims=(0, None, None))

    def run():
        params = dict(stacked)
        for name in noisy_names:
            t = base[name]
            params[name] = t + 0.01 * torch.randn(COPIES, *t.shape, device=dev, generator=g)
        loss = torch.zeros(COPIES, device=dev)
        wrong = torch.zeros(COPIES, device=dev)
        with torch.no_grad():
            for start in range(0, ROWS, CHUNK):
                l, e = batched(params, x[start : start + CHUNK], y[start : start + CHUNK])
                loss += l
                wrong += e
        return (loss / ROWS).cpu(), (wrong / ROWS).cpu()

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

    print(f"PyTorch {torch.__version__} on {torch.cuda.get_device_name(0)}, TF32 off")
    print(f"CNN {args.spec}, {ROWS} rows, K = {COPIES} noisy copies of module {module} ({', '.join(noisy_names)})")
    print(f"{'what':<52} {'ms':>10}")
    print(f"{'torch.func.vmap over functional_call, K copies':<52} {vmap_ms:>10.3f}")

    if args.transferlens_log:
        text = open(args.transferlens_log).read()
        found = dict(re.findall(r"RESULT (cnn_noise_\w+_ms) ([0-9.]+)", text))
        if "cnn_noise_device_ms" in found:
            ours = float(found["cnn_noise_device_ms"])
            print(f"{'transferlens (from the gpu bench)':<52} {ours:>10.3f}")
            print(f"speed-up over vmap: {vmap_ms / ours:.2f}x (goal >= 3x)")
        else:
            print(f"no RESULT cnn_noise_device_ms line in {args.transferlens_log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
