"""What the cluster can grow into (fastgpu_ray.core.scaling) and the router's wait-or-fail decision on an
autoscaling cluster, without Ray."""
from __future__ import annotations

import pytest
from placement import Demand, GpuSpec, NodeSpec
from placement.cost import CostModel

from fastgpu_ray.core.routing import Router
from fastgpu_ray.core.scaling import NodeType, Scaling, demand_bundles, parse_idle_timeout, parse_node_types

AWS_LIKE = {
    "cluster_name": "x", "max_workers": 6, "idle_timeout_minutes": 2, "head_node_type": "head",
    "available_node_types": {
        "head": {"resources": {"CPU": 8}, "node_config": {}},
        "gpu4": {"resources": {"CPU": 16, "GPU": 4}, "min_workers": 0, "max_workers": 3, "node_config": {}},
        "gpu8": {"resources": {"CPU": 32, "GPU": 8}, "max_workers": 10, "node_config": {}},
        "cpu": {"resources": {"CPU": 16}, "node_config": {}},
    },
}


def test_node_types_from_a_cluster_launcher_config():
    types = {t.name: t for t in parse_node_types(AWS_LIKE)}
    assert types["gpu4"] == NodeType("gpu4", 4, 3, 16.0)
    assert types["gpu8"].max_workers == 6  # capped by the cluster's max_workers
    assert types["head"].max_workers == 0  # the head type launches no workers unless it says so
    assert types["cpu"].gpus == 0 and types["cpu"].max_workers == 6
    assert parse_idle_timeout(AWS_LIKE) == 120.0
    assert parse_idle_timeout({}) == 300.0  # Ray's default: 5 minutes
    with pytest.raises(ValueError, match="available_node_types"):
        parse_node_types({"provider": {}})


def scaling(**kw) -> Scaling:
    return Scaling(autoscaler=True, types=parse_node_types(AWS_LIKE), **kw)


def test_which_node_type_a_subtask_waits_for():
    sc = scaling()
    assert sc.launch_for(1).name == "gpu4"  # the smallest that holds it
    assert sc.launch_for(6).name == "gpu8"
    assert sc.launch_for(9) is None
    assert sc.largest().name == "gpu8"
    # one being launched is preferred; a type at its maximum is not chosen while another has room
    assert scaling(launching={"gpu8": 1}).launch_for(2).name == "gpu8"
    assert scaling(nodes={"gpu4": 3}).launch_for(2).name == "gpu8"
    assert not scaling(nodes={"gpu4": 3, "gpu8": 6}).can_grow(1)
    assert scaling(nodes={"gpu4": 3}).can_grow(1)
    # types with nodes up are skipped when live nodes were found unable to hold the subtask
    assert scaling(nodes={"gpu4": 1}).launch_for(2, unseen_only=True).name == "gpu8"
    assert Scaling(autoscaler=True, types=None).can_grow(1)  # unknown types: maybe
    assert not Scaling().can_grow(1)  # no autoscaler


def test_fastgpu_keeps_idle_gpus_a_fifth_of_the_autoscalers_idle_timeout():
    assert Scaling(autoscaler=True, idle_timeout_s=300.0).hold_idle_s() == 60.0
    assert Scaling(autoscaler=True, idle_timeout_s=1.0).hold_idle_s() == 0.5  # floor


def test_demand_is_shaped_like_the_backlog():
    b = demand_bundles(3, [2.0, 1.0, 0.25, 0.25, 0.5, 0.3])
    assert b[:3] == [{"GPU": 1.0}] * 3  # work on live nodes
    assert {"GPU": 2.0} in b  # a 2-GPU subtask needs one node with 2 GPUs
    assert sum(x["GPU"] for x in b) == 3 + 2 + 1 + 2  # fractions packed: 1.3 GPUs -> 2 whole ones
    assert demand_bundles(0, []) == []


def node(name: str, gpus: int = 2, busy: float = 0.0) -> NodeSpec:
    return NodeSpec(name, 4000, 16384, tuple(GpuSpec(model="E", memory_mib=16384, busy_s=busy) for _ in range(gpus)))


def demand(i=0, num_gpus=1, **kw) -> Demand:
    return Demand(id=f"d{i}", num_gpus=num_gpus, gpu_milli=1000, work_s=1.0, **kw)


def router(sc: Scaling, *nodes, wait_s=600.0) -> Router:
    r = Router("fastgpu", cost=lambda: CostModel(link_bandwidth=125e6), scale_wait_s=wait_s)
    r.scaling = sc
    r.update(nodes)
    return r


def test_at_zero_gpu_nodes_a_subtask_waits_for_a_launchable_type():
    r = router(scaling())
    route = r.choose(demand(0, num_gpus=2))
    assert route.node is None and route.never is None
    assert "gpu4" in route.wait and route.wait_s is None


def test_larger_than_every_launchable_type_fails_at_once_naming_the_largest():
    route = router(scaling()).choose(demand(0, num_gpus=16))
    assert route.wait is None and "gpu8 (8 GPU(s) per node" in route.never
    route = router(scaling(), node("a", 2)).choose(demand(0, num_gpus=16))
    assert route.wait is None and "gpu8 (8 GPU(s) per node" in route.never


def test_no_gpu_node_and_no_autoscaler_says_so():
    route = router(Scaling()).choose(demand(0))
    assert route.wait is None
    assert "no live node with a GPU" in route.never and "no autoscaler" in route.never
    assert "GPU 0" not in route.never


def test_unknown_node_types_wait_a_bounded_time():
    route = router(Scaling(autoscaler=True, types=None), wait_s=30.0).choose(demand(0))
    assert route.wait_s == 30.0 and "fails after 30 s" in route.wait


def test_a_backlog_beyond_busy_gpus_waits_for_growth_only_where_the_cluster_can_grow():
    grow = router(scaling(), node("a", 2))
    assert grow.choose(demand(0)).node == "a" and grow.choose(demand(1)).node == "a"  # free GPUs first
    assert grow.choose(demand(2)).wait is not None  # both busy now: the lobby, for whichever node frees first
    full = router(scaling(nodes={"gpu4": 3, "gpu8": 6}), node("a", 2, busy=5.0))
    assert full.choose(demand(0)).node == "a"  # nothing more can be launched: queue on a live node
    static = router(Scaling(), node("a", 2, busy=5.0))
    assert static.choose(demand(0)).node == "a"


def test_a_type_whose_gpus_are_not_declared_is_waited_for_a_bounded_time():
    cfg = {"max_workers": 2, "available_node_types": {"auto": {"resources": {}, "node_config": {}}}}
    sc = Scaling(autoscaler=True, types=parse_node_types(cfg))
    assert sc.types[0].gpus is None and sc.largest() is None
    route = router(sc, wait_s=20.0).choose(demand(0, num_gpus=4))
    assert route.wait_s == 20.0 and "does not declare" in route.wait
