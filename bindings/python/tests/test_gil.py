"""The GIL is released while the library computes: another thread keeps running."""

import threading
import time

import numpy as np

import transferlens as tl


def test_other_threads_run_during_a_long_call():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6000, 768)).astype(np.float32)
    y = rng.normal(size=(6000, 768)).astype(np.float32)
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
    assert call > 0.05, f"the call took {call:.3f} s: too short to tell"
    assert longest < call / 2, (longest, call)
    assert ticks > 10
