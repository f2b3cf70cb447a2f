#!/usr/bin/env python3
"""An evaluation server for `tlens --eval-server`, in numpy alone.

It evaluates the MLP that transferlens builds in (dense layers fc1 ... fcN stored as
fcL.weight [out, in] and fcL.bias [out], ReLU between layers, softmax cross-entropy) on a data
set kept in a safetensors file holding x (F32 [n, dim]) and y (I64 [n]), in float64:

    tlens curve a.safetensors b.safetensors --eval-server 'python3 examples/eval_server_numpy.py data.safetensors'

The protocol: one {"checkpoint": PATH} line in, one {"loss": L, "error": E} line out, or
{"failure": MESSAGE} when the checkpoint cannot be evaluated. Progress and warnings go to stderr.
"""
import json
import struct
import sys

import numpy as np

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}


def load(path):
    """Every tensor of a safetensors file, as numpy arrays."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry["dtype"] not in DTYPES:
            raise ValueError(f"tensor {name}: dtype {entry['dtype']} is not supported here")
        start, end = entry["data_offsets"]
        array = np.frombuffer(data[start:end], dtype=DTYPES[entry["dtype"]])
        tensors[name] = array.reshape(entry["shape"])
    return tensors


def evaluate(params, x, y):
    """Mean cross-entropy and 0-1 error of the MLP `params` on (x, y)."""
    layers = sorted(int(k[2:-len(".weight")]) for k in params if k.startswith("fc") and k.endswith(".weight"))
    if not layers:
        raise ValueError("the checkpoint holds no fcL.weight tensor")
    h = x.astype(np.float64)
    for i, layer in enumerate(layers):
        w = params[f"fc{layer}.weight"].astype(np.float64)
        b = params[f"fc{layer}.bias"].astype(np.float64)
        h = h @ w.T + b
        if i + 1 < len(layers):
            h = np.maximum(h, 0.0)
    top = h.max(axis=1, keepdims=True)
    log_sum_exp = top[:, 0] + np.log(np.exp(h - top).sum(axis=1))
    loss = float(np.mean(log_sum_exp - h[np.arange(len(y)), y]))
    error = float(np.mean(h.argmax(axis=1) != y))
    return loss, error


def main():
    data = load(sys.argv[1])
    x, y = data["x"], data["y"].astype(np.int64)
    for line in sys.stdin:
        path = json.loads(line)["checkpoint"]
        try:
            loss, error = evaluate(load(path), x, y)
            answer = {"loss": loss, "error": error}
        except Exception as e:  # the server stays up; tlens reports the failure
            answer = {"failure": f"{type(e).__name__}: {e}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
