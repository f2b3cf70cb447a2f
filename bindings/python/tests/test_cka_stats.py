"""cka_statistics: the leave-one-out influence against CKA recomputed without each sample, the
jackknife interval against those recomputed values, the bootstrap interval and null against
their own resampled values, p-values under independence, the same
numbers as `tlens cka`, and the error paths."""

import itertools
import json
import subprocess

import numpy as np
import pytest

import transferlens as tl
from conftest import REPO, cka_reference


def related_pair(rng, n=40, p=6, q=4, noise=1.0):
    x = rng.normal(size=(n, p))
    y = x @ rng.normal(size=(p, q)) + noise * rng.normal(size=(n, q))
    x[3] *= 6.0  # one outlying sample, so the influence has a clear leader
    return x, y


@pytest.mark.parametrize("estimator", ["biased", "debiased"])
def test_influence_equals_cka_recomputed_without_each_sample(rng, estimator):
    x, y = related_pair(rng)
    debiased = estimator == "debiased"
    stats = tl.cka_statistics(x, y, bootstrap=0, null=0, influence=5, estimator=estimator)
    full = cka_reference(x, y, debiased)
    assert stats.cka == pytest.approx(full, rel=1e-12)
    assert stats.cka == pytest.approx(tl.linear_cka(x, y, estimator=estimator, backend="cpu"), rel=1e-12)
    keep = np.ones(len(x), dtype=bool)
    want = []
    for i in range(len(x)):
        keep[i] = False
        want.append(cka_reference(x[keep], y[keep], debiased) - full)
        keep[i] = True
    np.testing.assert_allclose(stats.deltas, want, rtol=1e-8, atol=1e-12)
    order = sorted(range(len(x)), key=lambda i: (-abs(want[i]), i))[:5]
    np.testing.assert_array_equal(stats.top_samples, order)
    np.testing.assert_array_equal(stats.top_deltas, stats.deltas[order])
    assert stats.top_samples[0] == 3  # the outlier
    assert stats.interval is None and stats.resamples is None and stats.p_value is None


@pytest.mark.parametrize("estimator", ["biased", "debiased"])
def test_the_jackknife_interval_is_the_default_and_follows_the_leave_one_out_values(rng, estimator):
    x, y = related_pair(rng, n=50)
    debiased = estimator == "debiased"
    stats = tl.cka_statistics(x, y, ci=0.9, null=0, influence=2, estimator=estimator)
    n, full = len(x), cka_reference(x, y, debiased)
    keep = np.ones(n, dtype=bool)
    left_out = []
    for i in range(n):
        keep[i] = False
        left_out.append(cka_reference(x[keep], y[keep], debiased))
        keep[i] = True
    left_out = np.array(left_out)
    centre = n * full - (n - 1) * left_out.mean()
    se = np.sqrt((n - 1) / n * np.sum((left_out - left_out.mean()) ** 2))
    z90 = 1.6448536269514722
    assert stats.interval_kind == "jackknife" and stats.level == 0.9
    assert stats.jackknife_estimate == pytest.approx(centre, rel=1e-9)
    assert stats.std_error == pytest.approx(se, rel=1e-9)
    assert stats.interval == pytest.approx((centre - z90 * se, centre + z90 * se), rel=1e-9)
    assert stats.resamples is None and stats.blocks is None and stats.bias_correction is None
    # The influence asked for in the same call comes from the same leave-one-out values.
    np.testing.assert_allclose(stats.deltas, left_out - full, rtol=1e-8, atol=1e-12)


