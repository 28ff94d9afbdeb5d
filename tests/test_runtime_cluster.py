"""fastgpu on a real multi-node Ray cluster (head with 0 GPUs + 3 nodes x 2 logical GPUs, emulated).

One cluster and one fastgpu session for the module (shutdown giving every GPU back is tested in
test_runtime_dataplane.py, on its own session).
"""
from __future__ import annotations

import os
import signal
import time

import pytest
import ray

import fastgpu_ray as fastgpu

pytestmark = pytest.mark.cluster


@fastgpu.task(work_s=0.3)
def where(i):
    fastgpu.emulate_work()
    return i, ray.get_runtime_context().get_node_id(), tuple(fastgpu.gpu_ids())


@fastgpu.task(work_s=0.4, max_retries=3)
def timed(i):
    t0 = time.time()
    fastgpu.emulate_work()
    return i, ray.get_runtime_context().get_node_id(), fastgpu.gpu_ids()[0], os.getpid(), t0, time.time()


@fastgpu.task
def add(a, b=0):
    return a + b


@pytest.fixture(scope="module")
def fg(ray_cluster):
    fastgpu.init(emulate=True)
    yield ray_cluster
    fastgpu.shutdown()


def test_map_spreads_over_nodes_and_gpus(fg):
    out = ray.get(where.map(range(12)), timeout=120)
    assert [o[0] for o in out] == list(range(12))
    nodes = {o[1] for o in out}
    assert nodes <= set(fg.node_ids()) and len(nodes) >= 2, nodes
    assert all(len(o[2]) == 1 and o[2][0] in (0, 1) for o in out)


def test_object_ref_arguments_are_resolved_on_the_worker(fg):
    big = ray.put(list(range(1000)))
    r1 = add.remote(5, b=7)
    r2 = add.remote(r1, 100)  # a fastgpu ref as an argument to another subtask
    assert ray.get(r2, timeout=60) == 112

    @fastgpu.task
    def total(xs, extra):
        return sum(xs) + extra

    assert ray.get(total.remote(big, extra=1), timeout=60) == sum(range(1000)) + 1
    ready, _ = ray.wait([r1, r2], num_returns=2, timeout=30)
    assert len(ready) == 2


def test_user_error_reaches_the_caller_with_its_type(fg):
    @fastgpu.task
    def bad(x):
        raise KeyError(f"missing {x}")

    with pytest.raises(KeyError, match="missing 3"):
        ray.get(bad.remote(3), timeout=60)
    refs = add.map([1, 2, 3])
    assert ray.get(refs) == [1, 2, 3]


def test_never_fitting_subtask_fails_fast_naming_the_largest_gpu(fg):
    @fastgpu.task(gpu_memory="1TiB")
    def huge():
        return 1

    t0 = time.monotonic()
    with pytest.raises(fastgpu.NeverFitsError, match=r"the largest is GPU \d on .*16384 MiB"):
        ray.get(huge.remote(), timeout=60)
    assert time.monotonic() - t0 < 10
    # A cluster of fixed size (Ray's autoscaler process runs read-only): nothing waits for a node.
    from fastgpu_ray import session
    assert not session.current().router.scaling.autoscaler


def test_explain_and_status(fg):
    ref = where.remote(99)
    ray.get(ref, timeout=60)
    rec = fastgpu.explain(ref)
    assert rec.state == "finished" and rec.node in fg.node_ids() and len(rec.gpus) == 1
    assert rec.policy == "fastgpu" and rec.explanation is not None and rec.explanation.winner == rec.node
    assert rec.emulated and "EMULATED" in rec.format()
    st = fastgpu.status()
    assert len(st.gpus) == 6 and {g.node for g in st.gpus} == set(fg.node_ids())
    assert all(g.emulated and g.memory_total_mib == 16384 for g in st.gpus)
    assert "EMULATED" in st.format() and "autoscaler:" not in st.format()
    # counters behind the ray.util.metrics counters: the earlier tests' subtasks, two of them failed
    assert st.finished >= 12 and st.failed >= 2 and st.placed >= st.finished


