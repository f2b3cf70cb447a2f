"""The GIL is released while the library computes: another thread keeps running."""

import threading
import time

import numpy as np

import transferlens as tl

# A call must last long enough that a frozen Python loop would be unmistakable; machines
# differ by an order of magnitude in speed, so the size is found here rather than fixed.
LONG_CALL_S = 0.2
MAX_ROWS = 1 << 16


def _inputs_for_a_long_call():
    rng = np.random.default_rng(0)
    rows, features = 4096, 1024
    while True:
        x = rng.normal(size=(rows, features)).astype(np.float32)
        y = rng.normal(size=(rows, features)).astype(np.float32)
        start = time.perf_counter()
        tl.linear_cka(x, y, backend="cpu")
        took = time.perf_counter() - start
        if took >= LONG_CALL_S or rows >= MAX_ROWS:
            return x, y, took
        rows *= 2


def _assert_other_threads_run_during(call):
    done = threading.Event()

    def work():
        call()
        done.set()

    start = time.perf_counter()
    worker = threading.Thread(target=work)
    worker.start()
    ticks, longest, last = 0, 0.0, time.perf_counter()
    while not done.is_set():
        now = time.perf_counter()
        longest = max(longest, now - last)
        last = now
        ticks += 1
        time.sleep(0.001)
    worker.join()
    took = time.perf_counter() - start
    # Holding the GIL would freeze this loop for the whole call.
    assert longest < took / 2, (longest, took)
    assert ticks > 10, ticks


def _long_enough(make_call, sizes):
    """The first call of `sizes` that lasts LONG_CALL_S (or the last one), and its duration."""
    for size in sizes:
        call = make_call(size)
        start = time.perf_counter()
        call()
        took = time.perf_counter() - start
        if took >= LONG_CALL_S:
            break
    assert took > 0.05, f"even size {size} took only {took:.3f} s: too short to tell"
    return call


def test_other_threads_run_during_a_long_call():
    x, y, single_call = _inputs_for_a_long_call()
    assert single_call > 0.05, (
        f"even {x.shape[0]} x {x.shape[1]} inputs took only {single_call:.3f} s: too short to tell"
    )
    _assert_other_threads_run_during(lambda: tl.linear_cka(x, y, backend="cpu"))


def test_other_threads_run_during_cka_statistics():
    rng = np.random.default_rng(1)

    def make_call(rows):
        x, y = rng.normal(size=(rows, 64)), rng.normal(size=(rows, 64))
        return lambda: tl.cka_statistics(x, y, bootstrap=200, null=20, influence=5)

    _assert_other_threads_run_during(_long_enough(make_call, [1 << k for k in range(10, 17)]))


def test_other_threads_run_during_weight_matching():
    rng = np.random.default_rng(2)

    def make_call(width):
        def mlp():
            shapes = {"fc1.weight": (width, 8), "fc2.weight": (width, width), "fc3.weight": (4, width)}
            return tl.ParamSet.from_arrays({k: rng.normal(size=s) for k, s in shapes.items()})

        a, b = mlp(), mlp()
        spec = tl.PermSpec.infer(a)
        return lambda: tl.align_weights(spec, a, b)

    _assert_other_threads_run_during(_long_enough(make_call, [64, 128, 256, 512, 1024, 2048]))
