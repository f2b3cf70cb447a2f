#!/usr/bin/env python3
"""An evaluation server for `tlens --eval-server`, in PyTorch: adapt build_model and the loader.

    tlens curve a.safetensors b.safetensors --eval-server 'python3 examples/eval_server_torch.py'

tlens sends {"checkpoint": PATH} lines on stdin; each is answered with one
{"loss": L, "error": E} line on stdout (or {"failure": MESSAGE}). Logs go to stderr.
"""
import json
import sys

import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader


def build_model():  # your architecture, built once
    import torchvision
    return torchvision.models.resnet18(num_classes=10)


def build_loader():  # your evaluation set
    import torchvision
    import torchvision.transforms as T
    data = torchvision.datasets.CIFAR10("data", train=False, transform=T.ToTensor())
    return DataLoader(data, batch_size=512)


device = "cuda" if torch.cuda.is_available() else "cpu"
model, loader = build_model().to(device).eval(), build_loader()
for line in sys.stdin:
    try:
        model.load_state_dict(load_file(json.loads(line)["checkpoint"]), strict=True)
        loss, wrong, n = 0.0, 0, 0
        with torch.no_grad():
            for x, y in loader:
                logits = model(x.to(device))
                y = y.to(device)
                loss += torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
                wrong += (logits.argmax(1) != y).sum().item()
                n += len(y)
        answer = {"loss": loss / n, "error": wrong / n}
    except Exception as e:
        answer = {"failure": f"{type(e).__name__}: {e}"}
    print(json.dumps(answer), flush=True)
