"""fastgpu.train on a real multi-node Ray cluster (ray.cluster_utils.Cluster, logical GPUs).

Head: 1 CPU, no GPU. Two workers: 2 CPUs + 2 logical GPUs each. Every test checks that Ray's available
resources are back to the totals afterwards: a run leaves nothing allocated, whether it succeeds or not.
"""
from __future__ import annotations

import os
import pathlib
import sys
import time
from dataclasses import replace

import pytest

pytestmark = pytest.mark.cluster

ray = pytest.importorskip("ray")

from fastgpu_ray.training import (TrainFnError, TrainPlacementError, TrainWorkerDied, get_context,  # noqa: E402
                               ray_snapshot, train)


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    c = Cluster(initialize_head=True, head_node_args=dict(num_cpus=1, num_gpus=0, include_dashboard=False,
                                                          object_store_memory=80 * 2**20))
    gpu_nodes = [c.add_node(num_cpus=2, num_gpus=2, object_store_memory=80 * 2**20) for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address)
    # The train_fns below live in this test module, which the rank processes cannot import: ship them
    # by value, as cloudpickle does for a user's __main__ script.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        yield c, [n.node_id for n in gpu_nodes]
    finally:
        ray.shutdown()
        c.shutdown()


def wait_all_released(timeout_s=20.0):
    """Ray's resource view lags a kill by up to a heartbeat or two: poll, never sleep blindly."""
    total = ray.cluster_resources()
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        avail = ray.available_resources()
        if all(avail.get(k, 0) == v for k, v in total.items() if k in ("CPU", "GPU")):
            return
        time.sleep(0.2)
    raise AssertionError(f"resources not released: available {ray.available_resources()} vs total {total}")


def rank_report(config):
    """No torch: report who and where this rank is (backend=None run)."""
    ctx = get_context()
    return {"rank": ctx.rank, "world": ctx.world_size, "local": ctx.local_rank, "node": ctx.node_id,
            "env": (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["MASTER_ADDR"]),
            "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"), "scale": config["scale"] * ctx.rank}


def test_gang_spans_nodes_ranks_in_order_and_nothing_left(cluster):
    _, gpu_nodes = cluster
    res = train(rank_report, num_workers=4, gpus_per_worker=1, config={"scale": 10}, backend=None)
    assert [r["rank"] for r in res] == [0, 1, 2, 3]
    assert [r["scale"] for r in res] == [0, 10, 20, 30]
    assert all(r["world"] == 4 for r in res)
    # Four 1-GPU ranks on two 2-GPU nodes: both nodes, two ranks each, contiguous, local ranks 0,1.
    assert sorted(set(res.nodes())) == sorted(gpu_nodes)
    assert res.nodes()[0] == res.nodes()[1] != res.nodes()[2] == res.nodes()[3]
    assert [r["local"] for r in res] == [0, 1, 0, 1]
    # Each rank ran where the plan put it, and holds its own GPU.
    assert all(w.node_id == w.planned_node for w in res.workers)
    assert sorted(res.nodes()) == sorted(a.node for a in res.plan.assignments)
    assert [r["node"] for r in res] == res.nodes()
    assert [w.node_id for w in res.workers] == res.nodes()
    per_node = {}
    for r in res:
        per_node.setdefault(r["node"], set()).add(r["gpus"])
    assert all(len(v) == 2 for v in per_node.values())
    assert [r["env"][0] for r in res] == ["0", "1", "2", "3"]
    wait_all_released()


def test_bundles_follow_placement_away_from_a_loaded_node(cluster):
    _, gpu_nodes = cluster
    busy, idle = gpu_nodes

    def loaded_snapshot():
        snap = ray_snapshot()
        nodes = tuple(replace(n, gpus=tuple(replace(g, util=0.95, external_processes=1) for g in n.gpus))
                      if n.name == busy else n for n in snap.nodes)
        return replace(snap, nodes=nodes)

    res = train(rank_report, num_workers=2, gpus_per_worker=1, config={"scale": 1}, backend=None,
                snapshot_fn=loaded_snapshot)
    assert res.nodes() == [idle, idle]
    # And the other way round: the bundles go wherever placement says, not where Ray's PACK would.
    busy, idle = idle, busy
    res = train(rank_report, num_workers=2, gpus_per_worker=1, config={"scale": 1}, backend=None,
                snapshot_fn=loaded_snapshot)
    assert res.nodes() == [idle, idle]
    wait_all_released()


def test_live_telemetry_steers_the_gang_away_from_a_loaded_node(cluster):
    """The product path: a fastgpu session's live snapshot (emulated load set through the runtime's API),
    no snapshot_fn. Loaded one way, then the other, so the choice cannot be luck."""
    import fastgpu_ray as fastgpu
    from fastgpu_ray.session import cluster_snapshot
    c, gpu_nodes = cluster
    fastgpu.init(address=c.address)  # reuses this process's Ray connection
    try:
        for busy, idle in (gpu_nodes, gpu_nodes[::-1]):
            for node_id in gpu_nodes:
                for g in range(2):
                    load = 0.9 if node_id == busy else 0.0
                    fastgpu.set_emulated_gpu(node_id, g, util=load, processes=int(load > 0))
            end = time.monotonic() + 15
            while time.monotonic() < end:  # monitors poll about once a second
                snap = cluster_snapshot()
                utils = {n.name: [g.util for g in n.gpus] for n in snap.nodes}
                if utils.get(busy) == [0.9, 0.9] and utils.get(idle) == [0.0, 0.0]:
                    break
                time.sleep(0.3)
            res = train(rank_report, num_workers=2, gpus_per_worker=1, config={"scale": 1}, backend=None)
            assert res.snapshot_source == "fastgpu live telemetry"
            assert res.nodes() == [idle, idle]
            wait_all_released()
    finally:
        fastgpu.shutdown()
    wait_all_released()


