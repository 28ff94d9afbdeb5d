"""Slots on a real local cluster: subtasks packed on one GPU run in processes of their own that see that
GPU (and a multi-GPU subtask all of its GPUs); a slot process that dies fails only its subtask, which is
retried in a new slot; ``shutdown()`` leaves no slot process behind."""
from __future__ import annotations

import contextlib
import os
import sys
import time

import pytest
import ray

import fastgpu_ray as fastgpu

from conftest import LocalCluster

pytestmark = pytest.mark.cluster
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this module


@pytest.fixture(scope="module")
def slot_cluster():
    """Head (0 GPUs) + one node with 2 GPUs and 4 CPUs (room for slot processes)."""
    c = LocalCluster(gpu_nodes=1, gpus_per_node=2, cpus_per_node=4)
    c.connect()
    yield c
    c.shutdown()


def where(hold_s: float = 0.0, sleep: bool = False) -> dict:
    """Where it ran; it holds the CPU (pure Python, the GIL) for ``hold_s``, or sleeps (``sleep=True``)."""
    t0 = time.time()
    if sleep:
        time.sleep(hold_s)
    while time.time() < t0 + hold_s and not sleep:
        pass
    return {"pid": os.getpid(), "gpus": fastgpu.gpu_ids(), "cvd": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "start": t0, "end": time.time()}


def nap(s: float) -> None:
    time.sleep(s)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"  # a zombie has exited
    except (FileNotFoundError, ProcessLookupError):  # gone (also between the open and the read)
        return False


def test_packed_subtasks_run_in_processes_of_their_own_on_their_gpu(slot_cluster):
    fastgpu.init(emulate=True)
    try:
        packed = fastgpu.task(gpu_memory="1GiB", batch=False)(where)
        two = fastgpu.task(num_gpus=2)(where)
        ray.get(packed.remote(0.3), timeout=120)  # the GPU's lease is up, and its CPU use is learned
        ray.get([packed.remote(1.5) for _ in range(4)], timeout=120)  # cold: slot processes start
        for _ in range(3):  # warm: processes exist (a wave placed partly on the other GPU warms one less)
            refs = [packed.remote(1.5) for _ in range(4)]
            out = ray.get(refs, timeout=120)
            assert len({o["pid"] for o in out}) == 4, out  # four processes, not four threads of one
            assert all(o["cvd"] == ",".join(map(str, o["gpus"])) and len(o["gpus"]) == 1 for o in out), out
            if len({tuple(o["gpus"]) for o in out}) == 1 and max(o["start"] for o in out) < min(o["end"] for o in out):
                break  # packed on one GPU, all four at once
        else:
            raise AssertionError(f"no warm wave ran four at once on one GPU: {out}")
        g = out[0]["gpus"][0]
        slots = [p for p in fastgpu.session.current().processes() if not p[3]]
        assert {o["pid"] for o in out} - {p[2] for p in fastgpu.session.current().processes()} == set()
        assert all(p[1] == (g,) for p in slots), slots
        recs = [fastgpu.explain(r) for r in refs]
        assert sum(any("slot process of its own" in h for h in r.history) for r in recs) >= 3, \
            [r.format() for r in recs]

        both = ray.get(two.remote(0.0), timeout=120)  # a 2-GPU subtask sees both of its GPUs
        assert sorted(both["gpus"]) == [0, 1] and sorted(both["cvd"].split(",")) == ["0", "1"], both

    finally:
        fastgpu.shutdown()


def test_subtasks_that_mostly_wait_pack_as_threads_and_start_no_process(slot_cluster):
    fastgpu.init(emulate=True)
    try:
        napper = fastgpu.task(gpu_memory="1GiB", batch=False)(where)
        ray.get(napper.remote(0.3, True), timeout=120)
        naps = [napper.remote(1.5, True) for _ in range(4)]
        out = ray.get(naps, timeout=120)
        procs = fastgpu.session.current().processes()
        assert all(p[3] for p in procs), procs  # leases only: sleeping needs no GIL of its own
        assert {o["pid"] for o in out} <= {p[2] for p in procs}
        recs = [fastgpu.explain(r) for r in naps]
        threads = [r for r in recs if any("thread" in h and "hold the CPU" in h for h in r.history)]
        assert len(threads) >= 4 - len(procs), [r.format() for r in recs]
    finally:
        fastgpu.shutdown()


def crash_once(marker: str | None, hold_s: float) -> dict:
    if marker is not None and not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        os._exit(1)  # this process dies mid-subtask
    return where(hold_s)


