"""CUDA tensors through DLPack: CKA on the tensors' own device, and parameter sets in device
memory. Runs where torch sees a CUDA device (scripts/gpu-check.sh runs it on the GPU machine)."""

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed; the CUDA tests need a CUDA torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device visible to torch: scripts/gpu-check.sh runs these on a GPU", allow_module_level=True)

import transferlens as tl  # noqa: E402


def _pair(dtype=torch.float32):
    g = torch.Generator(device="cuda").manual_seed(5)
    x = torch.randn(6000, 384, device="cuda", generator=g)
    y = torch.relu(x[:, :256] @ torch.randn(256, 200, device="cuda", generator=g)) + 0.1 * torch.randn(
        6000, 200, device="cuda", generator=g
    )
    return x.to(dtype), y.to(dtype)


def test_cka_of_cuda_tensors_equals_the_cpu_value():
    x, y = _pair()
    want = tl.linear_cka(x.cpu(), y.cpu(), backend="cpu")
    assert tl.linear_cka(x, y) == pytest.approx(want, rel=1e-4)
    assert tl.linear_cka(x, y, estimator="debiased") == pytest.approx(
        tl.linear_cka(x.cpu(), y.cpu(), estimator="debiased", backend="cpu"), rel=1e-4
    )
    view = x[:, 100:300]  # row-strided, read in place on the device
    assert tl.linear_cka(view, y) == pytest.approx(tl.linear_cka(view.cpu(), y.cpu(), backend="cpu"), rel=1e-4)
    m = tl.cka_matrix([x, view], [y, x.cpu()])  # device and host layers together
    assert m[0, 0] == pytest.approx(want, rel=1e-4) and m[0, 1] == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_cuda_dtypes(dtype):
    x, y = _pair(dtype)
    want = tl.linear_cka(x.cpu(), y.cpu(), backend="cpu")
    assert tl.linear_cka(x, y) == pytest.approx(want, rel=1e-3)


def test_pending_work_on_another_stream_is_ordered_before_the_read():
    x, _ = _pair()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        y = (x @ x.T @ x)[:, :300].contiguous()  # long enough to still run when CKA starts
        got = tl.linear_cka(x, y)
    torch.cuda.synchronize()
    assert got == pytest.approx(tl.linear_cka(x.cpu(), y.cpu(), backend="cpu"), rel=1e-4)


def test_cuda_errors():
    x, y = _pair()
    with pytest.raises(tl.InvalidArgument, match="backend='cpu'"):
        tl.linear_cka(x, y, backend="cpu")
    with pytest.raises(tl.InvalidArgument, match="contiguous"):
        tl.linear_cka(x.T, y[:384])


def test_param_sets_in_device_memory():
    g = torch.Generator(device="cuda").manual_seed(1)
    a = {"fc.weight": torch.randn(64, 32, device="cuda", generator=g), "fc.bias": torch.randn(64, device="cuda", generator=g)}
    b = {k: v + 0.5 * torch.randn(v.shape, device="cuda", generator=g) for k, v in a.items()}
    pa, pb = tl.ParamSet.from_arrays(a), tl.ParamSet.from_arrays(b)
    want = float(torch.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in a)))
    assert tl.distance(pa, pb)["total"] == pytest.approx(want, rel=1e-5)
