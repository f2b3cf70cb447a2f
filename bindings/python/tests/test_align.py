"""Permutation alignment: a known permutation recovered exactly (a dense chain, the built-in
CNN's inferred spec, the specs of docs/align.md: a ResNet block and a GroupNorm partition, and
one for a transformer MLP block), the same function after alignment, activation matching,
layer-wise curves against numpy, the barrier falling after alignment, and the error paths."""

import json
import re
import struct

import numpy as np
import pytest

import transferlens as tl
from conftest import REPO

WIDTHS = [5, 16, 12, 3]  # inputs, two hidden layers, logits


def random_mlp(rng, dtype=np.float64):
    """The built-in MLP's tensor names: fc{l}.weight (out x in) and fc{l}.bias."""
    weights = {}
    for l, (n_in, n_out) in enumerate(zip(WIDTHS[:-1], WIDTHS[1:]), start=1):
        weights[f"fc{l}.weight"] = (rng.normal(size=(n_out, n_in)) / np.sqrt(n_in)).astype(dtype)
        weights[f"fc{l}.bias"] = (0.1 * rng.normal(size=n_out)).astype(dtype)
    return weights


def hidden(w, x):
    """The activations of each hidden layer (after the ReLU), and the logits."""
    acts, h = [], x
    for l in range(1, len(WIDTHS)):
        h = h @ w[f"fc{l}.weight"].T + w[f"fc{l}.bias"]
        if l < len(WIDTHS) - 1:
            h = np.maximum(h, 0)
            acts.append(h)
    return acts, h


def permuted(w, perms):
    """w with hidden layer l's units reordered: new unit j is old unit perms[l][j]."""
    out = {k: v.copy() for k, v in w.items()}
    for l, p in enumerate(perms, start=1):
        out[f"fc{l}.weight"] = out[f"fc{l}.weight"][p]
        out[f"fc{l}.bias"] = out[f"fc{l}.bias"][p]
        out[f"fc{l + 1}.weight"] = out[f"fc{l + 1}.weight"][:, p]
    return out


def params(w):
    return tl.ParamSet.from_arrays({k: np.ascontiguousarray(v) for k, v in w.items()})


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_weight_matching_recovers_a_known_permutation_exactly(rng, dtype):
    a = random_mlp(rng, dtype)
    shuffle = [rng.permutation(n) for n in WIDTHS[1:-1]]
    b = permuted(a, shuffle)
    pa, pb = params(a), params(b)
    spec = tl.PermSpec.infer(pa)
    assert spec.source == "a chain of dense layers" and len(spec) == 2
    assert [g["size"] for g in spec.groups] == WIDTHS[1:-1]
    assert spec.groups[0]["axes"] == [("fc1.weight", 0), ("fc1.bias", 0), ("fc2.weight", 1)]
    assert spec.untouched(pa) == ["fc3.bias"]
    found = tl.align_weights(spec, pa, pb, seed=5)
    assert found["converged"] and found["passes"] >= 1
    for got, s in zip(found["perms"], shuffle):
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, np.argsort(s))  # B's unit argsort(s)[i] is A's unit i
    aligned = tl.apply_permutation(spec, pb, found["perms"])
    for name in a:
        assert aligned[name].dtype == dtype
        np.testing.assert_array_equal(aligned[name], a[name])  # bit for bit
    assert tl.distance(pa, aligned)["total"] == 0.0
    assert tl.distance(pa, pb)["total"] > 0.0