def test_interval_and_null_follow_from_their_resampled_values(rng):
    x, y = related_pair(rng, n=200)
    stats = tl.cka_statistics(x, y, ci=0.9, bootstrap=500, null=99, influence=0, seed=11)
    assert stats.cka == pytest.approx(cka_reference(x, y), rel=1e-12)
    assert stats.level == 0.9 and stats.estimator == "biased"
    assert stats.resamples.shape == (500,) and stats.degenerate_resamples == 0
    assert (stats.blocks, stats.block_size) == (64, 4)  # 200 samples in 64 blocks of 3 or 4
    lower, upper = np.quantile(stats.resamples, [0.05, 0.95])
    assert stats.interval == pytest.approx((lower, upper), rel=1e-12)
    assert lower < stats.cka < upper
    assert stats.std_error == pytest.approx(np.std(stats.resamples, ddof=1), rel=1e-12)
    null = stats.null_values
    assert null.shape == (99,)
    assert stats.p_value == pytest.approx((1 + np.sum(null >= stats.cka)) / 100, rel=1e-15)
    assert stats.p_value == 0.01  # the relation is strong: no permutation reaches it
    assert stats.null_mean == pytest.approx(null.mean(), rel=1e-12)
    assert stats.null_std == pytest.approx(np.std(null, ddof=1), rel=1e-12)
    assert stats.deltas is None and stats.top_samples is None
    # The seed decides everything; another seed draws other resamples.
    again = tl.cka_statistics(x, y, ci=0.9, bootstrap=500, null=99, influence=0, seed=11)
    np.testing.assert_array_equal(again.resamples, stats.resamples)
    np.testing.assert_array_equal(again.null_values, stats.null_values)
    other = tl.cka_statistics(x, y, ci=0.9, bootstrap=500, null=99, influence=0, seed=12)
    assert not np.array_equal(other.resamples, stats.resamples)


def test_each_null_value_is_the_cka_of_a_row_permutation(rng):
    # At n = 5 there are 120 orders of y's rows; every null value must be one of their CKAs.
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(5, 2))
    possible = np.array([cka_reference(x, y[list(p)]) for p in itertools.permutations(range(5))])
    stats = tl.cka_statistics(x, y, bootstrap=0, null=50, influence=0, seed=3)
    for v in stats.null_values:
        assert np.min(np.abs(possible - v)) < 1e-12, v


def test_the_null_shows_the_biased_estimators_small_sample_bias(rng):
    x, y = rng.normal(size=(32, 16)), rng.normal(size=(32, 16))  # independent
    biased = tl.cka_statistics(x, y, bootstrap=0, null=200, influence=0, seed=1)
    debiased = tl.cka_statistics(x, y, bootstrap=0, null=200, influence=0, seed=1, estimator="debiased")
    assert biased.null_mean > 0.3, biased.null_mean
    assert abs(debiased.null_mean) < 0.05, debiased.null_mean


def test_p_values_are_uniform_under_independence():
    rng = np.random.default_rng(2024)
    permutations, trials = 19, 300
    p = np.array(
        [
            tl.cka_statistics(
                rng.normal(size=(20, 3)), rng.normal(size=(20, 2)), bootstrap=0, null=permutations, influence=0, seed=s
            ).p_value
            for s in range(trials)
        ]
    )
    # p takes the values k / 20, k = 1..20, each with probability 1/20 under the null.
    assert set(np.round(p * (permutations + 1))) <= set(range(1, permutations + 2))
    mean_sd = np.sqrt((20**2 - 1) / 12 / 20**2 / trials)
    assert abs(p.mean() - 0.525) < 4 * mean_sd, p.mean()
    rate = np.mean(p <= 0.05)
    assert abs(rate - 0.05) < 4 * np.sqrt(0.05 * 0.95 / trials), rate


def test_float32_inputs_and_the_cka_alone(rng):
    x, y = related_pair(rng)
    stats = tl.cka_statistics(x.astype(np.float32), y.astype(np.float32), bootstrap=100, null=10, influence=3)
    assert stats.cka == pytest.approx(cka_reference(x.astype(np.float32), y.astype(np.float32)), rel=1e-5)
    only = tl.cka_statistics(x, y, bootstrap=0, null=0, influence=0)
    assert only.cka == pytest.approx(cka_reference(x, y), rel=1e-12)
    assert only.interval is None and only.p_value is None and only.top_samples is None
    assert "cka=" in repr(stats) and "interval" in repr(stats)


