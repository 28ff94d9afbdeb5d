"""fastgpu.train without a cluster: snapshot conversion, gang planning from live load, rank order, args.

These exercise the pure pieces ``train`` is built from; tests/test_train_cluster.py runs them for real.
"""
from __future__ import annotations

import pytest

from fastgpu_ray.training import (TrainError, TrainPlacementError, order_ranks, plan_gang, restrict_to_ray,
                               snapshot_from_ray, train)
from placement import GpuSpec, NodeSpec, Snapshot


def ray_node(nid, cpu=4, gpu=2, alive=True):
    res = {"CPU": float(cpu), "memory": 8.0 * 2**30} | ({"GPU": float(gpu)} if gpu else {})
    return {"NodeID": nid, "Alive": alive, "Resources": res}


def node(name, utils, cpu=8000, cpu_used=0, used=()):
    gpus = tuple(GpuSpec(model="GPU", util=u, milli_used=1000 if i in used else 0) for i, u in enumerate(utils))
    return NodeSpec(name=name, cpu_milli=cpu, memory_mib=16384, gpus=gpus, cpu_used=cpu_used)


def test_snapshot_from_ray_marks_taken_gpus_and_skips_dead_nodes():
    nodes = [ray_node("a", gpu=4), ray_node("b", gpu=0, cpu=2), ray_node("dead", gpu=2, alive=False)]
    avail = {"a": {"CPU": 1.5, "GPU": 1.0}, "b": {"CPU": 2.0}}
    snap = snapshot_from_ray(nodes, avail)
    assert [n.name for n in snap.nodes] == ["a", "b"]
    a, b = snap.nodes
    assert [g.milli_used for g in a.gpus] == [0, 1000, 1000, 1000]  # 3 of 4 taken in Ray (highest when idle)
    assert (a.cpu_milli, a.cpu_used) == (4000, 2500)
    assert b.gpus == () and b.cpu_used == 0
    assert a.memory_mib == 8192


def test_restrict_to_ray_marks_the_most_loaded_free_gpus_as_taken():
    snap = Snapshot((node("a", [0.1, 0.9, 0.5, 0.0], used={3}),))
    # Ray can hand out only 1 GPU on "a" (another holder has the rest): keep the least loaded free one.
    out = restrict_to_ray(snap, {"a": {"GPU": 1.0, "CPU": 8.0}})
    assert [g.milli_used for g in out.nodes[0].gpus] == [0, 1000, 1000, 1000]
    # Everything available: nothing changes.
    same = restrict_to_ray(snap, {"a": {"GPU": 3.0, "CPU": 8.0}})
    assert [g.milli_used for g in same.nodes[0].gpus] == [0, 0, 0, 1000]
    # CPU Ray does not have counts as used.
    assert restrict_to_ray(snap, {"a": {"GPU": 3.0, "CPU": 2.0}}).nodes[0].cpu_used == 6000


def test_gang_avoids_the_loaded_node():
    snap = Snapshot((node("busy", [0.95, 0.9]), node("idle", [0.0, 0.0]), node("half", [0.0, 0.9])))
    plan = plan_gang(snap, num_workers=2, gpus_per_worker=1, cpus_per_worker=1, policy="fastgpu")
    assert sorted(a.node for a in plan.assignments) == ["idle", "idle"]
    # A third rank: the idle GPU of "half" beats either loaded GPU.
    plan3 = plan_gang(snap, num_workers=3, gpus_per_worker=1, cpus_per_worker=1, policy="fastgpu")
    placed = sorted((a.node, a.gpus) for a in plan3.assignments)
    assert placed == [("half", (0,)), ("idle", (0,)), ("idle", (1,))]


def test_gang_that_does_not_fit_now_fails_at_once_with_the_reason():
    snap = Snapshot((node("a", [0.0, 0.0]), node("b", [0.0, 0.0], used={0, 1})))
    with pytest.raises(TrainPlacementError, match=r"only 2 of 3 ranks fit now") as ei:
        plan_gang(snap, num_workers=3, gpus_per_worker=1, cpus_per_worker=1, policy="fastgpu")
    assert len(ei.value.plan.unplaced) == 1 and not ei.value.plan.unplaced[0].never


def test_rank_that_can_never_fit_names_the_largest_node():
    snap = Snapshot((node("a", [0.0, 0.0]), node("b", [0.0])))
    with pytest.raises(TrainPlacementError, match=r"no node could ever hold one rank.*the most GPUs on one node is 2"):
        plan_gang(snap, num_workers=1, gpus_per_worker=4, cpus_per_worker=1, policy="fastgpu")