def test_torch_allreduce_across_nodes_with_gloo(cluster):
    pytest.importorskip("torch")

    def allreduce(config):
        import torch
        import torch.distributed as dist
        ctx = get_context()
        x = torch.tensor([float(ctx.rank + 1)])
        dist.all_reduce(x)
        return dist.get_backend(), dist.get_world_size(), x.item(), ctx.device

    res = train(allreduce, num_workers=3, gpus_per_worker=1)
    assert res.backend == "gloo"  # logical GPUs, no CUDA: gloo
    assert list(res) == [("gloo", 3, 6.0, "cpu")] * 3
    assert len(set(res.nodes())) == 2
    wait_all_released()


def test_dead_worker_fails_the_run_naming_rank_and_node(cluster):
    pytest.importorskip("torch")

    def crash_rank_2(config):
        import torch.distributed as dist
        if get_context().rank == 2:
            os._exit(3)  # the process dies as a segfault or the OOM killer would end it
        dist.barrier()
        return "survived"

    with pytest.raises(TrainWorkerDied) as ei:
        train(crash_rank_2, num_workers=4, gpus_per_worker=1)
    err = ei.value
    assert err.rank == 2
    assert f"rank 2 on node {err.node_id}" in str(err)
    assert err.node_id in cluster[1]
    wait_all_released()


def test_train_fn_error_names_rank_and_keeps_the_cause(cluster):
    def fail_on_rank_1(config):
        if get_context().rank == 1:
            raise KeyError("missing shard 7")
        return "ok"

    with pytest.raises(TrainFnError, match=r"rank 1 on node \w+ .* KeyError") as ei:
        train(fail_on_rank_1, num_workers=2, gpus_per_worker=1, backend=None)
    assert ei.value.rank == 1
    assert isinstance(ei.value.__cause__, KeyError)
    wait_all_released()


def test_gang_larger_than_the_cluster_fails_at_once(cluster):
    t0 = time.monotonic()
    with pytest.raises(TrainPlacementError, match=r"only 4 of 5 ranks fit now"):
        train(rank_report, num_workers=5, gpus_per_worker=1, config={"scale": 1}, backend=None, place_timeout_s=0)
    with pytest.raises(TrainPlacementError, match=r"no node could ever hold one rank"):
        train(rank_report, num_workers=1, gpus_per_worker=3, config={"scale": 1}, backend=None)
    assert time.monotonic() - t0 < 10
    wait_all_released()


def test_placement_group_that_cannot_be_reserved_times_out_and_is_removed(cluster):
    """Placement saw capacity Ray cannot give (a stale view): bounded wait, then a clear error."""
    def phantom_capacity():
        snap = ray_snapshot()
        gpu_node = next(n for n in snap.nodes if n.gpus)
        extra = replace(gpu_node, name="f" * 56)  # a node that is not in Ray
        return replace(snap, nodes=(extra,))

    t0 = time.monotonic()
    with pytest.raises(TrainPlacementError, match=r"could not reserve the gang's placement group within 2 s"):
        train(rank_report, num_workers=1, gpus_per_worker=1, config={"scale": 1}, backend=None,
              ready_timeout_s=2, snapshot_fn=phantom_capacity)
    assert time.monotonic() - t0 < 15
    assert all(t["state"] == "REMOVED" for t in ray.util.placement_group_table().values())
    wait_all_released()


def test_whole_run_timeout_stops_a_hung_rank(cluster):
    def hang_on_rank_0(config):
        if get_context().rank == 0:
            time.sleep(600)
        return "ok"

    t0 = time.monotonic()
    with pytest.raises(Exception, match=r"timed out in train_fn: rank\(s\) \[0\]"):
        train(hang_on_rank_0, num_workers=2, gpus_per_worker=1, backend=None, timeout_s=15)
    assert time.monotonic() - t0 < 30
    wait_all_released()


def test_node_lost_mid_run_names_the_node_and_releases_the_rest(cluster, tmp_path):
    """A whole node goes away while its ranks train: the error names a rank on it and that node."""
    import threading
    c, _ = cluster
    doomed = c.add_node(num_cpus=2, num_gpus=2)
    c.wait_for_nodes()
    marker = tmp_path / "started"

    def only_doomed():
        snap = ray_snapshot()
        return replace(snap, nodes=tuple(n for n in snap.nodes if n.name == doomed.node_id))

    def long_step(config):
        if get_context().rank == 0:
            pathlib.Path(config["marker"]).write_text("x")  # one machine: the test can see it
        time.sleep(120)
        return "finished"

    def kill_when_started():
        end = time.monotonic() + 90
        while not marker.exists() and time.monotonic() < end:
            time.sleep(0.2)
        c.remove_node(doomed)

    killer = threading.Thread(target=kill_when_started, daemon=True)
    killer.start()
    with pytest.raises(TrainWorkerDied) as ei:
        train(long_step, num_workers=2, gpus_per_worker=1, config={"marker": str(marker)}, backend=None,
              snapshot_fn=only_doomed, timeout_s=100)
    killer.join(timeout=30)
    assert ei.value.node_id == doomed.node_id
    assert ei.value.rank in (0, 1)
    assert f"on node {doomed.node_id}" in str(ei.value)
    wait_all_released()
