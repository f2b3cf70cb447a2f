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


def test_other_threads_run_during_a_long_call():
    x, y, single_call = _inputs_for_a_long_call()
    assert single_call > 0.05, (
        f"even {x.shape[0]} x {x.shape[1]} inputs took only {single_call:.3f} s: too short to tell"
    )
    done = threading.Event()

    def work():
        tl.linear_cka(x, y, backend="cpu")
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
    call = time.perf_counter() - start
    # Holding the GIL would freeze this loop for the whole call.
    assert longest < call / 2, (longest, call)
    assert ticks > 10, ticks
