"""The GPU worker's threads: each call on the thread that went idle last, errors to the caller."""
from __future__ import annotations

import threading

import pytest

from fastgpu_ray.actors.warm_threads import WarmThreads


def test_after_calls_ran_side_by_side_one_call_at_a_time_stays_on_one_thread():
    """A ThreadPoolExecutor reuses idle threads but lets them race for the next call: after a burst of 4
    side by side, 12 one-at-a-time calls ran on all 4 (each a cold malloc arena for large arrays)."""
    pool = WarmThreads("t")
    gate, started = threading.Barrier(5), []

    def side_by_side():
        started.append(threading.get_ident())
        gate.wait(timeout=10)  # all four running at once
        return threading.get_ident()

    callers = [threading.Thread(target=pool.run, args=(side_by_side,)) for _ in range(4)]
    for t in callers:
        t.start()
    gate.wait(timeout=10)
    for t in callers:
        t.join(timeout=10)
    assert pool.threads == 4 and len(set(started)) == 4
    after = [pool.run(threading.get_ident) for _ in range(12)]
    assert len(set(after)) == 1 and pool.threads == 4, after  # the thread idle last, every time


def test_results_and_errors_reach_the_caller_and_a_busy_pool_grows():
    pool = WarmThreads("t")
    assert pool.run(lambda a, b: a + b, 2, 3) == 5
    with pytest.raises(ValueError, match="bad"):
        pool.run(lambda: (_ for _ in ()).throw(ValueError("bad")))
    assert pool.run(lambda: "still usable") == "still usable" and pool.threads == 1
    inner = []
    pool.run(lambda: inner.append(pool.run(lambda: 7)))  # a call from inside a call: another thread
    assert inner == [7] and pool.threads == 2


def test_an_idle_thread_keeps_nothing_of_its_last_call():
    """Between calls a thread must not hold its last call's arguments or result (a worker's inputs are
    views of Ray's object store: held, they stay pinned there)."""
    import gc
    import weakref

    class Big:
        pass

    pool = WarmThreads("t")
    arg = Big()
    seen = weakref.ref(arg)
    out = pool.run(lambda a: a, arg)  # the input, and as the result
    made = weakref.ref(pool.run(Big))  # a result made on the thread
    del arg, out
    gc.collect()
    assert seen() is None and made() is None
