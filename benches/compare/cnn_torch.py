#!/usr/bin/env python3
"""The built-in CNN next to PyTorch on the CPU: the same architecture (built here from the same
JSON spec), the same weights, data and batch size, in one run.

First a check that the two are the same network: PyTorch loads transferlens's initial weights by
name (strict), and must give the same loss and 0-1 error on the data, and after one full-batch
SGD step (lr 0.1, momentum 0.9, weight decay 5e-4: PyTorch's SGD update) the same weights.
Then the time of one training epoch (batch 64, lr 0.05), alternating which side goes first in
each round so both see the same load: wall-clock seconds and CPU seconds of the process (all its
threads; on a machine that others share, the CPU seconds of one thread are the steadier
measure). Prints medians and the median per-round ratios.

Usage:  python3 benches/compare/cnn_torch.py [--spec FILE] [--rows N] [--rounds N] [--threads N]
(--threads: threads of both sides, torch.set_num_threads and RAYON_NUM_THREADS; default: all).
Needs numpy and torch (the CPU is used; CUDA wheels are fine). Builds and runs
`cargo run --release --example time_cnn`.
"""
import argparse
import json
import os
import subprocess
import tempfile
import time

import numpy as np

from safetensors_io import read_safetensors, write_safetensors

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def build_torch_model(spec, torch):
    """The network of a transferlens CNN spec as a torch.nn.Module whose state_dict names are
    the spec's tensor names (docs/cnn.md)."""
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride, groups, eps):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.gn1 = nn.GroupNorm(groups, cout, eps)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.gn2 = nn.GroupNorm(groups, cout, eps)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, 0, bias=False),
                                                nn.GroupNorm(groups, cout, eps))

        def forward(self, x):
            h = torch.relu(self.gn1(self.conv1(x)))
            h = self.gn2(self.conv2(h))
            return torch.relu(h + (x if self.downsample is None else self.downsample(x)))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.steps = []
            c, hw = spec["input"][0], spec["input"][1:]
            for i, layer in enumerate(spec["layers"]):
                kind = layer["type"]
                if kind == "conv":
                    k, s, p = layer["kernel"], layer.get("stride", 1), layer.get("padding", 0)
                    m = nn.Conv2d(c, layer["out"], k, s, p, bias=layer.get("bias", True))
                    c, hw = layer["out"], [(d + 2 * p - k) // s + 1 for d in hw]
                elif kind == "groupnorm":
                    m = nn.GroupNorm(layer["groups"], c, layer.get("eps", 1e-5))
                elif kind == "block":
                    s = layer.get("stride", 1)
                    m = Block(c, layer["out"], s, layer["groups"], layer.get("eps", 1e-5))
                    c, hw = layer["out"], [(d + 2 - 3) // s + 1 for d in hw]
                elif kind == "dense":
                    m = nn.Linear(c, layer["out"], bias=layer.get("bias", True))
                    c = layer["out"]
                elif kind == "relu":
                    m = nn.ReLU()
                elif kind == "avgpool":
                    k = layer["kernel"]
                    s = layer.get("stride", k)
                    m = nn.AvgPool2d(k, s)
                    hw = [(d - k) // s + 1 for d in hw]
                elif kind == "global_avgpool":
                    m = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
                    hw = [1, 1]
                elif kind == "flatten":
                    m = nn.Flatten(1)
                    c, hw = c * hw[0] * hw[1], [1, 1]
                else:
                    raise ValueError(f"layer {i}: unknown type {kind!r}")
                name = layer.get("name", f"_{kind}{i}")
                self.add_module(name, m)
                self.steps.append(name)

        def forward(self, x):
            for name in self.steps:
                x = getattr(self, name)(x)
            return x

    return Net()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", default=os.path.join(HERE, "cnn_spec.json"))
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    import torch

    env = dict(os.environ)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
        env["RAYON_NUM_THREADS"] = str(args.threads)

    spec = json.load(open(args.spec))
    c, h, w = spec["input"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.rows, c, h, w)).astype(np.float32)
    y = rng.integers(0, spec["classes"], args.rows)

    subprocess.run(["cargo", "build", "--release", "--example", "time_cnn", "-q"], cwd=ROOT, check=True)
    exe = os.path.join(ROOT, "target", "release", "examples", "time_cnn")
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data.safetensors")
        write_safetensors(data, [("x", x), ("y", y.astype(np.float32))])
        proc = subprocess.Popen([exe, args.spec, data, tmp], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                env=env)
        tl_loss, tl_error = (float(v) for v in proc.stdout.readline().split())
        init, step = read_safetensors(os.path.join(tmp, "init.safetensors")), read_safetensors(os.path.join(tmp, "step.safetensors"))

        model = build_torch_model(spec, torch)
        model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in init.items()}, strict=True)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        with torch.no_grad():
            logits = model(xt)
            loss = torch.nn.functional.cross_entropy(logits, yt).item()
            error = (logits.argmax(1) != yt).float().mean().item()
        print(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads; {os.cpu_count()} CPUs; "
              f"{args.rows} images {c}x{h}x{w}, spec {os.path.basename(args.spec)}")
        print(f"same network: loss {tl_loss:.6f} (transferlens) vs {loss:.6f} (PyTorch), "
              f"0-1 error {tl_error:.4f} vs {error:.4f}")

        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
        worst = max(float(np.max(np.abs(p.detach().numpy() - step[k])) / (np.max(np.abs(step[k])) + 1e-12))
                    for k, p in model.state_dict().items())
        print(f"one full-batch SGD step: largest difference in any tensor, relative to its max |value|: {worst:.2e}")

        def torch_epoch():
            net = build_torch_model(spec, torch)
            net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in init.items()})
            o = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
            perm = torch.from_numpy(rng.permutation(args.rows))
            time.sleep(0.3)
            start, cpu_start = time.perf_counter(), time.process_time()
            for i in range(0, args.rows, 64):
                idx = perm[i:i + 64]
                o.zero_grad()
                torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
                o.step()
            return time.perf_counter() - start, time.process_time() - cpu_start

        def tl_epoch():
            time.sleep(0.3)
            proc.stdin.write("run\n")
            proc.stdin.flush()
            wall, cpu = (float(v) for v in proc.stdout.readline().split())
            return wall, cpu

        torch_epoch(), tl_epoch()  # warm-up
        pt, tl = [], []
        for r in range(args.rounds):
            if r % 2:
                tl.append(tl_epoch())
                pt.append(torch_epoch())
            else:
                pt.append(torch_epoch())
                tl.append(tl_epoch())
        proc.stdin.close()
        proc.wait()
    pt, tl = np.array(pt), np.array(tl)
    for col, what in [(0, "wall-clock s"), (1, "CPU s")]:
        ratio = float(np.median(tl[:, col] / pt[:, col]))
        print(f"one epoch, batch 64, {what}: PyTorch {np.median(pt[:, col]):.3f}, "
              f"transferlens {np.median(tl[:, col]):.3f}, ratio {ratio:.2f} (goal <= 1.0), "
              f"medians of {args.rounds} rounds, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
