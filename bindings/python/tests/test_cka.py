"""linear_cka, cka_matrix and errors, against numpy references and the repository's CKA
reference vectors."""

import tracemalloc

import numpy as np
import pytest

import transferlens as tl
from conftest import REPO, DlpackOnly, cka_reference, read_safetensors


def test_reference_vectors_to_1e9():
    tensors, meta = read_safetensors(REPO / "tests" / "data" / "cka_reference.safetensors")
    cases = sorted({name.split(".")[0] for name in tensors})
    assert len(cases) == 7
    for case in cases:
        x, y = tensors[f"{case}.x"], tensors[f"{case}.y"]
        for estimator in ("biased", "debiased"):
            want = float(meta[f"{case}.{estimator}"])
            got = tl.linear_cka(x, y, estimator=estimator, backend="cpu")
            assert got == pytest.approx(want, rel=1e-9), (case, meta[f"{case}.description"], estimator)


@pytest.mark.parametrize("estimator", ["biased", "debiased"])
def test_random_layers_match_numpy(rng, estimator):
    x = rng.normal(size=(60, 7))
    y = np.tanh(x @ rng.normal(size=(7, 5))) + 0.1 * rng.normal(size=(60, 5))
    want = cka_reference(x, y, debiased=estimator == "debiased")
    assert tl.linear_cka(x, y, estimator=estimator) == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("dtype,rel", [(np.float32, 1e-5), (np.float16, 2e-3)])
def test_narrow_dtypes(rng, dtype, rel):
    x = rng.normal(size=(200, 16))
    y = x @ rng.normal(size=(16, 9)) + rng.normal(size=(200, 9))
    xr, yr = x.astype(dtype), y.astype(dtype)
    want = cka_reference(xr, yr)
    assert tl.linear_cka(xr, yr) == pytest.approx(want, rel=rel)


def test_cka_matrix_shape_and_values(rng):
    xs = [rng.normal(size=(50, p)) for p in (3, 8)]
    ys = [rng.normal(size=(50, q)) + np.hstack([xs[0], xs[0]])[:, :q] for q in (2, 4, 6)]
    got = tl.cka_matrix(xs, ys)
    assert got.shape == (2, 3) and got.dtype == np.float64
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            assert got[i, j] == pytest.approx(cka_reference(x, y), rel=1e-10)


def test_layouts_and_inputs_agree(rng):
    base = rng.normal(size=(80, 12))
    y = base[:, :6] ** 2
    want = cka_reference(base[:, 2:9], y)
    inputs = {
        "row-strided view": base[:, 2:9],
        "column-major copy": np.asfortranarray(base[:, 2:9]),
        "every other row": np.repeat(base[:, 2:9], 2, axis=0)[::2],
        "read-only": np.require(base[:, 2:9], requirements="C"),
        "nested list": base[:, 2:9].tolist(),
        "DLPack (numpy's __dlpack__)": DlpackOnly(np.ascontiguousarray(base[:, 2:9])),
        "DLPack row-strided": DlpackOnly(base[:, 2:9]),
        "DLPack column-major (gathered once)": DlpackOnly(np.asfortranarray(base[:, 2:9])),
    }
    inputs["read-only"].setflags(write=False)
    for what, x in inputs.items():
        assert tl.linear_cka(x, y) == pytest.approx(want, rel=1e-10), what
    # a negative row stride: copied once (the samples reversed on both sides give the same CKA)
    assert tl.linear_cka(DlpackOnly(base[::-1, 2:9]), y[::-1]) == pytest.approx(want, rel=1e-10)
    assert tl.linear_cka(base[::-1, 2:9], y[::-1]) == pytest.approx(want, rel=1e-10)


def _peak_bytes_during(f):
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        f()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_row_strided_inputs_are_not_copied_other_layouts_once(rng):
    # numpy reports its allocations to tracemalloc; the library's own memory is not counted.
    big = rng.normal(size=(4000, 300))
    y = rng.normal(size=(4000, 10))
    view = big[:, :250]  # rows contiguous, 300 elements apart
    layer_bytes = 4000 * 250 * 8
    assert _peak_bytes_during(lambda: tl.linear_cka(view, y)) < layer_bytes / 10
    transposed = np.ascontiguousarray(big[:, :250].T).T  # column-major
    assert layer_bytes <= _peak_bytes_during(lambda: tl.linear_cka(transposed, y)) < 2.5 * layer_bytes


def test_dlpack_from_jax_if_installed(rng):
    jnp = pytest.importorskip("jax.numpy", reason="JAX is not installed (CI installs it only when it installs quickly)")
    x = rng.normal(size=(40, 5)).astype(np.float32)
    y = x[:, :3] + 0.5 * rng.normal(size=(40, 3)).astype(np.float32)
    want = cka_reference(x, y)
    assert tl.linear_cka(jnp.asarray(x), jnp.asarray(y)) == pytest.approx(want, rel=1e-5)
    assert tl.linear_cka(jnp.asarray(x, dtype=jnp.bfloat16), jnp.asarray(y)) == pytest.approx(
        cka_reference(np.asarray(jnp.asarray(x, dtype=jnp.bfloat16), dtype=np.float64), y), rel=1e-4
    )


def test_errors_are_typed_and_carry_the_message(rng):
    x = rng.normal(size=(10, 3))
    assert issubclass(tl.ShapeMismatch, tl.Error) and issubclass(tl.Error, Exception)
    with pytest.raises(tl.ShapeMismatch, match="rows") as e:
        tl.linear_cka(x, rng.normal(size=(9, 3)))
    assert e.value.status == 3 and e.value.status_name == "TL_STATUS_SHAPE_MISMATCH"
    with pytest.raises(tl.DegenerateInput, match="zero variance"):
        tl.linear_cka(x, np.ones((10, 2)))
    with pytest.raises(tl.DegenerateInput, match="at least 4 samples"):
        tl.linear_cka(x[:3], x[:3], estimator="debiased")
    bad = x.copy()
    bad[4, 1] = np.nan
    with pytest.raises(tl.NonFinite):
        tl.linear_cka(bad, x)
    with pytest.raises(tl.InvalidArgument, match="estimator"):
        tl.linear_cka(x, x, estimator="unbiased")
    with pytest.raises(tl.InvalidArgument, match="backend"):
        tl.linear_cka(x, x, backend="tpu")
    with pytest.raises(tl.UnsupportedDtype, match="int64"):
        tl.linear_cka(np.arange(30).reshape(10, 3), x)
    with pytest.raises(tl.ShapeMismatch, match="2-D"):
        tl.linear_cka(x[:, 0], x)
    with pytest.raises(tl.InvalidArgument, match="at least one layer"):
        tl.cka_matrix([], [x])
    with pytest.raises(tl.UnsupportedDtype, match="DLPack dtype"):
        tl.linear_cka(DlpackOnly(np.arange(30).reshape(10, 3)), x)
    with pytest.raises(tl.ShapeMismatch, match="2-D"):
        tl.linear_cka(DlpackOnly(np.zeros((10, 3, 1))), x)
