"""Data locality on a real multi-node Ray cluster (head without GPUs + 3 nodes x 2 logical GPUs).

The link bandwidth is configured to 1 Gbit/s (``FASTGPU_LINK_BANDWIDTH`` in the cluster's environment),
as on real hosts; on one machine the links themselves are free, so the decisions are what is tested.
"""
from __future__ import annotations

import os
import time

import numpy as np
import pytest
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import fastgpu_ray as fastgpu

pytestmark = pytest.mark.cluster

MiB = 2**20


@pytest.fixture(scope="module")
def cluster():
    from conftest import LocalCluster

    old = os.environ.get("FASTGPU_LINK_BANDWIDTH")
    os.environ["FASTGPU_LINK_BANDWIDTH"] = "1Gbit"  # inherited by the raylets, so by the dispatcher
    try:
        c = LocalCluster()
    finally:
        if old is None:
            os.environ.pop("FASTGPU_LINK_BANDWIDTH", None)
        else:
            os.environ["FASTGPU_LINK_BANDWIDTH"] = old
    try:
        c.connect()
        fastgpu.init(emulate=True)
        yield c
    finally:
        if fastgpu.is_initialized():
            fastgpu.shutdown()
        c.shutdown()


@ray.remote(num_cpus=0, max_retries=3)
def produce(fill: int, nbytes: int):
    return np.full(nbytes, fill, dtype=np.uint8)


def locations(ref, done, timeout_s: float = 30.0) -> list:
    """The object's nodes once ``done(nodes)`` holds (or at the timeout): its owner learns locations a
    moment after a task returns or a pull lands, so a single read can be stale."""
    deadline = time.time() + timeout_s
    while True:
        nodes = ray.experimental.get_object_locations([ref])[ref]["node_ids"]
        if done(nodes) or time.time() > deadline:
            return nodes
        time.sleep(0.1)


def produced_on(node_id: str, fill: int, mib: int = 16, soft: bool = False):
    ref = produce.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=soft)).remote(fill, mib * MiB)
    # Generous: a fresh worker process on a busy 2-core machine can take tens of seconds to start.
    ready, _ = ray.wait([ref], fetch_local=False, timeout=180)
    assert ready, f"the producer pinned to {node_id[:12]} did not finish within 180 s"
    assert locations(ref, lambda nodes: bool(nodes)) == [node_id]
    return ref


@fastgpu.task(work_s=0.1)
def read(x, hold_s: float = 0.0):
    """Reads its input; returns (first byte, size, node). ``hold_s`` keeps the GPU busy that long."""
    time.sleep(hold_s)
    return int(x[0]), int(x.size), ray.get_runtime_context().get_node_id()


def test_runs_on_the_node_holding_its_input_when_a_gpu_is_free(cluster):
    x_node = cluster.node_ids()[1]
    for fill, node in ((5, x_node), (6, cluster.node_ids()[2])):
        ref = read.remote(produced_on(node, fill))
        assert ray.get(ref, timeout=120) == (fill, 16 * MiB, node)
    rec = fastgpu.explain(ref)
    terms = {c.node: c.terms for c in rec.explanation.candidates}
    assert terms[node]["move_bytes"] == 0
    assert all(t["move_bytes"] >= 16 * MiB for n, t in terms.items() if n != node)
    assert any("transfer to" in h and "nothing to move" in h for h in rec.history), rec.history


def test_runs_elsewhere_when_its_node_is_busy_long_enough_and_never_hangs(cluster):
    x_node = cluster.node_ids()[0]
    hogs = [read.options(work_s=20.0).remote(produced_on(x_node, 1), 20.0) for _ in range(2)]
    deadline = time.time() + 60
    while time.time() < deadline:  # both of X's GPUs taken by the hogs (they went to their data)
        recs = [fastgpu.explain(h) for h in hogs]
        if all(r.state == "running" for r in recs):
            break
        time.sleep(0.2)
    assert [r.node for r in recs] == [x_node, x_node], [r.history for r in recs]
    t0 = time.time()
    ref = read.remote(produced_on(x_node, 9))
    fill, size, ran_on = ray.get(ref, timeout=60)
    assert (fill, size) == (9, 16 * MiB) and ran_on != x_node
    assert time.time() - t0 < 15  # did not wait for the hogs (20 s)
    rec = fastgpu.explain(ref)
    assert any("transfer to" in h and "16.0 MiB from" in h for h in rec.history), rec.history
    for h in hogs:
        ray.cancel(h)


def test_input_lost_with_its_node_is_rebuilt_by_lineage(cluster):
    """The input's only copy dies with its node; Ray re-runs the producer elsewhere and the subtask still
    gets the right bytes (fastgpu re-places it if it was running there)."""
    victim = cluster.nodes[2]
    ref_in = produced_on(victim.node_id, 42, soft=True)  # soft: the producer may re-run elsewhere
    out = read.options(work_s=2.0).remote(ref_in, 2.0)
    time.sleep(0.5)
    cluster.cluster.remove_node(victim)
    cluster.nodes.remove(victim)
    fill, size, ran_on = ray.get(out, timeout=180)
    assert (fill, size) == (42, 16 * MiB) and ran_on != victim.node_id
    # the input exists again, on a live node: Ray re-ran its producer (lineage reconstruction)
    nodes = locations(ref_in, lambda ns: bool(ns) and victim.node_id not in ns)
    assert nodes and victim.node_id not in nodes
    rec = fastgpu.explain(out)
    assert rec.state == "finished"


def test_prefetch_pulls_to_the_node_and_the_probe_measures_a_link(cluster):
    from transfer.ray_hooks import Prefetcher, measure_link_bandwidth

    a, b = cluster.node_ids()[0], cluster.node_ids()[1]
    ref = produced_on(a, 3, mib=8)
    pf = Prefetcher(timeout_s=60)
    try:
        pull = pf.prefetch(b, [ref, "not a ref"])
        assert ray.get(pull, timeout=60) == 1
        assert set(locations(ref, lambda ns: set(ns) == {a, b})) == {a, b}
        assert pf.prefetch(b, []) is None and pf.calls == 1
    finally:
        pf.close()
    bps = measure_link_bandwidth(a, b, nbytes=4 * MiB)
    assert bps > 1e6  # one machine: memory speed, far above any network; the point is it answers
    with pytest.raises(ValueError):
        measure_link_bandwidth(a, a)
