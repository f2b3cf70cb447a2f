"""Writes cnn_reference.safetensors: the built-in CNN's logits computed independently in numpy.

Two networks of awkward sizes (odd and unequal H and W, stride 2 with padding, a residual block
with a downsample and one without, GroupNorm with several groups, average pooling with a stride
smaller than its kernel, flatten and global average pooling). Weights, biases and GroupNorm
affine parameters are random f32; the forward pass runs in float64 from those f32 values, with
convolutions written as an explicit im2col (one shifted window per filter tap) and a tensor
product, as torch.nn.Conv2d / GroupNorm / AvgPool2d / Linear define them.

Per network `netN`, the file holds the weights under their PyTorch names prefixed `netN/`, the
inputs `netN/data.x` (n x C x H x W, f32), the expected logits `netN/data.logits` (f64), and the
spec under the metadata key `netN.spec`.

Run: python cnn_reference.py (needs numpy only); the file is written beside this script.
"""
import json
import os
import struct

import numpy as np

rng = np.random.default_rng(20261202)


def conv2d(x, w, b, stride, pad):
    n, c, h, wd = x.shape
    o, _, k, _ = w.shape
    xp = np.zeros((n, c, h + 2 * pad, wd + 2 * pad))
    xp[:, :, pad:pad + h, pad:pad + wd] = x
    oh = (h + 2 * pad - k) // stride + 1
    ow = (wd + 2 * pad - k) // stride + 1
    cols = np.zeros((n, c, k, k, oh, ow))
    for ky in range(k):
        for kx in range(k):
            cols[:, :, ky, kx] = xp[:, :, ky:ky + stride * (oh - 1) + 1:stride, kx:kx + stride * (ow - 1) + 1:stride]
    y = np.einsum("ncijpq,ocij->nopq", cols, w)
    if b is not None:
        y = y + b[None, :, None, None]
    return y


def groupnorm(x, groups, gamma, beta, eps):
    n, c, h, w = x.shape
    g = x.reshape(n, groups, -1)
    mean = g.mean(axis=2, keepdims=True)
    var = g.var(axis=2, keepdims=True)
    xh = ((g - mean) / np.sqrt(var + eps)).reshape(n, c, h, w)
    return xh * gamma[None, :, None, None] + beta[None, :, None, None]


def avgpool(x, k, s):
    n, c, h, w = x.shape
    oh, ow = (h - k) // s + 1, (w - k) // s + 1
    y = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            y[:, :, i, j] = x[:, :, i * s:i * s + k, j * s:j * s + k].mean(axis=(2, 3))
    return y


def relu(x):
    return np.maximum(x, 0.0)


