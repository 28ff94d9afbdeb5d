"""A worker node killed in the middle of a ``map``: every result arrives, once, equal to a fault-free run;
results whose only copy was on the dead node are recomputed when read (Ray's lineage reconstruction of
the node scheduler's calls)."""
from __future__ import annotations

import time

import numpy as np
import pytest
import ray

import fastgpu_ray as fastgpu

pytestmark = pytest.mark.cluster


@fastgpu.task(work_s=0.25, max_retries=5)
def square(i):
    fastgpu.emulate_work()
    # 1 MiB: stored in the object store of the node that computed it (small results go inline to the owner)
    return i * i, ray.get_runtime_context().get_node_id(), np.zeros(2**17)


def finished_only_on(refs, node: str, timeout_s: float = 60.0) -> list:
    """Wait until some of ``refs`` are finished with their only copy on ``node``; returns those."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0.2, fetch_local=False)
        locs = ray.experimental.get_object_locations(ready)
        mine = [r for r in ready if locs[r]["node_ids"] == [node]]
        if mine:
            return mine
    raise AssertionError(f"no result finished on {node} within {timeout_s}s")


def test_node_killed_mid_map_every_result_arrives_once(ray_cluster):
    fastgpu.init(emulate=True)
    try:
        n = 48
        expected = [i * i for i in range(n)]
        clean = ray.get(square.map(range(n)), timeout=180)
        assert [v for v, _, _ in clean] == expected
        del clean

        refs = square.map(range(n))
        victim = ray_cluster.nodes[0]
        lost = finished_only_on(refs, victim.node_id)  # finished, and the only copy is on the victim
        ray_cluster.cluster.remove_node(victim, allow_graceful=False)
        out = ray.get(refs, timeout=240)
        assert [v for v, _, _ in out] == expected  # each ref yields its own result, exactly one per item
        assert len(set(r.hex() for r in refs)) == n
        recs = {r.hex(): fastgpu.explain(r) for r in refs}
        assert all(rec.state == "finished" for rec in recs.values())
        for r in lost:  # reading it recomputed it on a surviving node, counted as a retry
            rec = recs[r.hex()]
            assert rec.retries >= 1 and rec.node != victim.node_id, rec.format()
            assert any("re-run" in h for h in rec.history), rec.format()
        assert victim.node_id not in {node for _, node, _ in out}
        assert victim.node_id not in {nd for nd, _, _ in fastgpu.session.current().workers()}
    finally:
        fastgpu.shutdown()
    deadline = time.monotonic() + 60
    while fastgpu.session.alive_gpu_total() != 4 and time.monotonic() < deadline:
        time.sleep(0.5)  # Ray declares the killed node dead after its health checks fail
    assert ray.available_resources().get("GPU", 0) == fastgpu.session.alive_gpu_total() == 4
