"""Type stubs of transferlens._native (the Rust extension); see each function's docstring."""

from os import PathLike
from typing import Any, Callable, Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

__version__: str

ArrayLike = Any  # a numpy array, an object with __dlpack__, or a nested sequence of floats
Layers = Union[ArrayLike, Sequence[ArrayLike]]
Estimator = Literal["biased", "debiased"]
BackendName = Literal["auto", "cpu", "cuda"]
MetricName = Literal["loss", "error", "accuracy"]
Module = Union[str, int]
Path = Union[str, "PathLike[str]"]

class Error(Exception):
    status: int
    status_name: str

class NullArgument(Error): ...
class InvalidArgument(Error): ...
class ShapeMismatch(Error): ...
class UnsupportedDtype(Error): ...
class DegenerateInput(Error): ...
class NonFinite(Error): ...
class IoError(Error): ...
class FormatError(Error): ...
class NotFound(Error): ...
class DeviceUnavailable(Error): ...
class DeviceError(Error): ...
class CallbackError(Error): ...
class InternalError(Error): ...
class OutOfMemory(Error): ...

def linear_cka(x: ArrayLike, y: ArrayLike, estimator: Estimator = "biased", backend: BackendName = "auto") -> float: ...
def cka_matrix(
    xs: Layers, ys: Layers, estimator: Estimator = "biased", backend: BackendName = "auto"
) -> npt.NDArray[np.float64]: ...

class CkaStatistics:
    cka: float
    estimator: Estimator
    level: Optional[float]
    interval: Optional[Tuple[float, float]]
    interval_kind: Optional[Literal["jackknife", "percentile", "bca"]]
    jackknife_estimate: Optional[float]
    bias_correction: Optional[float]
    acceleration: Optional[float]
    std_error: Optional[float]
    resamples: Optional[npt.NDArray[np.float64]]
    degenerate_resamples: Optional[int]
    blocks: Optional[int]
    block_size: Optional[int]
    p_value: Optional[float]
    null_mean: Optional[float]
    null_std: Optional[float]
    null_values: Optional[npt.NDArray[np.float64]]
    deltas: Optional[npt.NDArray[np.float64]]
    top_samples: Optional[npt.NDArray[np.int64]]
    top_deltas: Optional[npt.NDArray[np.float64]]

def cka_statistics(
    x: ArrayLike,
    y: ArrayLike,
    *,
    ci: float = 0.95,
    bootstrap: Optional[int] = None,
    null: int = 200,
    influence: int = 10,
    seed: int = 0,
    estimator: Estimator = "biased",
    blocks: int = 0,
    interval: Optional[Literal["jackknife", "percentile", "bca"]] = None,
) -> CkaStatistics: ...

class CkaAccumulator:
    def __init__(self, n_x: int, n_y: int, estimator: Estimator = "biased", backend: BackendName = "auto") -> None: ...
    def update(self, xs: Layers, ys: Layers) -> None: ...
    def merge(self, other: CkaAccumulator) -> None: ...
    def result(self) -> npt.NDArray[np.float64]: ...
    def state(self) -> npt.NDArray[np.float64]: ...
    @staticmethod
    def from_state(state: npt.NDArray[np.float64], backend: BackendName = "auto") -> CkaAccumulator: ...
    @property
    def count(self) -> int: ...
    @property
    def estimator(self) -> Estimator: ...

class ParamSet:
    @staticmethod
    def load(path: Path) -> ParamSet: ...
    @staticmethod
    def load_checkpoint(path: Path) -> ParamSet: ...
    @staticmethod
    def from_arrays(arrays: Mapping[str, ArrayLike]) -> ParamSet: ...
    def save(self, path: Path) -> None: ...
    @property
    def modules(self) -> Dict[str, List[str]]: ...
    @property
    def tensor_names(self) -> List[str]: ...
    @property
    def numel(self) -> int: ...
    def set_grouping(self, spec: str) -> None: ...
    def copy(self) -> ParamSet: ...
    def __getitem__(self, name: str) -> npt.NDArray[Any]: ...
    def __contains__(self, name: str) -> bool: ...
    def __len__(self) -> int: ...

def distance(a: ParamSet, b: ParamSet) -> Dict[str, Any]: ...
def interpolate(a: ParamSet, b: ParamSet, lam: float) -> ParamSet: ...

class Evaluator:
    def __init__(self, function: Callable[[ParamSet], Mapping[str, float]]) -> None: ...
    @property
    def function(self) -> Callable[[ParamSet], Mapping[str, float]]: ...

Curve = Dict[str, npt.NDArray[np.float64]]

