"""The worker's batch runner without Ray: arguments refilled, one subtask's error isolated, OOM flagged,
the subtask context set only while it runs."""
from __future__ import annotations

from ray import cloudpickle

from fastgpu_ray import context
from fastgpu_ray.errors import GpuOutOfMemoryError, is_gpu_oom
from fastgpu_ray.actors.worker import Item, RefSlot, run_items


def item(sid, args, kwargs=None, nrefs=0):
    return Item(sid, "f", cloudpickle.dumps((args, kwargs or {})), nrefs)


def test_batch_results_errors_and_oom_are_per_subtask():
    seen = []

    def f(a, b=0):
        seen.append(context.current().subtask_id)
        if a == "oom":
            raise GpuOutOfMemoryError("CUDA out of memory")
        if a == "bad":
            raise ValueError("bad value")
        return a + b

    items = [item("s1", (RefSlot(0),), {"b": RefSlot(1)}, nrefs=2), item("s2", ("bad",)),
             item("s3", ("oom",)), item("s4", (5,), {"b": 1})]
    out = run_items({"f": f}, items, [10, 20], lambda it: context.SubtaskContext(it.sid, "n", (0,)))
    assert out[0] == ("ok", 30) and out[3] == ("ok", 6)
    assert out[1][0] == "err" and isinstance(out[1][1].cause, ValueError) and out[1][2] is False
    assert out[2][0] == "err" and out[2][2] is True
    assert seen == ["s1", "s2", "s3", "s4"] and context.current() is None


def test_oom_recognition():
    class OutOfMemoryError(RuntimeError):  # torch.cuda.OutOfMemoryError's name
        pass

    assert is_gpu_oom(OutOfMemoryError("x"))
    assert is_gpu_oom(RuntimeError("CUDA error: out of memory"))
    assert not is_gpu_oom(ValueError("out of memory"))  # not an error type OOMs come as
    assert not is_gpu_oom(RuntimeError("shape mismatch"))


def test_consecutive_calls_run_on_one_thread_of_the_runner_whichever_thread_received_them(monkeypatch):
    """Ray hands a threaded actor's calls to any thread of its pool; subtasks must not follow them (each
    thread allocates from its own malloc arena, and a large array on a cold one is page-faulted afresh)."""
    import threading
    import time

    from fastgpu_ray.actors.worker import Runner

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # Runner sets it for its GPUs
    runner = Runner("node", None, "ns", gpus=(0,))
    callers = []

    def f():
        return threading.get_ident()

    release, results = threading.Event(), []

    def call():
        callers.append(threading.get_ident())
        results.append(runner.run_batch(["f"], [Item("s", "f", cloudpickle.dumps(((), {})), 0)],
                                        cloudpickle.dumps(f)))
        release.wait()  # alive to the end: a finished thread's ident may be given to the next one

    threads = []
    for _ in range(4):  # each call received on another thread, one after another (as Ray's pool may)
        threads.append(threading.Thread(target=call))
        threads[-1].start()
        deadline = time.monotonic() + 10
        while len(results) < len(threads) and time.monotonic() < deadline:
            threading.Event().wait(0.005)
    release.set()
    for t in threads:
        t.join()
    ran_on = [res[0][1] for res, _ in results]  # each call's f: the thread it ran on
    assert [res[0][0] for res, _ in results] == ["ok"] * 4 and len(set(callers)) == 4
    assert len(set(ran_on)) == 1 and ran_on[0] not in callers
