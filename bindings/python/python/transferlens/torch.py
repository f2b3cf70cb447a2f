"""PyTorch models in the weight-space analyses.

``params(model)`` wraps a module's parameters in place as a ``ParamSet`` (names as in
``model.named_parameters()``); ``wrap_module(model, loader)`` returns that live set together with
an ``Evaluator`` that runs the model on a DataLoader. An analysis writes each point's weights
into the live set, which *are* the model's parameters, and the evaluator runs the model:

    import copy, transferlens as tl, transferlens.torch as tlt
    live, evaluator = tlt.wrap_module(copy.deepcopy(model_a), test_loader)
    curve = tl.interpolation_curve(evaluator, tlt.params(model_a), tlt.params(model_b), live)
    print(tl.barrier(curve))

The parameters must be contiguous and on the CPU or one CUDA device. A model with batch-norm
layers should recompute their running statistics inside the evaluator (a pass over training
batches in train mode) before evaluating, since interpolated weights invalidate them: pass
``recompute=fn(model)``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import torch

from ._native import Evaluator, ParamSet


def params(model: torch.nn.Module) -> ParamSet:
    """The module's parameters as a ParamSet over their memory, in place (no copy)."""
    return ParamSet.from_arrays({name: p.detach() for name, p in model.named_parameters()})


def _default_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(output, target, reduction="sum")


def wrap_module(
    model: torch.nn.Module,
    loader: Any,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = _default_loss,
    recompute: Optional[Callable[[torch.nn.Module], None]] = None,
) -> Tuple[ParamSet, Evaluator]:
    """A live ParamSet over ``model``'s parameters and an Evaluator that runs ``model``.

    The evaluator puts the model in eval mode and, without gradients, runs it on every
    ``(inputs, targets)`` batch of ``loader`` (on the device of the model's parameters). It
    reports the mean loss (``loss_fn(output, targets)`` returns the batch's summed loss;
    default: summed cross-entropy) and the 0-1 error of ``output.argmax(1)``. ``recompute``,
    when given, is called with the model before each evaluation (e.g. to refresh batch-norm
    statistics).
    """
    live = params(model)
    device = next(model.parameters()).device

    def evaluate(_params: ParamSet) -> dict:
        if recompute is not None:
            recompute(model)
        model.eval()
        loss, wrong, count = 0.0, 0, 0
        with torch.no_grad():
            for inputs, targets in loader:
                inputs, targets = inputs.to(device), targets.to(device)
                output = model(inputs)
                loss += float(loss_fn(output, targets))
                wrong += int((output.argmax(1) != targets).sum())
                count += len(targets)
        if count == 0:
            raise ValueError("the loader yielded no samples")
        return {"loss": loss / count, "error": wrong / count}

    return live, Evaluator(evaluate)
