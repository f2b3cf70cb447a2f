"""Python evaluators and the analyses: curves, barriers, criticality, rewind, the bound, and
the data tools; exceptions raised inside an evaluator propagate unchanged."""

import traceback

import numpy as np
import pytest

import transferlens as tl


class Mlp:
    """A 5-8-3 ReLU network in numpy over weights held in a dict of arrays."""

    def __init__(self, rng, n=240):
        self.x = rng.normal(size=(n, 5))
        teacher = rng.normal(size=(5, 3))
        self.y = np.argmax(self.x @ teacher + 0.3 * rng.normal(size=(n, 3)), axis=1)

    @staticmethod
    def init(rng, scale=1.0):
        return {
            "fc1.weight": scale * rng.normal(size=(8, 5)),
            "fc1.bias": scale * 0.1 * rng.normal(size=8),
            "fc2.weight": scale * rng.normal(size=(3, 8)),
            "fc2.bias": np.zeros(3),
        }

    def metrics(self, w):
        h = np.maximum(self.x @ w["fc1.weight"].T + w["fc1.bias"], 0)
        logits = h @ w["fc2.weight"].T + w["fc2.bias"]
        logits = logits - logits.max(1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        loss = -logp[np.arange(len(self.y)), self.y].mean()
        error = float(np.mean(np.argmax(logits, 1) != self.y))
        return {"loss": float(loss), "error": error}


@pytest.fixture
def setup(rng):
    model = Mlp(rng)
    a, b = Mlp.init(rng), Mlp.init(rng)
    weights = {k: v.copy() for k, v in a.items()}  # the live model's memory
    live = tl.ParamSet.from_arrays(weights)
    evaluator = tl.Evaluator(lambda params: model.metrics(weights))
    return model, a, b, weights, live, evaluator


def test_interpolation_curve_and_barrier_match_numpy(setup):
    model, a, b, weights, live, evaluator = setup
    pa, pb = tl.ParamSet.from_arrays(a), tl.ParamSet.from_arrays(b)
    lambdas = [0.0, 0.25, 0.5, 0.75, 1.0]
    curve = tl.interpolation_curve(evaluator, pa, pb, live, lambdas)
    np.testing.assert_array_equal(curve["lambdas"], lambdas)
    for k, lam in enumerate(lambdas):
        want = model.metrics({n: (1 - lam) * a[n] + lam * b[n] for n in a})
        assert curve["loss"][k] == pytest.approx(want["loss"], rel=1e-12)
        assert curve["error"][k] == want["error"]
        assert curve["accuracy"][k] == 1 - want["error"]
    chord = (1 - np.array(lambdas)) * curve["loss"][0] + np.array(lambdas) * curve["loss"][-1]
    excess = curve["loss"] - chord
    got = tl.barrier(curve, metric="loss", tolerance=0.0)
    assert got["value"] == pytest.approx(max(excess.max(), 0.0), rel=1e-12)
    assert got["start"] == curve["loss"][0] and got["end"] == curve["loss"][-1]
    assert got["same_basin"] == (got["value"] <= 0.0)
    # the library's default grid, and one module moved
    assert len(tl.interpolation_curve(evaluator, pa, pb, live)["lambdas"]) == 50
    moved = tl.interpolation_curve(evaluator, pa, pb, live, [0.5], module="fc1")
    want = model.metrics({n: (0.5 * a[n] + 0.5 * b[n]) if n.startswith("fc1") else b[n] for n in a})
    assert moved["loss"][0] == pytest.approx(want["loss"], rel=1e-12)


def test_the_evaluator_reads_the_live_set_it_is_given(setup):
    model, a, b, weights, live, _ = setup
    seen = []

    def evaluate(params):
        np.testing.assert_array_equal(params["fc1.weight"], weights["fc1.weight"])
        seen.append(params)
        return model.metrics(weights)

    tl.interpolation_curve(tl.Evaluator(evaluate), tl.ParamSet.from_arrays(a), tl.ParamSet.from_arrays(b), live, [0.5])
    with pytest.raises(tl.InvalidArgument, match="has returned"):
        seen[0].modules  # the view ends with the call

    def regroup(params):
        params.set_grouping("tensor")
        return model.metrics(weights)

    with pytest.raises(tl.InvalidArgument, match="read-only"):
        tl.interpolation_curve(tl.Evaluator(regroup), tl.ParamSet.from_arrays(a), tl.ParamSet.from_arrays(b), live, [0.5])


class Boom(Exception):
    pass


def test_an_exception_in_the_evaluator_propagates_unchanged(setup):
    model, a, b, weights, live, _ = setup
    raised = []

    def evaluate_and_fail(params):
        if len(raised) == 0 and params is not None:
            err = Boom("the model crashed")
            raised.append(err)
            raise err
        return model.metrics(weights)

    with pytest.raises(Boom) as e:
        tl.interpolation_curve(tl.Evaluator(evaluate_and_fail), tl.ParamSet.from_arrays(a), tl.ParamSet.from_arrays(b), live)
    assert e.value is raised[0]
    assert "evaluate_and_fail" in [f.name for f in traceback.extract_tb(e.value.__traceback__)]

    raised.clear()
    with pytest.raises(Boom):
        tl.network_criticality(tl.Evaluator(evaluate_and_fail), tl.ParamSet.from_arrays(a), tl.ParamSet.from_arrays(b), live)


def test_evaluator_contract_errors(setup):
    model, a, b, weights, live, _ = setup
    pa, pb = tl.ParamSet.from_arrays(a), tl.ParamSet.from_arrays(b)
    with pytest.raises(tl.CallbackError, match="'loss' and 'error'"):
        tl.interpolation_curve(tl.Evaluator(lambda p: {"loss": 1.0}), pa, pb, live)
    with pytest.raises(tl.NonFinite):
        tl.interpolation_curve(tl.Evaluator(lambda p: {"loss": float("nan"), "error": 0.0}), pa, pb, live)
    with pytest.raises(TypeError):
        tl.Evaluator(3)
    with pytest.raises(tl.CallbackError, match="accuracy"):
        tl.interpolation_curve(tl.Evaluator(lambda p: {"loss": 1.0, "error": 0.0, "accuracy": "high"}), pa, pb, live)
    with pytest.raises(tl.InvalidArgument, match="metric"):
        tl.barrier({"lambdas": [0.0, 1.0], "error": [0.0, 0.0]}, metric="auc")
    with pytest.raises(tl.InvalidArgument, match="lambda"):
        tl.interpolation_curve(tl.Evaluator(lambda p: model.metrics(weights)), pa, pb, live, [float("inf")])


FAST = dict(samples=3, repeats=2, alphas=3, alpha_steps=1, metric="loss", eps=0.05, seed=11)


def test_criticality_network_equals_its_modules_and_the_bound_its_formula(setup):
    model, a, b, weights, live, evaluator = setup
    init, final = tl.ParamSet.from_arrays(a), tl.ParamSet.from_arrays(b)
    net = tl.network_criticality(evaluator, init, final, live, **FAST)
    assert list(net["modules"]) == ["fc1", "fc2"]
    for name, report in net["modules"].items():
        one = tl.module_criticality(evaluator, init, final, live, name, **FAST)
        assert one == report  # the same seeds give the same search
        assert report["numel"] == sum(a[k].size for k in a if k.startswith(name + "."))
        assert report["value"] >= 0 and len(report["repeats"]) == 2
        assert report["per_parameter"] == pytest.approx(report["value"] / report["numel"])
    assert net["final_metric"] == pytest.approx(model.metrics(b)["loss"], rel=1e-12)
    assert net["eps"] == pytest.approx(net["final_metric"] + 0.05, rel=1e-12)
    m, delta = 240, 0.05
    bound = tl.pac_bayes_bound(net, m, delta=delta, test_error=0.1, n_test=100)
    if np.isfinite(net["pac_bayes_kl"]):
        want = net["joint_expected"] + np.sqrt((net["pac_bayes_kl"] / 4 + np.log(m / delta)) / (m - 1))
        assert bound["bound"] == pytest.approx(want, rel=1e-12)
    assert bound["held_out"] == pytest.approx(0.1 + np.sqrt(np.log(1 / delta) / 200), rel=1e-12)
    assert bound["vacuous"] == (bound["bound"] > 1)
    # checkpoints: the straight path through its midpoint is the same path
    mid = tl.interpolate(init, final, 0.5)
    via = tl.module_criticality(evaluator, None, None, live, "fc2", checkpoints=[init, mid, final], **FAST)
    assert via["value"] >= 0


def test_criticality_options_are_checked(setup):
    _, a, b, _, live, evaluator = setup
    init, final = tl.ParamSet.from_arrays(a), tl.ParamSet.from_arrays(b)
    with pytest.raises(tl.InvalidArgument, match="samples"):
        tl.module_criticality(evaluator, init, final, live, 0, samples=0)
    with pytest.raises(tl.InvalidArgument, match="eps_relative"):
        tl.module_criticality(evaluator, init, final, live, 0, eps_relative=7)
    with pytest.raises(TypeError, match="sigma_flor"):
        tl.module_criticality(evaluator, init, final, live, 0, sigma_flor=0.1)
    with pytest.raises(tl.NotFound):
        tl.module_criticality(evaluator, init, final, live, "fc9")
    with pytest.raises(tl.NotFound, match="out of range"):
        tl.module_criticality(evaluator, init, final, live, 2)
    with pytest.raises(tl.InvalidArgument, match="test_error and n_test"):
        tl.pac_bayes_bound({"pac_bayes_kl": 1.0, "joint_expected": 0.1}, 100, test_error=0.1)
    with pytest.raises(tl.InvalidArgument, match="checkpoints"):
        tl.network_criticality(evaluator, init, None, live)
    with pytest.raises(tl.InvalidArgument, match="preset"):
        tl.network_criticality(evaluator, init, final, live, preset="public")


def test_rewind_curve_matches_numpy(setup):
    model, a, b, weights, live, evaluator = setup
    alphas = [1.0, 0.5, 0.0]
    curve = tl.rewind_curve(evaluator, tl.ParamSet.from_arrays(a), tl.ParamSet.from_arrays(b), live, "fc1", alphas)
    for k, alpha in enumerate(alphas):
        w = {n: ((1 - alpha) * a[n] + alpha * b[n]) if n.startswith("fc1") else b[n] for n in a}
        assert curve["loss"][k] == pytest.approx(model.metrics(w)["loss"], rel=1e-12)


def test_prediction_agreement_matches_numpy(rng):
    truth = rng.integers(0, 4, size=500)
    a = np.where(rng.random(500) < 0.7, truth, rng.integers(0, 4, size=500))
    b = np.where(rng.random(500) < 0.6, truth, rng.integers(0, 4, size=500))
    g = tl.prediction_agreement(a, b, truth)
    ra, rb = a == truth, b == truth
    want = [ra & rb, ra & ~rb, ~ra & rb, ~ra & ~rb & (a == b), ~ra & ~rb & (a != b)]
    names = ["both_right", "only_a", "only_b", "both_wrong_same", "both_wrong_different"]
    for k, (name, mask) in enumerate(zip(names, want)):
        assert g[name] == mask.sum()
        np.testing.assert_array_equal(g["category"] == k, mask)
    with pytest.raises(tl.ShapeMismatch):
        tl.prediction_agreement(a[:3], b, truth)


def test_block_shuffle_permutes_blocks_alike_in_place(rng):
    images = rng.normal(size=(3, 2, 8, 8)).astype(np.float32)
    original = images.copy()
    tl.block_shuffle(images, 8, seed=1)
    np.testing.assert_array_equal(images, original)  # one block: the identity
    tl.block_shuffle(images, 4, seed=2)
    assert not np.array_equal(images, original)
    blocks = lambda im: im.reshape(3, 2, 2, 4, 2, 4).transpose(0, 2, 4, 1, 3, 5).reshape(3, 4, -1)
    got, was = blocks(images), blocks(original)
    perm = [next(j for j in range(4) if np.array_equal(got[0, i], was[0, j])) for i in range(4)]
    assert sorted(perm) == [0, 1, 2, 3]
    for n in range(3):
        np.testing.assert_array_equal(got[n], was[n][perm])  # the same permutation for each image
    with pytest.raises(tl.InvalidArgument):
        tl.block_shuffle(images, 3)
