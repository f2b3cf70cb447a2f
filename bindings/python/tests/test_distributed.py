"""docs/distributed.md's torch.distributed code, run as written on ranks simulated by threads:
a numpy stand-in for torch and torch.distributed (broadcast, all_reduce, all_gather_object) lets
the test run where torch is not installed. The all-reduced CKA equals the single-process matrix
and is the same on every rank; the module reports gathered from the ranks equal
network_criticality's."""

import re
import sys
import threading
import types

import numpy as np
import pytest

import transferlens as tl
from conftest import REPO
from test_analyses import FAST, Mlp


def doc_blocks():
    """The Python blocks of the torch.distributed section: the CKA helper, its use, the
    criticality helper and its use."""
    doc = (REPO / "docs" / "distributed.md").read_text()
    section = doc.split("## Python: torch.distributed", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 3, "the section's Python blocks changed: update this test"
    return blocks


class Tensor(np.ndarray):
    """A numpy array with the few tensor methods the helpers call."""

    def numpy(self):
        return np.asarray(self)

    def to(self, device):
        return self

    def cpu(self):
        return self


class World:
    """Collectives over `size` threads, each a rank: every call is a rendezvous of all ranks."""

    def __init__(self, size):
        self.size = size
        self.rendezvous = threading.Barrier(size, timeout=60)
        self.slots = [None] * size
        self.local = threading.local()

    def rank(self):
        return self.local.rank

    def exchange(self, value):
        """Every rank's value, in rank order, on every rank."""
        self.slots[self.rank()] = value
        self.rendezvous.wait()
        values = list(self.slots)
        self.rendezvous.wait()  # no rank writes the next call's value before all have read
        return values

    def broadcast(self, tensor, src):
        tensor[...] = self.exchange(np.array(tensor))[src]

    def all_reduce(self, tensor):
        values = self.exchange(np.array(tensor))
        total = values[0].copy()
        for v in values[1:]:
            total += v  # in rank order: every rank gets the same sums
        tensor[...] = total

    def all_gather_object(self, out, obj):
        out[:] = self.exchange(obj)

    def modules(self):
        """Stand-ins for `torch` and `torch.distributed` bound to this world."""
        dist = types.ModuleType("torch.distributed")
        dist.broadcast = self.broadcast
        dist.all_reduce = self.all_reduce
        dist.all_gather_object = self.all_gather_object
        dist.get_rank = self.rank
        dist.get_world_size = lambda: self.size
        torch = types.ModuleType("torch")
        torch.distributed = dist
        torch.from_numpy = lambda array: array.view(Tensor)
        return torch, dist

    def run(self, work):
        """work(rank) on every rank at once; the results in rank order."""
        results, errors = [None] * self.size, []

        def body(rank):
            self.local.rank = rank
            try:
                results[rank] = work(rank)
            except BaseException as e:  # noqa: BLE001 -- reported below, with the others released
                errors.append(e)
                self.rendezvous.abort()

        threads = [threading.Thread(target=body, args=(r,)) for r in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results


@pytest.fixture
def world(monkeypatch):
    """Three simulated ranks; `import torch` in the doc's code finds the stand-ins."""
    w = World(3)
    torch, dist = w.modules()
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch.distributed", dist)
    return w


@pytest.fixture
def sharded_layers(rng):
    """Two x and two y layers of 500 samples (one with a large offset), cut into shards of
    different sizes, each a list of batches."""
    n = 500
    x1 = rng.normal(size=(n, 7)) + 1000.0
    x2 = np.tanh((x1 - 1000.0) @ rng.normal(size=(7, 5)))
    y1 = (x1 - 1000.0)[:, :4] * 2 + rng.normal(size=(n, 4))
    y2 = rng.normal(size=(n, 3))
    xs, ys = [x1, x2], [y1, y2]
    shards = [(0, 120), (120, 121), (121, 500)]  # one shard of a single sample
    batches = [[(lo, min(lo + 64, hi)) for lo in range(lo, hi, 64)] for lo, hi in shards]
    return xs, ys, batches


@pytest.mark.parametrize("estimator", ["biased", "debiased"])
def test_all_reduced_cka_is_the_single_process_matrix_on_every_rank(world, sharded_layers, estimator):
    xs, ys, batches = sharded_layers
    helper, use, _ = doc_blocks()
    use = use.replace('estimator="debiased"', f"estimator={estimator!r}")
    assert f"estimator={estimator!r}" in use

    def rank_work(rank):
        scope = {"my_batches": [([x[a:b] for x in xs], [y[a:b] for y in ys]) for a, b in batches[rank]]}
        exec(helper, scope)
        exec(use, scope)
        return scope["cka"], scope["acc"].state()

    results = world.run(rank_work)
    want = tl.cka_matrix(xs, ys, estimator=estimator)
    for cka, _ in results:
        assert cka.shape == (2, 2)
        np.testing.assert_allclose(cka, want, rtol=1e-10, atol=1e-10)
        assert np.array_equal(cka, results[0][0])  # the same bits on every rank
    # The common shift matters: summing the ranks' own states without it misses the bound by far.
    states = [state for _, state in results]
    assert len({len(s) for s in states}) == 1
    n_layers = 4
    moments_at = 5 + n_layers + int(states[0][5 : 5 + n_layers].sum())
    naive = states[0].copy()
    naive[moments_at:] = sum(s[moments_at:] for s in states)
    assert np.max(np.abs(tl.CkaAccumulator.from_state(naive).result() - want)) > 1e-6


def test_the_cka_helper_refuses_another_state_layout(world, sharded_layers, monkeypatch):
    xs, ys, _ = sharded_layers
    helper = doc_blocks()[0]
    acc = tl.CkaAccumulator(2, 2)
    acc.update([x[:10] for x in xs], [y[:10] for y in ys])

    class NewerLayout:
        def state(self):
            s = acc.state()
            s[1] = 2.0
            return s

    scope = {}
    exec(helper, scope)
    with pytest.raises(ValueError, match="layout version 2.0"):
        world.run(lambda rank: scope["all_reduce_cka"](NewerLayout()))


def test_module_reports_gathered_from_the_ranks_equal_network_criticality(world):
    # A draw whose modules are all critical (with the shared fixture's seed both are 0 here).
    rng = np.random.default_rng(0)
    model = Mlp(rng)
    a, b = Mlp.init(rng), Mlp.init(rng)
    init, final = tl.ParamSet.from_arrays(a), tl.ParamSet.from_arrays(b)
    imports, _, block = doc_blocks()
    block = block.replace("samples=4, seed=0", "**FAST")
    assert "**FAST" in block

    def rank_work(rank):
        weights = {k: v.copy() for k, v in b.items()}  # each rank's own live model
        live = tl.ParamSet.from_arrays(weights)
        evaluator = tl.Evaluator(lambda params: model.metrics(weights))
        scope = {"evaluator": evaluator, "init": init, "final": final, "live": live, "FAST": FAST}
        exec(imports, scope)  # the first block: the imports (and the CKA helper)
        exec(block, scope)
        return scope["modules"], scope["total"], scope["total_spread"]

    results = world.run(rank_work)
    weights = {k: v.copy() for k, v in b.items()}
    net = tl.network_criticality(
        tl.Evaluator(lambda params: model.metrics(weights)), init, final, tl.ParamSet.from_arrays(weights), **FAST
    )
    for modules, total, total_spread in results:
        assert list(modules) == list(net["modules"]) == ["fc1", "fc2"]
        assert modules == net["modules"]
        assert total == net["total"]
        assert total_spread == pytest.approx(net["total_spread"], rel=1e-12)
    # Values that differ between modules and repeats: the comparisons are not of zeros.
    assert all(r["value"] > 0 for r in net["modules"].values()) and net["total_spread"] > 0
