"""A worker node killed in the middle of a ``map``: every result arrives, once, equal to a fault-free run."""
from __future__ import annotations

import time

import pytest
import ray

import fastgpu_ray as fastgpu

pytestmark = pytest.mark.cluster


@fastgpu.task(work_s=0.25, max_retries=5)
def square(i):
    fastgpu.emulate_work()
    return i * i, ray.get_runtime_context().get_node_id()


def test_node_killed_mid_map_every_result_arrives_once(ray_cluster):
    fastgpu.init(emulate=True)
    try:
        n = 48
        expected = [i * i for i in range(n)]
        clean = ray.get(square.map(range(n)), timeout=180)
        assert [v for v, _ in clean] == expected

        refs = square.map(range(n))
        time.sleep(1.0)  # subtasks are running on every node now
        victim = ray_cluster.nodes[0]
        ray_cluster.cluster.remove_node(victim, allow_graceful=False)
        out = ray.get(refs, timeout=240)
        assert [v for v, _ in out] == expected  # each ref yields its own result, exactly one per item
        assert len(set(r.hex() for r in refs)) == n
        recs = [fastgpu.explain(r) for r in refs]
        assert any(r.retries >= 1 for r in recs), "nothing was re-placed after the node died"
        assert all(r.state == "finished" for r in recs)
        late = {node for (_, node), rec in zip(out, recs) if rec.retries}
        assert victim.node_id not in late  # re-placed subtasks finished on surviving nodes
        held = fastgpu.session.current().workers()
        assert victim.node_id not in {nd for nd, _, _ in held}
    finally:
        fastgpu.shutdown()
    deadline = time.monotonic() + 60
    while fastgpu.session.alive_gpu_total() != 4 and time.monotonic() < deadline:
        time.sleep(0.5)  # Ray declares the killed node dead after its health checks fail
    assert ray.available_resources().get("GPU", 0) == fastgpu.session.alive_gpu_total() == 4