def interpolation_curve(
    evaluator: Evaluator,
    a: ParamSet,
    b: ParamSet,
    live: ParamSet,
    lambdas: Optional[Sequence[float]] = None,
    *,
    module: Optional[Module] = None,
) -> Curve: ...
def barrier(curve: Mapping[str, Any], *, metric: MetricName = "error", tolerance: float = 0.01) -> Dict[str, Any]: ...
def module_criticality(
    evaluator: Evaluator,
    init: Optional[ParamSet],
    final: Optional[ParamSet],
    live: ParamSet,
    module: Module,
    *,
    checkpoints: Optional[Sequence[ParamSet]] = None,
    preset: Literal["default", "reference"] = "default",
    metric: MetricName = ...,
    eps_relative: Literal[0, 1, 2] = ...,
    eps: float = ...,
    noise_relative: bool = ...,
    noise_scale: float = ...,
    refined: bool = ...,
    alphas: int = ...,
    sigmas: int = ...,
    tolerance: float = ...,
    alpha_steps: int = ...,
    samples: int = ...,
    seed: int = ...,
    sigma_floor: float = ...,
    confidence: float = ...,
    repeats: int = ...,
) -> Dict[str, Any]: ...
def network_criticality(
    evaluator: Evaluator,
    init: Optional[ParamSet],
    final: Optional[ParamSet],
    live: ParamSet,
    *,
    checkpoints: Optional[Sequence[ParamSet]] = None,
    preset: Literal["default", "reference"] = "default",
    metric: MetricName = ...,
    eps_relative: Literal[0, 1, 2] = ...,
    eps: float = ...,
    noise_relative: bool = ...,
    noise_scale: float = ...,
    refined: bool = ...,
    alphas: int = ...,
    sigmas: int = ...,
    tolerance: float = ...,
    alpha_steps: int = ...,
    samples: int = ...,
    seed: int = ...,
    sigma_floor: float = ...,
    confidence: float = ...,
    repeats: int = ...,
) -> Dict[str, Any]: ...
def rewind_curve(
    evaluator: Evaluator, init: ParamSet, final: ParamSet, live: ParamSet, module: Module, alphas: Sequence[float]
) -> Curve: ...
def pac_bayes_bound(
    network: Mapping[str, Any], m: int, *, delta: float = 0.05, test_error: Optional[float] = None, n_test: int = 0
) -> Dict[str, Any]: ...
def prediction_agreement(a: Sequence[int], b: Sequence[int], truth: Sequence[int]) -> Dict[str, Any]: ...
def block_shuffle(images: npt.NDArray[np.float32], block: int, seed: int = 0) -> None: ...

class PermSpec:
    @staticmethod
    def infer(params: ParamSet) -> PermSpec: ...
    @staticmethod
    def from_json(text: str) -> PermSpec: ...
    def to_json(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def groups(self) -> List[Dict[str, Any]]: ...
    def check(self, params: ParamSet) -> None: ...
    def untouched(self, params: ParamSet) -> List[str]: ...
    def __len__(self) -> int: ...

Alignment = Dict[str, Any]  # {"perms": List[NDArray[int64]], "passes": int, "converged": bool}

def align_weights(spec: PermSpec, a: ParamSet, b: ParamSet, *, seed: int = 0, max_passes: int = 100) -> Alignment: ...
def align_activations(
    spec: PermSpec, acts_a: Layers, acts_b: Layers, *, backend: BackendName = "auto"
) -> Alignment: ...

class ActivationMatcher:
    def __init__(self, spec: PermSpec, backend: BackendName = "auto") -> None: ...
    def update(self, acts_a: Layers, acts_b: Layers) -> None: ...
    def correlations(self) -> List[npt.NDArray[np.float64]]: ...
    def finish(self) -> Alignment: ...

def apply_permutation(spec: PermSpec, b: ParamSet, perms: Sequence[Sequence[int]]) -> ParamSet: ...
def layerwise_curve(
    evaluator: Evaluator,
    a: ParamSet,
    b: ParamSet,
    live: ParamSet,
    lambdas: Optional[Sequence[float]] = None,
    *,
    module: Optional[Module] = None,
    first: Optional[int] = None,
    last: Optional[int] = None,
) -> Curve: ...
def layerwise_barrier(
    evaluator: Evaluator,
    a: ParamSet,
    b: ParamSet,
    live: ParamSet,
    lambdas: Optional[Sequence[float]] = None,
    *,
    module: Optional[Module] = None,
    first: Optional[int] = None,
    last: Optional[int] = None,
    metric: MetricName = "error",
    tolerance: float = 0.01,
) -> Dict[str, Any]: ...
