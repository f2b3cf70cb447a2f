"""Shared helpers: numpy references the package is checked against."""

import json
import struct
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[3]


def cka_reference(x, y, debiased=False):
    """Linear CKA in float64 from the published formulas (Kornblith et al. 2019; the debiased
    HSIC of Song et al. 2012), independently of the library."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)

    def hsic(k, l):
        n = k.shape[0]
        if not debiased:
            h = np.eye(n) - 1.0 / n
            return np.sum((h @ k @ h) * (h @ l @ h))
        k, l = k.copy(), l.copy()
        np.fill_diagonal(k, 0)
        np.fill_diagonal(l, 0)
        return (np.sum(k * l) + k.sum() * l.sum() / ((n - 1) * (n - 2)) - 2 / (n - 2) * k.sum(0) @ l.sum(0)) / (
            n * (n - 3)
        )

    if debiased:
        x = x - x.mean(0)
        y = y - y.mean(0)
    k, l = x @ x.T, y @ y.T
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def read_safetensors(path):
    """Tensors (as float64 numpy arrays) and metadata of a safetensors file of F64 tensors."""
    raw = Path(path).read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    meta = header.pop("__metadata__", {})
    data = raw[8 + length :]
    tensors = {}
    for name, info in header.items():
        assert info["dtype"] == "F64", name
        start, end = info["data_offsets"]
        tensors[name] = np.frombuffer(data[start:end], dtype="<f8").reshape(info["shape"])
    return tensors, meta


@pytest.fixture
def rng():
    return np.random.default_rng(7)


class DlpackOnly:
    """Exposes an array only through the DLPack protocol, as PyTorch, JAX or CuPy do."""

    def __init__(self, array):
        self._array = array

    def __dlpack__(self, **kwargs):
        return self._array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._array.__dlpack_device__()