def test_externally_loaded_gpu_is_avoided(fg):
    nodes = fg.node_ids()
    for n in nodes:  # load every GPU but one
        for g in (0, 1):
            if (n, g) != (nodes[1], 1):
                fastgpu.set_emulated_gpu(n, g, util=0.9, processes=1)
    try:
        ref = where.remote(1)
        _, node, gpus = ray.get(ref, timeout=60)
        assert (node, gpus) == (nodes[1], (1,)), fastgpu.explain(ref).format()
        st = {(g.node, g.gpu): g for g in fastgpu.status().gpus}
        assert st[(nodes[0], 0)].external_processes == 1 and st[(nodes[0], 0)].util >= 0.9
    finally:
        for n in nodes:
            for g in (0, 1):
                fastgpu.set_emulated_gpu(n, g, util=0.0, processes=0)


def test_out_of_memory_is_retried_on_a_gpu_with_more_free_memory(fg):
    nodes = fg.node_ids()
    small = (nodes[0], 0)
    fastgpu.set_emulated_gpu(*small, memory="4GiB")
    for n in nodes:  # everything but the small GPU is busy, so placement tries the small one first
        for g in (0, 1):
            if (n, g) != small:
                fastgpu.set_emulated_gpu(n, g, util=0.8)

    @fastgpu.task(gpu_memory="1GiB", work_s=1.0)
    def needs_8g():
        if fastgpu.gpu_memory_total_mib() < 8192:
            raise fastgpu.GpuOutOfMemoryError("CUDA out of memory: tried to allocate 8 GiB (emulated)")
        return ray.get_runtime_context().get_node_id(), fastgpu.gpu_ids()[0]

    try:
        ref = needs_8g.remote()
        node, gpu = ray.get(ref, timeout=120)
        rec = fastgpu.explain(ref)
        assert (node, gpu) != small
        assert rec.retries == 1 and "out of GPU memory" in " ".join(rec.history), rec.format()
    finally:
        fastgpu.set_emulated_gpu(*small, memory="16GiB")
        for n in nodes:
            for g in (0, 1):
                fastgpu.set_emulated_gpu(n, g, util=0.0)


def test_killed_worker_subtasks_are_replaced_and_no_gpu_is_double_booked(fg):
    refs = timed.map(range(30))
    deadline = time.monotonic() + 60
    while sum(fastgpu.explain(r).state == "running" for r in refs[:6]) < 3:  # work running on the GPUs
        assert time.monotonic() < deadline, "no subtask started within 60 s"
        time.sleep(0.1)
    held = fastgpu.session.current().workers()
    assert len(held) == len({(n, g) for n, g, _ in held}) <= 6
    victim = held[0][2]
    os.kill(victim, signal.SIGKILL)
    out = ray.get(refs, timeout=180)
    assert [o[0] for o in out] == list(range(30))
    by_gpu: dict = {}
    for _, node, gpu, _, t0, t1 in out:
        by_gpu.setdefault((node, gpu), []).append((t0, t1))
    for key, spans in by_gpu.items():
        spans.sort()
        for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
            assert b0 >= a1 - 0.02, f"two whole-GPU subtasks overlapped on {key}"
    retried = [fastgpu.explain(r) for r in refs]
    assert any(r.retries >= 1 for r in retried), "no subtask was re-placed after the kill"
    held = fastgpu.session.current().workers()
    assert victim not in {p for _, _, p in held}
    assert len(held) == len({(n, g) for n, g, _ in held}) <= 6


def test_status_command_prints_the_live_sessions_table(fg):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "fastgpu_ray.cli", "status", "--address", fg.address],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert sum(1 for line in lines if "EmulatedGPU*" in line) == 6, out.stdout
    assert any(line.startswith("queue:") for line in lines) and "EMULATED" in out.stdout