def test_error_paths_raise_clear_exceptions(rng):
    x, y = related_pair(rng)
    with pytest.raises(tl.ShapeMismatch, match="rows|samples"):
        tl.cka_statistics(x, y[:-1])
    with pytest.raises(tl.ShapeMismatch, match="2-D"):
        tl.cka_statistics(x[None], y)
    bad = x.copy()
    bad[5, 2] = np.nan
    with pytest.raises(tl.NonFinite):
        tl.cka_statistics(bad, y)
    with pytest.raises(tl.NonFinite):
        tl.cka_statistics(bad, y, bootstrap=0, null=0, influence=4)
    for ci in (0.0, 1.0, 1.5, -0.1, float("nan")):
        with pytest.raises(tl.InvalidArgument, match="level"):
            tl.cka_statistics(x, y, ci=ci)
    with pytest.raises(tl.InvalidArgument, match="resamples"):
        tl.cka_statistics(x, y, bootstrap=1)
    with pytest.raises(tl.InvalidArgument, match="blocks"):
        tl.cka_statistics(x, y, interval="percentile", blocks=len(x) + 1)
    with pytest.raises(tl.InvalidArgument, match="leave-one-out"):
        tl.cka_statistics(x, y, interval="jackknife", bootstrap=100)
    with pytest.raises(tl.InvalidArgument, match="no interval"):
        tl.cka_statistics(x, y, interval="bca", bootstrap=0)
    with pytest.raises(tl.InvalidArgument, match="estimator"):
        tl.cka_statistics(x, y, estimator="unbiased")
    with pytest.raises(tl.InvalidArgument, match="percentile"):
        tl.cka_statistics(x, y, interval="basic")
    with pytest.raises(tl.DegenerateInput):
        tl.cka_statistics(x[:2], y[:2], bootstrap=0, null=0, influence=1)
    with pytest.raises(tl.DegenerateInput):
        tl.cka_statistics(np.ones_like(x), y)
    with pytest.raises(tl.UnsupportedDtype):
        tl.cka_statistics(x.astype(np.int64), y)
    with pytest.raises(OverflowError):
        tl.cka_statistics(x, y, bootstrap=-1)


TLENS = REPO / "target" / "release" / "tlens"


@pytest.mark.skipif(not TLENS.exists(), reason="the tlens binary is not built (cargo build --release)")
@pytest.mark.parametrize("kind", ["jackknife", "percentile", "bca"])
def test_the_same_statistics_as_tlens_cka(rng, tmp_path, kind):
    x, y = related_pair(rng, n=300)
    tl.ParamSet.from_arrays({"h": x}).save(tmp_path / "a.safetensors")
    tl.ParamSet.from_arrays({"h": y}).save(tmp_path / "b.safetensors")
    options = dict(ci=0.9, null=100, influence=4, seed=3, interval=kind)
    if kind != "jackknife":
        options["bootstrap"] = 500
    flags = [f"--{k}={v}" for k, v in options.items()]
    run = subprocess.run(
        [TLENS, "cka", tmp_path / "a.safetensors", tmp_path / "b.safetensors", "--json", *flags],
        capture_output=True,
        text=True,
        check=True,
    )
    (pair,) = json.loads(run.stdout)["pairs"]
    stats = tl.cka_statistics(x, y, **options)
    assert stats.cka == pytest.approx(pair["cka"], rel=1e-12)
    interval = pair["interval"]
    assert stats.interval == (interval["lower"], interval["upper"])
    assert stats.std_error == interval["std_error"]
    assert stats.interval_kind == interval["kind"]
    if kind == "jackknife":
        assert stats.jackknife_estimate == interval["estimate"]
        assert stats.bias_correction is None and stats.blocks is None
    else:
        assert stats.bias_correction == interval["bias_correction"]
        assert stats.acceleration == interval["acceleration"]  # None (JSON null) for percentile
        assert (stats.blocks, stats.block_size) == (interval["blocks"], interval["block_size"])
    assert (stats.p_value, stats.null_mean, stats.null_std) == (
        pair["null"]["p_value"],
        pair["null"]["mean"],
        pair["null"]["std"],
    )
    assert stats.top_samples.tolist() == [s["sample"] for s in pair["influence"]]
    assert stats.top_deltas.tolist() == [s["delta"] for s in pair["influence"]]
