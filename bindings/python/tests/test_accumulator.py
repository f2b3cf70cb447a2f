"""CkaAccumulator: batches split across accumulators and merged give the full-data CKA."""

import numpy as np
import pytest

import transferlens as tl
from conftest import cka_reference


@pytest.fixture
def layers(rng):
    n = 300
    x1 = rng.normal(size=(n, 6)) + 100.0  # a large offset: the shifted moments keep precision
    x2 = np.tanh((x1 - 100.0) @ rng.normal(size=(6, 4)))
    y1 = x1[:, :3] * 2 + rng.normal(size=(n, 3))
    return [x1, x2], [y1]


@pytest.mark.parametrize("estimator", ["biased", "debiased"])
def test_split_across_batches_and_merged_equals_full_data(layers, estimator):
    xs, ys = layers
    full = tl.cka_matrix(xs, ys, estimator=estimator)
    want = np.array([[cka_reference(x, y, debiased=estimator == "debiased") for y in ys] for x in xs])
    np.testing.assert_allclose(full, want, rtol=1e-9)

    cuts = [0, 17, 100, 101, 230, 300]  # batches of different sizes, one of a single row
    parts = []
    for lo, hi in zip(cuts, cuts[1:]):
        acc = tl.CkaAccumulator(2, 1, estimator=estimator)
        acc.update([x[lo:hi] for x in xs], [y[lo:hi] for y in ys])
        parts.append(acc)
    merged = parts[3]
    for other in parts[:3] + parts[4:]:
        merged.merge(other)
    assert merged.count == 300
    np.testing.assert_allclose(merged.result(), full, rtol=1e-9)

    one = tl.CkaAccumulator(2, 1, estimator=estimator)
    for lo, hi in zip(cuts, cuts[1:]):
        one.update([x[lo:hi] for x in xs], ys[0][lo:hi])  # a single array stands for a list of one
    np.testing.assert_allclose(one.result(), full, rtol=1e-9)


def test_state_round_trip_and_merge_of_states(layers):
    xs, ys = layers
    a, b = tl.CkaAccumulator(2, 1), tl.CkaAccumulator(2, 1)
    a.update([x[:120] for x in xs], [y[:120] for y in ys])
    b.update([x[120:] for x in xs], [y[120:] for y in ys])
    sa, sb = a.state(), b.state()
    assert sa.dtype == np.float64 and sa.shape == sb.shape  # gatherable: same length on every rank
    total = tl.CkaAccumulator.from_state(sa)
    total.merge(tl.CkaAccumulator.from_state(sb))
    np.testing.assert_allclose(total.result(), tl.cka_matrix(xs, ys), rtol=1e-9)
    assert total.count == 300 and total.estimator == "biased"


def test_accumulator_errors(layers):
    xs, ys = layers
    acc = tl.CkaAccumulator(2, 1)
    with pytest.raises(tl.InvalidArgument, match="not fixed"):
        acc.state()
    with pytest.raises(tl.InvalidArgument):
        tl.CkaAccumulator(0, 1)
    with pytest.raises(tl.InvalidArgument, match="state marker"):
        tl.CkaAccumulator.from_state(np.zeros(10))
    acc.update([x[:50] for x in xs], [y[:50] for y in ys])
    state = acc.state()
    with pytest.raises(tl.InvalidArgument, match="values follow the widths"):
        tl.CkaAccumulator.from_state(state[:-1])
    newer = state.copy()
    newer[1] = 2.0
    with pytest.raises(tl.InvalidArgument, match="layout version"):
        tl.CkaAccumulator.from_state(newer)
    fractional = state.copy()
    fractional[5] = 2.5
    with pytest.raises(tl.InvalidArgument, match="width"):
        tl.CkaAccumulator.from_state(fractional)
    with pytest.raises(tl.ShapeMismatch):
        acc.merge(tl.CkaAccumulator(1, 1))
    with pytest.raises(tl.ShapeMismatch):
        acc.update([xs[0][:10]], [ys[0][:10]])
    with pytest.raises(tl.DegenerateInput):
        tl.CkaAccumulator(1, 1).result()
