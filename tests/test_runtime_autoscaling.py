"""fastgpu on a real local autoscaling cluster (Ray's fake multi-node provider, autoscaler v1): a map
submitted at zero GPU nodes makes the autoscaler launch nodes and completes; a backlog larger than one
node gets a second one; the GPU nodes are removed once the work is over; a subtask larger than every
launchable node type fails at once, naming the largest; where fastgpu cannot read the node types, a
subtask waits a bounded time, then fails saying so."""
from __future__ import annotations

import time

import pytest

ray = pytest.importorskip("ray")

import fastgpu_ray as fastgpu  # noqa: E402
from fastgpu_ray.local_autoscaling import LocalAutoscalingCluster, gpu_node_type  # noqa: E402

pytestmark = pytest.mark.timeout(400)

NODE_IDLE_S = 4.0  # the autoscaler removes a GPU node idle this long


def gpu_nodes() -> int:
    return sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU"))


@pytest.fixture
def autoscaling():
    clusters = []

    def start(max_workers: int = 2, **kw) -> LocalAutoscalingCluster:
        c = LocalAutoscalingCluster({"gpu2": gpu_node_type(2, max_workers=max_workers)},
                                    idle_timeout_s=NODE_IDLE_S, **kw)
        clusters.append(c)
        c.start()
        ray.init(address=c.address, log_to_driver=False)
        return c

    yield start
    fastgpu.shutdown()
    ray.shutdown()
    for c in clusters:
        c.stop()


def test_scales_from_zero_grows_for_the_backlog_and_back_to_zero(autoscaling):
    autoscaling(max_workers=2)
    fastgpu.init(emulate=True)
    assert gpu_nodes() == 0

    @fastgpu.task(num_gpus=4)
    def too_big(x):
        return x

    t0 = time.monotonic()
    with pytest.raises(fastgpu.NeverFitsError, match=r"gpu2 \(2 GPU\(s\) per node, at most 2 node"):
        ray.get(too_big.remote(1), timeout=30)
    assert time.monotonic() - t0 < 10  # at once: no node is launched for it

    @fastgpu.task(num_gpus=1)
    def square(x):
        time.sleep(1.5)
        return x * x

    refs = square.map(range(12))  # 12 GPU-subtasks of 1.5 s: more than one 2-GPU node should take
    rec = fastgpu.explain(refs[-1])
    assert rec.state == "waiting for a node" and "gpu2" in rec.history[0]
    assert "waiting for a node: " in fastgpu.status().format()
    peak = 0
    pending = list(refs)
    while pending:
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=0.5, fetch_local=False)
        peak = max(peak, gpu_nodes())
    assert ray.get(refs) == [i * i for i in range(12)]
    assert peak == 2, f"the backlog should have made the autoscaler launch a second node (peak {peak})"
    # Each waited in the lobby, then ran either on a worker Ray started as its node came up, before the
    # session's scheduler there was up (the first ones: that start takes a process start more), or on
    # that scheduler.
    hist = [" ".join(fastgpu.explain(r).history) for r in refs]
    early = sum("ran on an early GPU worker" in h for h in hist)
    assert all("waited" in h and ("handed to node" in h or "early GPU worker" in h) for h in hist), hist
    assert 1 <= early < 12, hist
    handed = next(r for r, h in zip(refs, hist) if "handed to node" in h)
    del refs, pending
    # Idle GPUs go back and fastgpu's actors leave idle nodes within a fifth of the autoscaler's idle
    # timeout (each), then the autoscaler removes the nodes: well within a minute here.
    t1 = time.monotonic()
    while gpu_nodes() and time.monotonic() - t1 < 90:
        time.sleep(0.5)
    assert gpu_nodes() == 0, "the GPU nodes were not removed after the work ended"
    rec = fastgpu.explain(handed)  # its scheduler left with its node: explain says so, it does not raise
    assert rec.state == "handed over" and "whose scheduler has since left" in rec.history[0], rec

    # ... and the next map starts from zero again.
    assert ray.get(square.map(range(2)), timeout=120) == [0, 1]


def test_unknown_node_types_wait_a_bounded_time_then_fail_saying_so(autoscaling):
    # The autoscaler runs, but fastgpu is pointed at a config it cannot read: it cannot know whether any
    # node type has GPUs (and this one can launch none), so it waits scale_wait_s, then fails.
    autoscaling(max_workers=0, env={"FASTGPU_AUTOSCALING_CONFIG": "/nonexistent/autoscaling.yaml"})
    fastgpu.init(emulate=True, scale_wait_s=3)

    @fastgpu.task(num_gpus=1)
    def one(x):
        return x

    t0 = time.monotonic()
    ref = one.remote(1)
    assert "fastgpu cannot read its node types" in fastgpu.explain(ref).history[0]
    with pytest.raises(fastgpu.NeverFitsError, match="node types could not be read"):
        ray.get(ref, timeout=60)
    assert 3 <= time.monotonic() - t0 < 30