def test_aligned_b_computes_what_b_computes_and_is_closer_to_a(rng):
    a, b = random_mlp(rng), random_mlp(rng)
    pa, pb = params(a), params(b)
    spec = tl.PermSpec.infer(pa)
    found = tl.align_weights(spec, pa, pb)
    aligned = tl.apply_permutation(spec, pb, found["perms"])
    x = rng.normal(size=(64, WIDTHS[0]))
    _, logits_b = hidden(b, x)
    _, logits_aligned = hidden({n: aligned[n] for n in b}, x)
    np.testing.assert_allclose(logits_aligned, logits_b, rtol=1e-12, atol=1e-12)
    before, after = tl.distance(pa, pb)["total"], tl.distance(pa, aligned)["total"]
    assert after < before, (before, after)
    # Matching again from the aligned set finds nothing to change.
    again = tl.align_weights(spec, pa, aligned)
    for p, size in zip(again["perms"], WIDTHS[1:-1]):
        np.testing.assert_array_equal(p, np.arange(size))


def test_activation_matching_recovers_the_permutation_streamed_or_at_once(rng):
    a = random_mlp(rng)
    shuffle = [rng.permutation(n) for n in WIDTHS[1:-1]]
    b = permuted(a, shuffle)
    spec = tl.PermSpec.infer(params(a))
    x = rng.normal(size=(300, WIDTHS[0]))
    acts_a, _ = hidden(a, x)
    acts_b, _ = hidden(b, x)
    acts_b = [h + 1e-3 * rng.normal(size=h.shape) for h in acts_b]  # not an exact copy
    found = tl.align_activations(spec, acts_a, acts_b)
    for got, s in zip(found["perms"], shuffle):
        np.testing.assert_array_equal(got, np.argsort(s))
    matcher = tl.ActivationMatcher(spec)
    for rows in (slice(0, 120), slice(120, 300)):
        matcher.update([h[rows] for h in acts_a], [h[rows].astype(np.float32) for h in acts_b])
    streamed = matcher.finish()
    for got, want in zip(streamed["perms"], found["perms"]):
        np.testing.assert_array_equal(got, want)
    for c, ha, hb in zip(matcher.correlations(), acts_a, acts_b):
        width = ha.shape[1]
        want = np.corrcoef(ha, hb.astype(np.float32).astype(np.float64), rowvar=False)[:width, width:]
        want = np.nan_to_num(want)  # a dead unit correlates 0 with every unit
        np.testing.assert_allclose(c, want, atol=1e-6)


def test_a_spec_from_json_for_a_transformer_mlp_block(rng):
    d, hidden_units = 6, 10
    w = {
        "mlp.up.weight": rng.normal(size=(hidden_units, d)),
        "mlp.up.bias": rng.normal(size=hidden_units),
        "mlp.down.weight": rng.normal(size=(d, hidden_units)),
        "mlp.down.bias": rng.normal(size=d),
    }
    text = json.dumps(
        {
            "groups": [
                {
                    "name": "mlp.hidden",
                    "size": hidden_units,
                    "axes": [["mlp.up.weight", 0], ["mlp.up.bias", 0], ["mlp.down.weight", 1]],
                }
            ]
        }
    )
    spec = tl.PermSpec.from_json(text)
    assert spec.source == "JSON" and "1 groups" in repr(spec)
    assert tl.PermSpec.from_json(spec.to_json()).groups == spec.groups
    s = rng.permutation(hidden_units)
    b = dict(w, **{"mlp.up.weight": w["mlp.up.weight"][s], "mlp.up.bias": w["mlp.up.bias"][s]})
    b["mlp.down.weight"] = w["mlp.down.weight"][:, s]
    pa, pb = params(w), params(b)
    spec.check(pa)
    assert spec.untouched(pa) == ["mlp.down.bias"]
    aligned = tl.apply_permutation(spec, pb, tl.align_weights(spec, pa, pb)["perms"])
    for name in w:
        np.testing.assert_array_equal(aligned[name], w[name])


def doc_spec(heading):
    """The first JSON block after `heading` in docs/align.md."""
    text = (REPO / "docs" / "align.md").read_text().split(heading, 1)[1]
    return re.search(r"```json\n(.*?)```", text, re.S).group(1)


