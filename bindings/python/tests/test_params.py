"""ParamSet (load, from_arrays in place, save, modules), distance and interpolate."""

import json

import numpy as np
import pytest

import transferlens as tl
from conftest import DlpackOnly


def arrays(rng, dtype=np.float64):
    return {
        "fc1.weight": rng.normal(size=(8, 5)).astype(dtype),
        "fc1.bias": rng.normal(size=8).astype(dtype),
        "fc2.weight": rng.normal(size=(3, 8)).astype(dtype),
        "fc2.bias": rng.normal(size=3).astype(dtype),
    }


def test_modules_and_names(rng):
    p = tl.ParamSet.from_arrays(arrays(rng))
    assert p.modules == {"fc1": ["fc1.weight", "fc1.bias"], "fc2": ["fc2.weight", "fc2.bias"]}
    assert p.tensor_names == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert len(p) == 4 and "fc2.bias" in p and p.numel == 8 * 5 + 8 + 3 * 8 + 3
    p.set_grouping("tensor")
    assert list(p.modules) == p.tensor_names


def test_from_arrays_wraps_the_memory_in_place(rng):
    a, b = arrays(rng), arrays(rng)
    pa, pb = tl.ParamSet.from_arrays(a), tl.ParamSet.from_arrays(b)
    before = tl.distance(pa, pb)["total"]
    a["fc2.bias"] += 10.0  # the set reads the arrays' current values
    want = np.sqrt(sum(np.sum((a[k] - b[k]) ** 2) for k in a))
    after = tl.distance(pa, pb)["total"]
    assert after == pytest.approx(want, rel=1e-12) and after > before
    np.testing.assert_array_equal(pa["fc2.bias"], a["fc2.bias"])


def test_distance_and_interpolate_match_numpy(rng):
    a, b = arrays(rng), arrays(rng)
    pa, pb = tl.ParamSet.from_arrays(a), tl.ParamSet.from_arrays(b)
    d = tl.distance(pa, pb)
    for module in ("fc1", "fc2"):
        want = np.sqrt(sum(np.sum((a[k] - b[k]) ** 2) for k in a if k.startswith(module + ".")))
        assert d["modules"][module] == pytest.approx(want, rel=1e-12)
    assert d["total"] == pytest.approx(np.hypot(d["modules"]["fc1"], d["modules"]["fc2"]), rel=1e-12)
    for lam in (0.0, 0.3, 1.0, 1.5):
        mid = tl.interpolate(pa, pb, lam)
        for k in a:
            np.testing.assert_allclose(mid[k], (1 - lam) * a[k] + lam * b[k], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_save_and_load_round_trip(rng, tmp_path, dtype):
    a = arrays(rng, dtype)
    path = tmp_path / "a.safetensors"
    tl.ParamSet.from_arrays(a).save(path)
    loaded = tl.ParamSet.load(path)
    assert loaded.tensor_names == list(a)
    for k, v in a.items():
        assert loaded[k].dtype == dtype
        np.testing.assert_array_equal(loaded[k], v)
    assert tl.distance(loaded, tl.ParamSet.from_arrays(a))["total"] == 0.0
    copy = loaded.copy()
    assert tl.distance(copy, loaded)["total"] == 0.0


def test_param_errors(rng, tmp_path):
    a = arrays(rng)
    with pytest.raises(tl.IoError):
        tl.ParamSet.load(tmp_path / "missing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}xxxxxx")
    with pytest.raises(tl.FormatError):
        tl.ParamSet.load(tmp_path / "bad.safetensors")
    with pytest.raises(tl.InvalidArgument, match="C-contiguous"):
        tl.ParamSet.from_arrays({"w": a["fc1.weight"].T})
    frozen = a["fc1.bias"].copy()
    frozen.setflags(write=False)
    with pytest.raises(tl.InvalidArgument, match="read-only"):
        tl.ParamSet.from_arrays({"b": frozen})
    with pytest.raises(tl.UnsupportedDtype):
        tl.ParamSet.from_arrays({"n": np.arange(4)})
    with pytest.raises(tl.InvalidArgument, match="overlap"):
        tl.ParamSet.from_arrays({"x": a["fc1.weight"], "y": a["fc1.weight"].reshape(-1)})
    other = dict(a)
    other["fc1.weight"] = np.zeros((5, 8))
    with pytest.raises(tl.ShapeMismatch):
        tl.distance(tl.ParamSet.from_arrays(a), tl.ParamSet.from_arrays(other))
    with pytest.raises(tl.NotFound):
        tl.ParamSet.from_arrays(a)["fc3.weight"]
    with pytest.raises(TypeError, match="__dlpack__"):
        tl.ParamSet.from_arrays({"w": [1.0, 2.0]})
    with pytest.raises(tl.InvalidArgument, match="row-major"):
        tl.ParamSet.from_arrays({"w": DlpackOnly(a["fc1.weight"].T)})
    with pytest.raises(tl.InvalidArgument, match="read-only"):
        tl.ParamSet.from_arrays({"b": DlpackOnly(frozen)})  # DLPack 1.0's read-only flag


def test_from_arrays_through_dlpack_wraps_in_place(rng):
    a = arrays(rng)
    b = {k: v.copy() for k, v in a.items()}
    pa, pb = tl.ParamSet.from_arrays({k: DlpackOnly(v) for k, v in a.items()}), tl.ParamSet.from_arrays(b)
    assert tl.distance(pa, pb)["total"] == 0.0
    a["fc1.bias"][0] += 3.0
    assert tl.distance(pa, pb)["total"] == pytest.approx(3.0, rel=1e-12)


def test_load_checkpoint_reads_folders_and_shards(rng, tmp_path):
    a = arrays(rng)
    names = list(a)
    whole = tl.ParamSet.from_arrays(a)
    (tmp_path / "folder").mkdir()
    whole.save(tmp_path / "folder" / "model.safetensors")
    shards = tmp_path / "sharded"
    shards.mkdir()
    first, second = names[: len(names) // 2], names[len(names) // 2 :]
    tl.ParamSet.from_arrays({k: a[k] for k in first}).save(shards / "part-1.safetensors")
    tl.ParamSet.from_arrays({k: a[k] for k in second}).save(shards / "part-2.safetensors")
    weight_map = {k: "part-1.safetensors" for k in first} | {k: "part-2.safetensors" for k in second}
    (shards / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    for where in [tmp_path / "folder", shards, shards / "model.safetensors.index.json"]:
        loaded = tl.ParamSet.load_checkpoint(where)
        assert loaded.tensor_names == names
        assert tl.distance(loaded, whole)["total"] == 0.0
    weight_map[first[0]] = "part-2.safetensors"
    (shards / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(tl.FormatError, match=first[0]):
        tl.ParamSet.load_checkpoint(shards)
    with pytest.raises(tl.IoError):
        tl.ParamSet.load_checkpoint(tmp_path / "missing")
