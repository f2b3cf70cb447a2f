"""transferlens: what is being transferred in transfer learning?

Linear CKA (exact on large data, streaming and mergeable), distances and interpolation in
weight space, performance barriers, module criticality and the PAC-Bayes bound, computed by the
transferlens Rust library. Arrays are numpy arrays or any object with ``__dlpack__`` (PyTorch,
JAX, CuPy), read in place when each row is contiguous; the GIL is released while the library
computes.

    import numpy as np, transferlens as tl
    x = np.random.default_rng(0).normal(size=(1000, 64))
    print(tl.linear_cka(x, 2 * x + 1))      # 1.0

Errors raise ``transferlens.Error`` subclasses, one per status of the library (``ShapeMismatch``,
``NonFinite``, ``DegenerateInput``, ``InvalidArgument``, ...). ``transferlens.torch`` wraps a
PyTorch module for the weight-space analyses.
"""

from ._native import (
    CallbackError,
    CkaAccumulator,
    DegenerateInput,
    DeviceError,
    DeviceUnavailable,
    Error,
    Evaluator,
    FormatError,
    InternalError,
    InvalidArgument,
    IoError,
    NonFinite,
    NotFound,
    NullArgument,
    OutOfMemory,
    ParamSet,
    ShapeMismatch,
    UnsupportedDtype,
    __version__,
    barrier,
    block_shuffle,
    cka_matrix,
    distance,
    interpolate,
    interpolation_curve,
    linear_cka,
    module_criticality,
    network_criticality,
    pac_bayes_bound,
    prediction_agreement,
    rewind_curve,
)

__all__ = [
    "CallbackError",
    "CkaAccumulator",
    "DegenerateInput",
    "DeviceError",
    "DeviceUnavailable",
    "Error",
    "Evaluator",
    "FormatError",
    "InternalError",
    "InvalidArgument",
    "IoError",
    "NonFinite",
    "NotFound",
    "NullArgument",
    "OutOfMemory",
    "ParamSet",
    "ShapeMismatch",
    "UnsupportedDtype",
    "__version__",
    "barrier",
    "block_shuffle",
    "cka_matrix",
    "distance",
    "interpolate",
    "interpolation_curve",
    "linear_cka",
    "module_criticality",
    "network_criticality",
    "pac_bayes_bound",
    "prediction_agreement",
    "rewind_curve",
]
