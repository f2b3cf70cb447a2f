"""PyTorch: tensors as CKA inputs through DLPack, and transferlens.torch.wrap_module."""

import copy

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="PyTorch is not installed (CI leaves out its large wheel); these tests run wherever torch imports"
)

import transferlens as tl  # noqa: E402
import transferlens.torch as tlt  # noqa: E402
from conftest import cka_reference  # noqa: E402


def test_cka_of_torch_tensors_in_every_dtype_and_layout():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(300, 20, generator=g, dtype=torch.float64)
    y = torch.tanh(x[:, :12] @ torch.randn(12, 7, generator=g, dtype=torch.float64))
    want = cka_reference(x.numpy(), y.numpy())
    assert tl.linear_cka(x, y) == pytest.approx(want, rel=1e-10)
    assert tl.linear_cka(x.float(), y.float()) == pytest.approx(want, rel=1e-5)
    for dtype, rel in ((torch.float16, 3e-3), (torch.bfloat16, 2e-2)):
        xr, yr = x.to(dtype), y.to(dtype)
        exact = cka_reference(xr.double().numpy(), yr.double().numpy())
        assert tl.linear_cka(xr, yr) == pytest.approx(exact, rel=rel), dtype
    wide = torch.randn(300, 30, generator=g, dtype=torch.float64)
    view = wide[:, 5:25]  # row-strided: read in place
    assert tl.linear_cka(view, y) == pytest.approx(cka_reference(view.numpy(), y.numpy()), rel=1e-10)
    transposed = wide.T.contiguous().T  # column-major: copied once
    assert tl.linear_cka(transposed, y) == pytest.approx(cka_reference(wide.numpy(), y.numpy()), rel=1e-10)
    m = tl.cka_matrix([x, view], [y, x])
    assert m.shape == (2, 2) and m[0, 1] == pytest.approx(1.0)


def test_tensors_that_need_grad_are_read_without_copy_of_the_graph():
    x = torch.randn(50, 4, requires_grad=True)
    with pytest.raises((RuntimeError, BufferError, TypeError)):
        tl.linear_cka(x, x)  # torch refuses to export a tensor that requires grad
    assert tl.linear_cka(x.detach(), x.detach()) == pytest.approx(1.0)


def _model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def _loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)


def _metrics(model, loader):
    loss, wrong, n = 0.0, 0, 0
    with torch.no_grad():
        for x, y in loader:
            out = model(x)
            loss += float(torch.nn.functional.cross_entropy(out, y, reduction="sum"))
            wrong += int((out.argmax(1) != y).sum())
            n += len(y)
    return loss / n, wrong / n


def test_barrier_between_two_torch_models():
    model_a, model_b, loader = _model(1), _model(2), _loader()
    live, evaluator = tlt.wrap_module(copy.deepcopy(model_a), loader)
    assert live.modules == {"0": ["0.weight", "0.bias"], "2": ["2.weight", "2.bias"]}
    a, b = tlt.params(model_a), tlt.params(model_b)
    lambdas = [0.0, 0.5, 1.0]
    curve = tl.interpolation_curve(evaluator, a, b, live, lambdas)
    for k, lam in enumerate(lambdas):
        mixed = copy.deepcopy(model_a)
        with torch.no_grad():
            for pm, pa, pb in zip(mixed.parameters(), model_a.parameters(), model_b.parameters()):
                pm.copy_((1 - lam) * pa + lam * pb)
        loss, error = _metrics(mixed, loader)
        assert curve["loss"][k] == pytest.approx(loss, rel=1e-5)
        assert curve["error"][k] == pytest.approx(error)
    result = tl.barrier(curve)
    assert result["value"] >= 0 and isinstance(result["same_basin"], bool)
    # The analysis wrote into the live model's own parameters: the last point is b.
    assert tl.distance(live, b)["total"] == pytest.approx(0.0, abs=1e-6)
    net = tl.network_criticality(evaluator, a, b, live, samples=2, repeats=1, alphas=3, alpha_steps=0)
    assert list(net["modules"]) == ["0", "2"]


def test_an_exception_in_the_model_propagates():
    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(5, 3)

        def forward(self, x):
            raise RuntimeError("shape bug in forward")

    model = Broken()
    live, evaluator = tlt.wrap_module(model, _loader())
    p = tlt.params(copy.deepcopy(model))
    with pytest.raises(RuntimeError, match="shape bug in forward"):
        tl.interpolation_curve(evaluator, p, p, live, [0.0])