def permuted_by_spec(weights, spec, perms):
    """weights with each group's units reordered along every axis the spec lists."""
    out = {k: v.copy() for k, v in weights.items()}
    for group, p in zip(spec.groups, perms):
        for name, axis in group["axes"]:
            out[name] = np.ascontiguousarray(np.take(out[name], p, axis=axis))
    return out


def admissible(rng, size, partition):
    """A random permutation of `size` units that maps the blocks of every partition level onto
    blocks: coarse to fine, each level's blocks shuffled within the block that holds them."""
    perm, outer = np.arange(size), 1
    for blocks in list(partition) + [size]:
        inner = blocks // outer
        view = perm.reshape(outer, inner, size // blocks)
        perm = np.concatenate([view[o][rng.permutation(inner)].ravel() for o in range(outer)])
        outer = blocks
    return perm


def test_the_resnet_block_spec_of_the_docs_recovers_a_known_permutation(rng):
    spec = tl.PermSpec.from_json(doc_spec("### Worked example: a ResNet block"))
    shapes = {"conv1.weight": (64, 3, 3, 3), "fc.weight": (10, 128), "fc.bias": (10,)}
    for bn, c in [("bn1", 64), ("layer1.0.bn1", 64), ("layer1.0.bn2", 64), ("layer2.0.bn1", 128)]:
        shapes.update({f"{bn}.{k}": (c,) for k in ("weight", "bias", "running_mean", "running_var")})
    for bn in ("layer2.0.bn2", "layer2.0.downsample.1"):
        shapes.update({f"{bn}.{k}": (128,) for k in ("weight", "bias", "running_mean", "running_var")})
    shapes.update({"layer1.0.conv1.weight": (64, 64, 3, 3), "layer1.0.conv2.weight": (64, 64, 3, 3)})
    shapes.update({"layer2.0.conv1.weight": (128, 64, 3, 3), "layer2.0.conv2.weight": (128, 128, 3, 3)})
    shapes["layer2.0.downsample.0.weight"] = (128, 64, 1, 1)
    a = {name: rng.normal(size=shape) for name, shape in shapes.items()}
    shuffle = [rng.permutation(g["size"]) for g in spec.groups]
    b = permuted_by_spec(a, spec, shuffle)
    pa, pb = params(a), params(b)
    spec.check(pa)
    assert spec.untouched(pa) == ["fc.bias"]
    found = tl.align_weights(spec, pa, pb, seed=1)
    for got, s in zip(found["perms"], shuffle):
        np.testing.assert_array_equal(got, np.argsort(s))
    aligned = tl.apply_permutation(spec, pb, found["perms"])
    for name in a:
        np.testing.assert_array_equal(aligned[name], a[name])


def test_a_groupnorm_partition_is_kept(rng):
    spec = tl.PermSpec.from_json(doc_spec("## The JSON format"))
    assert [(g["name"], g["partition"]) for g in spec.groups] == [("fc1", []), ("conv1", [4])]
    shapes = {"fc1.weight": (64, 20), "fc1.bias": (64,), "fc2.weight": (5, 64)}
    shapes.update({"conv1.weight": (16, 3, 3, 3), "gn1.weight": (16,)})
    a = {name: rng.normal(size=shape) for name, shape in shapes.items()}
    shuffle = [admissible(rng, g["size"], g["partition"]) for g in spec.groups]
    b = permuted_by_spec(a, spec, shuffle)
    pa, pb = params(a), params(b)
    found = tl.align_weights(spec, pa, pb)
    for got, s in zip(found["perms"], shuffle):
        np.testing.assert_array_equal(got, np.argsort(s))
    crossing = np.arange(16)
    crossing[[1, 4]] = crossing[[4, 1]]  # units 1 and 4 lie in different GroupNorm groups
    with pytest.raises(tl.InvalidArgument, match="blocks"):
        tl.apply_permutation(spec, pb, [np.arange(64), crossing])


CNN_SPEC = {
    "input": [2, 8, 8],
    "classes": 3,
    "layers": [
        {"type": "conv", "name": "conv1", "out": 8, "kernel": 3, "padding": 1, "bias": True},
        {"type": "groupnorm", "name": "gn1", "groups": 2},
        {"type": "relu"},
        {"type": "block", "name": "layer1", "out": 8, "stride": 1, "groups": 4},
        {"type": "block", "name": "layer2", "out": 12, "stride": 2, "groups": 4},
        {"type": "global_avgpool"},
        {"type": "dense", "name": "fc1", "out": 6},
        {"type": "relu"},
        {"type": "dense", "name": "fc2", "out": 3},
    ],
}
# The built-in CNN's tensors for CNN_SPEC, in its order (docs/cnn.md).
CNN_SHAPES = {"conv1.weight": (8, 2, 3, 3), "conv1.bias": (8,), "gn1.weight": (8,), "gn1.bias": (8,)}
for _block, _in, _out in [("layer1", 8, 8), ("layer2", 8, 12)]:
    CNN_SHAPES[f"{_block}.conv1.weight"] = (_out, _in, 3, 3)
    CNN_SHAPES.update({f"{_block}.gn1.weight": (_out,), f"{_block}.gn1.bias": (_out,)})
    CNN_SHAPES[f"{_block}.conv2.weight"] = (_out, _out, 3, 3)
    CNN_SHAPES.update({f"{_block}.gn2.weight": (_out,), f"{_block}.gn2.bias": (_out,)})
CNN_SHAPES["layer2.downsample.0.weight"] = (12, 8, 1, 1)
CNN_SHAPES.update({"layer2.downsample.1.weight": (12,), "layer2.downsample.1.bias": (12,)})
CNN_SHAPES.update({"fc1.weight": (6, 12), "fc1.bias": (6,), "fc2.weight": (3, 6), "fc2.bias": (3,)})


def save_with_metadata(path, tensors, metadata):
    """A safetensors file of float64 tensors with string metadata (what a saved CNN carries)."""
    header, offset = {"__metadata__": metadata}, 0
    for name, value in tensors.items():
        header[name] = {"dtype": "F64", "shape": list(value.shape), "data_offsets": [offset, offset + value.nbytes]}
        offset += value.nbytes
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    body = b"".join(np.ascontiguousarray(v, dtype="<f8").tobytes() for v in tensors.values())
    path.write_bytes(struct.pack("<Q", len(text)) + text + body)


def test_the_built_in_cnn_spec_is_inferred_and_a_known_permutation_recovered(rng, tmp_path):
    a = {name: rng.normal(size=shape) for name, shape in CNN_SHAPES.items()}
    save_with_metadata(tmp_path / "cnn.safetensors", a, {"transferlens.cnn_spec": json.dumps(CNN_SPEC)})
    pa = tl.ParamSet.load(tmp_path / "cnn.safetensors")
    spec = tl.PermSpec.infer(pa)
    assert "CNN" in spec.source
    assert [g["name"] for g in spec.groups] == ["conv1", "layer1.conv1", "layer2.conv1", "layer2.downsample.0", "fc1"]
    # The stem's channels are layer1's residual stream: gn1's 2 groups and layer1.gn2's 4 nest.
    assert spec.groups[0]["partition"] == [2, 4]
    assert ("layer1.gn2.weight", 0) in spec.groups[0]["axes"]
    assert spec.untouched(pa) == ["fc2.bias"]
    shuffle = [admissible(rng, g["size"], g["partition"]) for g in spec.groups]
    pb = params(permuted_by_spec(a, spec, shuffle))
    found = tl.align_weights(spec, pa, pb, seed=2)
    for got, s in zip(found["perms"], shuffle):
        np.testing.assert_array_equal(got, np.argsort(s))
    aligned = tl.apply_permutation(spec, pb, found["perms"])
    for name in a:
        np.testing.assert_array_equal(aligned[name], a[name])


class Task:
    """Labels from a teacher network; the evaluator runs the live weights on them."""

    def __init__(self, rng, teacher, n=400):
        self.x = rng.normal(size=(n, WIDTHS[0]))
        self.y = np.argmax(hidden(teacher, self.x)[1], axis=1)

    def metrics(self, w):
        logits = hidden(w, self.x)[1]
        logits = logits - logits.max(1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        return {
            "loss": float(-logp[np.arange(len(self.y)), self.y].mean()),
            "error": float(np.mean(np.argmax(logits, 1) != self.y)),
        }


@pytest.fixture
def two_solutions(rng):
    """A and B: the same solution with its units shuffled and a little noise, scaled up so that
    the mixtures of unmatched units are poor."""
    a = {k: 3 * v for k, v in random_mlp(rng).items()}
    b = permuted(a, [rng.permutation(n) for n in WIDTHS[1:-1]])
    b = {k: v + 0.01 * rng.normal(size=v.shape) for k, v in b.items()}
    task = Task(rng, a)
    weights = {k: v.copy() for k, v in a.items()}
    live = params(weights)
    evaluator = tl.Evaluator(lambda p: task.metrics(weights))
    return a, b, task, live, evaluator


def test_layerwise_curves_match_numpy(two_solutions):
    a, b, task, live, evaluator = two_solutions
    pa, pb = params(a), params(b)
    assert list(pa.modules) == ["fc1", "fc2", "fc3"]
    lambdas = [0.0, 0.3, 1.0]
    cases = {"module=fc2": ({"module": "fc2"}, {"fc2"}), "module=1": ({"module": 1}, {"fc2"})}
    cases.update({"first=2": ({"first": 2}, {"fc1", "fc2"}), "last=1": ({"last": 1}, {"fc3"})})
    for label, (how, moving) in cases.items():
        curve = tl.layerwise_curve(evaluator, pa, pb, live, lambdas, **how)
        np.testing.assert_array_equal(curve["lambdas"], lambdas)
        for k, lam in enumerate(lambdas):
            mixed = {n: ((1 - lam) * a[n] + lam * b[n]) if n.split(".")[0] in moving else a[n] for n in a}
            want = task.metrics(mixed)
            assert curve["loss"][k] == pytest.approx(want["loss"], rel=1e-12), label
            assert curve["error"][k] == want["error"], label


def test_the_barrier_falls_after_alignment(two_solutions):
    a, b, task, live, evaluator = two_solutions
    pa, pb = params(a), params(b)
    spec = tl.PermSpec.infer(pa)
    aligned = tl.apply_permutation(spec, pb, tl.align_weights(spec, pa, pb)["perms"])
    lambdas = np.linspace(0, 1, 11).tolist()
    raw = tl.layerwise_barrier(evaluator, pa, pb, live, lambdas, first=3, metric="loss", tolerance=0.05)
    after = tl.layerwise_barrier(evaluator, pa, aligned, live, lambdas, first=3, metric="loss", tolerance=0.05)
    # Moving every module is the whole interpolation: the same curve as interpolation_curve.
    whole = tl.interpolation_curve(evaluator, pa, pb, live, lambdas)
    np.testing.assert_allclose(raw["curve"]["loss"], whole["loss"], rtol=1e-12)
    assert tl.barrier(whole, metric="loss", tolerance=0.05) == {k: v for k, v in raw.items() if k != "curve"}
    print(f"loss barrier raw {raw['value']:.4f}, after alignment {after['value']:.4f}")
    assert raw["value"] > 0.2 and not raw["same_basin"], raw["value"]
    assert after["value"] < 0.01 and after["same_basin"], after["value"]
    # Layer by layer: any one of B's layers in A's network breaks it unless B was aligned first.
    for module in pa.modules:
        unaligned = tl.layerwise_barrier(evaluator, pa, pb, live, lambdas, module=module, metric="loss")
        matched = tl.layerwise_barrier(evaluator, pa, aligned, live, lambdas, module=module, metric="loss")
        print(f"{module}: end loss unaligned {unaligned['end']:.4f}, aligned {matched['end']:.4f}")
        assert matched["value"] < 0.01 and matched["end"] - matched["start"] < 0.01
        assert unaligned["end"] - unaligned["start"] > 0.4


def test_error_paths(rng, two_solutions):
    a, b, task, live, evaluator = two_solutions
    pa, pb = params(a), params(b)
    spec = tl.PermSpec.infer(pa)
    perms = [np.arange(n) for n in WIDTHS[1:-1]]
    with pytest.raises(tl.InvalidArgument, match="2 groups"):
        tl.apply_permutation(spec, pb, perms[:1])
    with pytest.raises(tl.InvalidArgument, match="not a permutation"):
        tl.apply_permutation(spec, pb, [np.zeros(WIDTHS[1], dtype=np.int64), perms[1]])
    with pytest.raises(tl.InvalidArgument, match="not a permutation"):
        tl.apply_permutation(spec, pb, [perms[0][:-1], perms[1]])
    with pytest.raises(OverflowError):
        tl.apply_permutation(spec, pb, [-1 - perms[0], perms[1]])
    smaller = dict(b, **{"fc1.weight": b["fc1.weight"][:-1], "fc1.bias": b["fc1.bias"][:-1]})
    with pytest.raises(tl.ShapeMismatch):
        tl.align_weights(spec, pa, params(smaller))
    missing = {k: v for k, v in b.items() if k != "fc2.weight"}
    with pytest.raises(tl.NotFound, match="fc2.weight"):
        spec.check(params(missing))
    with pytest.raises(tl.InvalidArgument, match="max_passes"):
        tl.align_weights(spec, pa, pb, max_passes=0)
    with pytest.raises(tl.FormatError):
        tl.PermSpec.from_json('{"groups": [{"name": "h"}]}')
    with pytest.raises(tl.InvalidArgument, match="size 0"):
        tl.PermSpec.from_json('{"groups": [{"name": "h", "size": 0, "axes": []}]}')
    with pytest.raises(tl.InvalidArgument, match="dense chain"):
        tl.PermSpec.infer(params({"only.weight": rng.normal(size=(3, 2))}))
    x = rng.normal(size=(50, WIDTHS[0]))
    acts, _ = hidden(a, x)
    with pytest.raises(tl.ShapeMismatch, match="groups"):
        tl.align_activations(spec, acts[:1], acts[:1])
    with pytest.raises(tl.ShapeMismatch, match="columns"):
        tl.align_activations(spec, acts, [acts[0][:, :-1], acts[1]])
    with pytest.raises(tl.ShapeMismatch, match="rows"):
        tl.align_activations(spec, acts, [acts[0][:-1], acts[1]])
    with pytest.raises(tl.InvalidArgument, match="exactly one"):
        tl.layerwise_curve(evaluator, pa, pb, live, [0.0, 1.0], module="fc1", first=1)
    with pytest.raises(tl.InvalidArgument, match="exactly one"):
        tl.layerwise_curve(evaluator, pa, pb, live, [0.0, 1.0])
    with pytest.raises(tl.InvalidArgument, match="k must be"):
        tl.layerwise_curve(evaluator, pa, pb, live, [0.0, 1.0], first=0)
    with pytest.raises(tl.InvalidArgument, match="k must be"):
        tl.layerwise_curve(evaluator, pa, pb, live, [0.0, 1.0], last=4)
    with pytest.raises(tl.NotFound):
        tl.layerwise_curve(evaluator, pa, pb, live, [0.0, 1.0], module=3)
    with pytest.raises(tl.InvalidArgument, match="metric"):
        tl.layerwise_barrier(evaluator, pa, pb, live, module="fc1", metric="f1")