def test_cpu_only_gang_respects_cpu_capacity():
    snap = Snapshot((node("a", [], cpu=2000), node("b", [], cpu=2000, cpu_used=1000)))
    plan = plan_gang(snap, num_workers=3, gpus_per_worker=0, cpus_per_worker=1, policy="fastgpu")
    per_node = {}
    for a in plan.assignments:
        per_node[a.node] = per_node.get(a.node, 0) + 1
    assert per_node == {"a": 2, "b": 1}
    with pytest.raises(TrainPlacementError):
        plan_gang(snap, num_workers=4, gpus_per_worker=0, cpus_per_worker=1, policy="fastgpu")


def test_ranks_on_one_node_are_contiguous_and_rank0_is_on_the_first_node():
    from placement import Assignment, Plan
    plan = Plan(tuple(Assignment(f"rank{i}", n, 0, (g,)) for i, (n, g) in
                      enumerate([("x", 0), ("y", 0), ("x", 1), ("y", 1), ("z", 0)])), ())
    assert order_ranks(plan, 5) == [("x", (0,), 0), ("x", (1,), 1), ("y", (0,), 0), ("y", (1,), 1), ("z", (0,), 0)]


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_workers=0), "num_workers must be an int >= 1"),
    (dict(num_workers=2.0), "num_workers must be an int >= 1"),
    (dict(num_workers=2, gpus_per_worker=0.5), "gpus_per_worker must be a whole number"),
    (dict(num_workers=2, gpus_per_worker=-1), "gpus_per_worker must be a whole number"),
    (dict(num_workers=2, backend="mpi"), "backend must be one of"),
    (dict(num_workers=2, gpus_per_worker=0, cpus_per_worker=0), "cpus_per_worker must be > 0"),
    (dict(num_workers=2, timeout_s=0), "timeouts must be > 0"),
])
def test_bad_arguments_fail_before_anything_starts(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train(lambda c: c, **kwargs)


def test_train_fn_must_be_callable():
    with pytest.raises(TypeError, match="train_fn must be callable"):
        train("not a function", num_workers=1)


def test_train_without_ray_says_how_to_connect():
    import ray
    if ray.is_initialized():
        pytest.skip("a Ray session is open in this process")
    with pytest.raises(TrainError, match=r"call fastgpu.init\(\)"):
        train(lambda c: c, num_workers=1, gpus_per_worker=0, backend=None)


def test_auto_backend_is_nccl_only_for_cuda_visible_gpus():
    from fastgpu_ray.training import resolve_backend
    assert resolve_backend("auto", holds_gpus=True, cuda_visible=True) == "nccl"
    assert resolve_backend("auto", holds_gpus=True, cuda_visible=False) == "gloo"  # emulated GPUs
    assert resolve_backend("auto", holds_gpus=False, cuda_visible=True) == "gloo"  # CPU ranks
    assert resolve_backend("gloo", holds_gpus=True, cuda_visible=True) == "gloo"
    assert resolve_backend(None, holds_gpus=True, cuda_visible=True) is None


def test_gang_that_fits_a_moment_later_is_placed_within_the_window():
    """A snapshot taken while another job was still releasing: re-planned on fresh snapshots."""
    from fastgpu_ray.training import _plan_within
    busy = Snapshot((node("a", [0.0, 0.0], used={0, 1}),))
    free = Snapshot((node("a", [0.0, 0.0]),))
    calls = []

    def snapshots():
        calls.append(1)
        return (busy if len(calls) < 3 else free), "fake"

    plan, _, source = _plan_within(snapshots, 2, 1, 1, "fastgpu", wait_s=10)
    assert len(plan.assignments) == 2 and len(calls) == 3 and source == "fake"
    calls.clear()
    with pytest.raises(TrainPlacementError, match="only 0 of 2 ranks fit now"):
        _plan_within(lambda: (busy, "fake"), 2, 1, 1, "fastgpu", wait_s=0)


def test_never_fitting_gang_is_not_retried():
    import time
    from fastgpu_ray.training import _plan_within
    t0 = time.monotonic()
    with pytest.raises(TrainPlacementError, match="no node could ever hold one rank"):
        _plan_within(lambda: (Snapshot((node("a", [0.0]),)), "fake"), 1, 2, 1, "fastgpu", wait_s=30)
    assert time.monotonic() - t0 < 5
