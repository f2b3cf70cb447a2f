"""transferlens: what is being transferred in transfer learning?

Linear CKA (exact on large data, streaming and mergeable) with bootstrap intervals, permutation
nulls and per-sample influence, distances and interpolation in weight space, performance
barriers, permutation alignment and layer-wise connectivity, module criticality and the
PAC-Bayes bound, computed by the transferlens Rust library. Arrays are numpy arrays or any
object with ``__dlpack__`` (PyTorch, JAX, CuPy), read in place when each row is contiguous; the
GIL is released while the library computes.

    import numpy as np, transferlens as tl
    x = np.random.default_rng(0).normal(size=(1000, 64))
    print(tl.linear_cka(x, 2 * x + 1))      # 1.0

Errors raise ``transferlens.Error`` subclasses, one per status of the library (``ShapeMismatch``,
``NonFinite``, ``DegenerateInput``, ``InvalidArgument``, ...). ``transferlens.torch`` wraps a
PyTorch module for the weight-space analyses.
"""

from ._native import (
    ActivationMatcher,
    CallbackError,
    CkaAccumulator,
    CkaStatistics,
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
    PermSpec,
    ShapeMismatch,
    UnsupportedDtype,
    __version__,
    align_activations,
    align_weights,
    apply_permutation,
    barrier,
    block_shuffle,
    cka_matrix,
    cka_statistics,
    distance,
    interpolate,
    interpolation_curve,
    layerwise_barrier,
    layerwise_curve,
    linear_cka,
    module_criticality,
    network_criticality,
    pac_bayes_bound,
    prediction_agreement,
    rewind_curve,
)

__all__ = [
    "ActivationMatcher",
    "CallbackError",
    "CkaAccumulator",
    "CkaStatistics",
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
    "PermSpec",
    "ShapeMismatch",
    "UnsupportedDtype",
    "__version__",
    "align_activations",
    "align_weights",
    "apply_permutation",
    "barrier",
    "block_shuffle",
    "cka_matrix",
    "cka_statistics",
    "distance",
    "interpolate",
    "interpolation_curve",
    "layerwise_barrier",
    "layerwise_curve",
    "linear_cka",
    "module_criticality",
    "network_criticality",
    "pac_bayes_bound",
    "prediction_agreement",
    "rewind_curve",
]