def test_a_slot_that_dies_fails_only_its_subtask_which_is_retried_in_a_new_slot(slot_cluster, tmp_path):
    with one_gpu_for_fastgpu():
        slot_dies(tmp_path)


def slot_dies(tmp_path):
    fastgpu.init(emulate=True)
    try:
        packed = fastgpu.task(gpu_memory="1GiB", batch=False)(where)
        crasher = fastgpu.task(gpu_memory="1GiB", batch=False, max_retries=2)(crash_once)
        ray.get(packed.remote(0.3), timeout=120)
        ray.get(crasher.remote(None, 0.3), timeout=120)  # it holds the CPU: packed, it gets a slot process
        first = packed.remote(4.0)  # holds the lease process of its GPU while the crasher runs in a slot
        time.sleep(0.5)
        marker = str(tmp_path / "crashed")
        ref = crasher.remote(marker, 0.0)
        got = ray.get(ref, timeout=120)
        dead = int(open(marker).read())
        neighbour = ray.get(first, timeout=120)
        assert neighbour["pid"] != dead  # the neighbour was not in the dead process and finished
        assert got["pid"] != dead and not alive(dead)
        rec = fastgpu.explain(ref)
        assert rec.state == "finished" and rec.retries == 1, rec.format()
        assert any(f"slot process {dead}" in h and "retried" in h for h in rec.history), rec.format()
        lease_pids = {p[2] for p in fastgpu.session.current().processes() if p[3]}
        assert neighbour["pid"] in lease_pids  # the GPU's lease survived: only the slot was replaced
    finally:
        fastgpu.shutdown()


@contextlib.contextmanager
def one_gpu_for_fastgpu():
    """Plain Ray holds the node's other GPU, so the subtasks of a test share one (its lease and slots)."""
    blocker = ray.remote(num_gpus=1, num_cpus=0)(nap).remote(120)
    deadline = time.monotonic() + 30
    while ray.available_resources().get("GPU", 0) > 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        yield
    finally:
        ray.cancel(blocker, force=True)


def test_cancelling_a_packed_subtask_kills_only_its_slot_process(slot_cluster):
    with one_gpu_for_fastgpu():
        cancel_a_packed_subtask()


def cancel_a_packed_subtask():
    fastgpu.init(emulate=True)
    try:
        packed = fastgpu.task(gpu_memory="1GiB", batch=False)(where)
        ray.get(packed.remote(0.3), timeout=120)
        ray.get([packed.remote(1.0) for _ in range(2)], timeout=120)  # a slot process beside the lease
        pair = [packed.remote(10.0), packed.remote(10.0)]  # one runs in the lease, the other in the slot

        def in_slot(r):
            return any("slot process of its own" in h for h in fastgpu.explain(r).history)
        deadline = time.monotonic() + 30
        while not any(in_slot(r) for r in pair) and time.monotonic() < deadline:
            time.sleep(0.1)
        victim, neighbour = pair if in_slot(pair[0]) else pair[::-1]
        slots_before = {p[2] for p in fastgpu.session.current().processes() if not p[3]}
        t0 = time.monotonic()
        fastgpu.cancel([victim])
        with pytest.raises(ray.exceptions.TaskCancelledError):
            ray.get(victim, timeout=60)
        rec = fastgpu.explain(victim)
        assert rec.state == "cancelled" and any("slot process it ran in was killed" in h for h in rec.history), \
            rec.format()
        deadline = time.monotonic() + 15
        while slots_before <= {p[2] for p in fastgpu.session.current().processes()} and time.monotonic() < deadline:
            time.sleep(0.2)
        dead = slots_before - {p[2] for p in fastgpu.session.current().processes()}
        assert time.monotonic() - t0 < 8  # its process went at once, not at the end of its 10 s
        assert ray.get(neighbour, timeout=60)["pid"]  # the neighbour ran on to its end
        assert dead and not any(alive(p) for p in dead)
    finally:
        fastgpu.shutdown()


def test_shutdown_leaves_no_slot_process_behind(slot_cluster):
    fastgpu.init(emulate=True)
    pids = []
    try:
        packed = fastgpu.task(gpu_memory="1GiB", batch=False)(where)
        ray.get(packed.remote(0.3), timeout=120)
        pids = [o["pid"] for o in ray.get([packed.remote(1.0) for _ in range(3)], timeout=120)]
        procs = fastgpu.session.current().processes()
        assert len({p[2] for p in procs if not p[3]}) >= 2, procs
        pids += [p[2] for p in procs]
    finally:
        fastgpu.shutdown()
    deadline = time.monotonic() + 15
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in pids if alive(p)]
