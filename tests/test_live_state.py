"""LiveState: the round's placement state kept between rounds, rebuilt row by row, equals a full rebuild."""
from __future__ import annotations

import random

import numpy as np

from placement import ClusterState, Demand
from fastgpu_ray.core.live_state import LiveState
from fastgpu_ray.core.telemetry import GpuHold, NodeInfo, NodeTelemetry, build_snapshot
from fastgpu_ray.gpu_sources import GpuReading

ARRAYS = ("cpu_cap", "mem_cap", "cpu_left", "mem_left", "gpu_count", "real", "free", "gmem_cap", "gmem_free",
          "model", "load", "external", "busy", "alive", "F", "max_free", "nfull", "rank")


def assert_same(a: ClusterState, b: ClusterState) -> None:
    assert a.names == b.names and a.model_names == b.model_names
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.has_live == b.has_live and a.max_side_by_side == b.max_side_by_side


def reading(rng: random.Random, node: str, gpus: int, model: str) -> NodeTelemetry:
    return NodeTelemetry(node, False, tuple(
        GpuReading(g, model, 16384, rng.choice((0, 500, 4000)), rng.choice((0.0, 0.3, 0.9)),
                   processes=(100 + g,) if rng.random() < 0.5 else (), process_memory_mib=(300,))
        for g in range(gpus)), frozenset({100, 101}))


def test_row_by_row_updates_equal_a_full_rebuild_over_random_changes():
    rng = random.Random(7)
    models = {f"n{i:02d}": ("A100" if i % 3 else "V100") for i in range(12)}
    width = {n: 2 + (i % 3) for i, n in enumerate(models)}
    nodes = [NodeInfo(n, True, 8, 8, 64 << 30, width[n], width[n]) for n in models]
    tel = {n: reading(rng, n, width[n], models[n]) for n in models}
    holds: dict = {}
    live = LiveState()
    for step in range(300):
        what = rng.randrange(6)
        i = rng.randrange(len(nodes))
        n = nodes[i]
        if what == 0:  # a new reading for one node
            tel[n.node_id] = reading(rng, n.node_id, width[n.node_id], models[n.node_id])
        elif what == 1:  # a hold changes in place (as Reservations mutates them)
            h = holds.setdefault((n.node_id, rng.randrange(n.gpu_total)), GpuHold(slot_cap=4))
            h.milli_used = rng.choice((0, 250, 1000))
            h.memory_reserved_mib = rng.choice((0, 2000))
            h.calls = rng.randrange(5)
            h.util_declared = rng.choice((0.0, 0.5))
            h.claiming = rng.random() < 0.2  # a worker for it still starting (shown held, counted apart)
        elif what == 2 and holds:  # a worker goes
            holds.pop(rng.choice(sorted(holds)))
        elif what == 3:  # Ray's view of the node changes (other work takes GPUs; the node dies)
            nodes[i] = NodeInfo(n.node_id, rng.random() > 0.1, 8, rng.choice((8, 2)), 64 << 30, n.gpu_total,
                                rng.randrange(n.gpu_total + 1))
        elif what == 5:  # a node's reading goes (its GPUs show the default model) or comes with another model
            if rng.random() < 0.5:
                tel.pop(n.node_id, None)
            else:
                models[n.node_id] = rng.choice(("A100", "V100"))
                tel[n.node_id] = reading(rng, n.node_id, width[n.node_id], models[n.node_id])
        elif what == 4 and step % 50 == 49:  # a node joins (the list changes: a full rebuild)
            name = f"m{step}"
            models[name], width[name] = "H100", 8
            nodes.append(NodeInfo(name, True, 8, 8, 64 << 30, 8, 8))
            tel[name] = reading(rng, name, 8, "H100")
        busy = {k: rng.random() * 3 for k in rng.sample(sorted(holds), min(len(holds), rng.randrange(3)))}
        got = live.state(nodes, tel, holds, busy, max_side_by_side=4)
        want = ClusterState.from_snapshot(build_snapshot(nodes, tel, holds, busy))
        want.max_side_by_side = 4
        assert_same(got, want)


def test_a_round_rebuilds_only_the_nodes_that_changed_and_its_binds_stay_in_its_copy():
    nodes = [NodeInfo(f"n{i}", True, 8, 8, 64 << 30, 4, 4) for i in range(100)]
    tel = {n.node_id: reading(random.Random(1), n.node_id, 4, "A100") for n in nodes}
    holds = {("n5", 0): GpuHold(milli_used=1000, running=1, calls=1)}
    live = LiveState()
    first = live.state(nodes, tel, holds, {}, 8)
    assert live.rebuilt == 100
    first.bind(3, (1,), Demand("d", num_gpus=1))
    holds[("n5", 0)].milli_used = 0  # its work ended
    holds[("n7", 2)] = GpuHold(milli_used=500)  # work started on another
    second = live.state(nodes, tel, holds, {("n7", 2): 1.5}, 8)
    assert live.rebuilt == 102  # n5 and n7, not the 98 others
    assert second.free[3, 1] == 1000  # the first round's bind stayed in its copy
    assert second.free[5, 0] == 1000 and second.busy[7, 2] == 1.5 and second.free[7, 2] == 1000
    third = live.state(nodes, tel, holds, {("n7", 2): 1.2}, 8)  # only the clock moved
    assert live.rebuilt == 102 and third.busy[7, 2] == 1.2