class Net:
    def __init__(self, spec):
        self.spec = spec
        self.tensors = {}

    def param(self, name, shape, kind):
        if kind == "weight":
            fan_in = int(np.prod(shape[1:]))
            v = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        elif kind == "gamma":
            v = 1.0 + 0.3 * rng.standard_normal(shape)
        else:
            v = 0.2 * rng.standard_normal(shape)
        v = v.astype(np.float32)
        self.tensors[name] = v
        return v.astype(np.float64)

    def forward(self, x):
        for layer in self.spec["layers"]:
            t = layer["type"]
            if t == "conv":
                name, c = layer["name"], x.shape[1]
                k = layer["kernel"]
                w = self.param(name + ".weight", (layer["out"], c, k, k), "weight")
                b = self.param(name + ".bias", (layer["out"],), "bias") if layer.get("bias", True) else None
                x = conv2d(x, w, b, layer.get("stride", 1), layer.get("padding", 0))
            elif t == "groupnorm":
                c = x.shape[1]
                g = self.param(layer["name"] + ".weight", (c,), "gamma")
                b = self.param(layer["name"] + ".bias", (c,), "bias")
                x = groupnorm(x, layer["groups"], g, b, layer.get("eps", 1e-5))
            elif t == "relu":
                x = relu(x)
            elif t == "avgpool":
                x = avgpool(x, layer["kernel"], layer.get("stride", layer["kernel"]))
            elif t == "global_avgpool":
                x = x.mean(axis=(2, 3))
            elif t == "flatten":
                x = x.reshape(x.shape[0], -1)
            elif t == "dense":
                w = self.param(layer["name"] + ".weight", (layer["out"], x.shape[1]), "weight")
                b = self.param(layer["name"] + ".bias", (layer["out"],), "bias") if layer.get("bias", True) else None
                x = x @ w.T + (b if b is not None else 0.0)
            elif t == "block":
                n, s, gr, eps, c = layer["name"], layer.get("stride", 1), layer["groups"], layer.get("eps", 1e-5), x.shape[1]
                o = layer["out"]
                w1 = self.param(n + ".conv1.weight", (o, c, 3, 3), "weight")
                g1 = self.param(n + ".gn1.weight", (o,), "gamma")
                b1 = self.param(n + ".gn1.bias", (o,), "bias")
                w2 = self.param(n + ".conv2.weight", (o, o, 3, 3), "weight")
                g2 = self.param(n + ".gn2.weight", (o,), "gamma")
                b2 = self.param(n + ".gn2.bias", (o,), "bias")
                y = relu(groupnorm(conv2d(x, w1, None, s, 1), gr, g1, b1, eps))
                y = groupnorm(conv2d(y, w2, None, 1, 1), gr, g2, b2, eps)
                if s != 1 or c != o:
                    wd = self.param(n + ".downsample.0.weight", (o, c, 1, 1), "weight")
                    gd = self.param(n + ".downsample.1.weight", (o,), "gamma")
                    bd = self.param(n + ".downsample.1.bias", (o,), "bias")
                    short = groupnorm(conv2d(x, wd, None, s, 0), gr, gd, bd, eps)
                else:
                    short = x
                x = relu(y + short)
            else:
                raise ValueError(t)
        return x


NETS = [
    {
        "input": [3, 9, 7],
        "classes": 5,
        "layers": [
            {"type": "conv", "name": "conv1", "out": 6, "kernel": 3, "stride": 2, "padding": 1},
            {"type": "groupnorm", "name": "gn1", "groups": 3},
            {"type": "relu"},
            {"type": "block", "name": "layer1", "out": 6, "groups": 2},
            {"type": "block", "name": "layer2", "out": 8, "stride": 2, "groups": 4},
            {"type": "avgpool", "kernel": 2, "stride": 1},
            {"type": "flatten"},
            {"type": "dense", "name": "fc", "out": 5},
        ],
    },
    {
        "input": [2, 11, 8],
        "classes": 3,
        "layers": [
            {"type": "conv", "name": "stem", "out": 4, "kernel": 2, "bias": False},
            {"type": "avgpool", "kernel": 3, "stride": 2},
            {"type": "relu"},
            {"type": "block", "name": "res", "out": 6, "stride": 1, "groups": 3, "eps": 1e-3},
            {"type": "conv", "name": "head", "out": 5, "kernel": 3, "stride": 2, "padding": 2},
            {"type": "global_avgpool"},
            {"type": "dense", "name": "fc", "out": 3, "bias": False},
        ],
    },
]

tensors = {}
metadata = {}
for i, spec in enumerate(NETS):
    net = Net(spec)
    n = 5
    x = rng.standard_normal((n, *spec["input"])).astype(np.float32)
    logits = net.forward(x.astype(np.float64))
    for name, v in net.tensors.items():
        tensors[f"net{i}/{name}"] = v
    tensors[f"net{i}/data.x"] = x
    tensors[f"net{i}/data.logits"] = logits
    metadata[f"net{i}.spec"] = json.dumps(spec)

header = {"__metadata__": metadata}
blobs = []
offset = 0
for name, v in tensors.items():
    data = np.ascontiguousarray(v).tobytes()
    dtype = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64"}[v.dtype]
    header[name] = {"dtype": dtype, "shape": list(v.shape), "data_offsets": [offset, offset + len(data)]}
    blobs.append(data)
    offset += len(data)
text = json.dumps(header).encode()
text += b" " * (-(8 + len(text)) % 8)
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cnn_reference.safetensors")
with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(text)))
    f.write(text)
    for b in blobs:
        f.write(b)
