"""The request-in / plan-out call: assignments, unplaced demands as data, explanations."""
import numpy as np
import pytest

from placement import ClusterState, Demand, GpuSpec, NodeSpec, PlacementRequest, Scheduler, Snapshot, create, schedule
from placement.model import GPU_MILLI
from tests.helpers_placement import node, state


def test_plan_places_demands_and_returns_unplaced_with_reasons():
    snap = Snapshot((node("a", gpus=2), node("b", gpus=1)))
    demands = (Demand("two", num_gpus=2, gpu_milli=1000), Demand("one", num_gpus=1, gpu_milli=1000),
               Demand("more", num_gpus=1, gpu_milli=1000))
    plan = schedule(PlacementRequest(snap, demands), "best-fit")
    got = plan.by_id()
    assert got["two"].node == "a" and sorted(got["two"].gpus) == [0, 1]
    assert got["one"].node == "b" and got["one"].gpus == (0,)
    assert [u.demand_id for u in plan.unplaced] == ["more"]
    assert not plan.unplaced[0].never  # it fits once something finishes
    assert "now" in plan.unplaced[0].reason


def test_never_fits_is_reported_at_once_naming_the_largest_gpu():
    snap = Snapshot((node("small", gpus=1, gpu_mem=16000), node("big", gpus=2, gpu_mem=80000)))
    plan = schedule(PlacementRequest(snap, (Demand("huge", num_gpus=1, gpu_memory_mib=100000),)))
    (u,) = plan.unplaced
    assert u.never
    assert "big" in u.reason and "80000 MiB" in u.reason


def test_priority_orders_demands_within_one_request():
    snap = Snapshot((node("a", gpus=1),))
    demands = (Demand("low", num_gpus=1, gpu_milli=1000, priority=1),
               Demand("high", num_gpus=1, gpu_milli=1000, priority=5))
    plan = schedule(PlacementRequest(snap, demands), "fgd")
    assert [a.demand_id for a in plan.assignments] == ["high"]
    assert [u.demand_id for u in plan.unplaced] == ["low"]


def test_gpu_memory_packs_several_demands_per_gpu_while_memory_fits():
    snap = Snapshot((node("a", gpus=2, gpu_mem=24000),))
    demands = tuple(Demand(f"d{i}", num_gpus=1, gpu_memory_mib=10000) for i in range(5))
    plan = schedule(PlacementRequest(snap, demands), "best-fit")
    per_gpu = {}
    for a in plan.assignments:
        per_gpu.setdefault(a.gpus, []).append(a.demand_id)
    assert sorted(len(v) for v in per_gpu.values()) == [2, 2]  # 2 x 10 GiB fit in 24 GiB, 3 do not
    assert [u.demand_id for u in plan.unplaced] == ["d4"]


def test_live_memory_use_outside_fastgpu_is_respected():
    busy = GpuSpec("A10", memory_mib=24000, memory_used_mib=20000, external_processes=1)
    idle = GpuSpec("A10", memory_mib=24000)
    snap = Snapshot((NodeSpec("a", 8000, 64000, (busy, idle)),))
    plan = schedule(PlacementRequest(snap, (Demand("x", num_gpus=1, gpu_memory_mib=8000),)), "best-fit")
    assert plan.assignments[0].gpus == (1,)


def test_gpu_type_constraint_filters_models():
    snap = Snapshot((node("t4", model="T4"), node("v100", model="V100M32")))
    plan = schedule(PlacementRequest(snap, (Demand("x", num_gpus=1, gpu_milli=500, gpu_types=("V100M32",)),)))
    assert plan.assignments[0].node == "v100"


def test_explanation_lists_candidates_terms_and_winner():
    snap = Snapshot((node("a", used=(500, 0)), node("b")))
    plan = schedule(PlacementRequest(snap, (Demand("x", num_gpus=1, gpu_milli=500),)), "fgd")
    (e,) = plan.explanations
    assert e.winner == plan.assignments[0].node
    assert {c.node for c in e.candidates} == {"a", "b"}
    assert all({"frag_before", "frag_after", "score"} <= set(c.terms) for c in e.candidates)
    assert "fgd" in e.format()


def test_explanations_list_the_best_candidates_and_count_the_rest_and_terms_follow_the_state():
    """At more feasible nodes than EXPLAIN_TOP, the explanation lists that many (the winner among them)
    and counts the others; the fastgpu policy's terms reuse its last score's only while nothing changed."""
    from placement import scheduler as sched_mod

    n = sched_mod.EXPLAIN_TOP + 5
    snap = Snapshot(tuple(NodeSpec(f"n{i:02d}", 8000, 32000, (GpuSpec("G", memory_mib=16000),) * 2)
                          for i in range(n)))
    state = ClusterState.from_snapshot(snap)
    pol = create("fastgpu")
    d = Demand("d", num_gpus=1, gpu_milli=500, work_s=1.0)
    pol.prepare(state, [d])
    e = Scheduler(state, pol).place(d, explain=True, bind=False).explanation
    assert len(e.candidates) == sched_mod.EXPLAIN_TOP and e.more == 5 and e.winner in {c.node for c in e.candidates}
    assert "... 16 more candidates" in e.format(limit=5)
    nodes = np.flatnonzero(state.feasible(d))
    pol.score(state, d, nodes)
    state.add_wait(0, (0, 1), d)  # node 0's GPUs now wait (1 s of work, two side by side): the terms say so
    assert pol.terms(state, d, nodes)["wait_s"][0] == pytest.approx(0.5)  # (not the last score's 0)


def test_an_explanation_shows_the_scores_that_chose_even_for_a_random_policy():
    """The explanation's scores are the ones the decision was made on: a policy that draws at random is
    not asked again (its winner would not be the explanation's best)."""
    snap = Snapshot(tuple(node(n, gpus=2) for n in "abcdef"))
    demands = tuple(Demand(f"d{i}", num_gpus=1, gpu_milli=500) for i in range(8))
    plan = schedule(PlacementRequest(snap, demands, explain=True), create("random", rng=np.random.default_rng(3)))
    assert len(plan.explanations) == 8
    for e in plan.explanations:
        best = max(e.candidates, key=lambda c: c.score)
        assert e.winner == best.node, e.format()
        assert all(c.terms["score"] == c.score for c in e.candidates), e.format()


def test_fastgpu_prefers_the_idle_gpu_and_the_node_holding_the_data():
    snap = Snapshot((node("loaded", gpus=1, util=(0.9,)), node("idle", gpus=1), node("data", gpus=1)))
    d_work = Demand("w", num_gpus=1, gpu_milli=500, work_s=2.0)
    d_data = Demand("x", num_gpus=1, gpu_milli=500, work_s=0.1, input_bytes={"data": 10**9}, input_total=10**9)
    plan = schedule(PlacementRequest(snap, (d_work,)), "fastgpu")
    assert plan.assignments[0].node == "idle"
    plan = schedule(PlacementRequest(snap, (d_data,)), "fastgpu")
    assert plan.assignments[0].node == "data"
    terms = {c.node: c.terms for c in plan.explanations[0].candidates}
    assert terms["data"]["move_bytes"] == 0 and terms["idle"]["move_bytes"] == 10**9


def test_bind_and_unbind_restore_the_state_exactly():
    st = state(node("a", gpus=4))
    d = Demand("x", cpu_milli=3000, memory_mib=100, num_gpus=2, gpu_milli=1000)
    before = (st.cpu_left.copy(), st.free.copy(), st.F.copy(), st.nfull.copy())
    st.bind(0, (1, 3), d)
    assert st.nfull[0] == 2 and st.F[0] == 2 * GPU_MILLI
    st.unbind(0, (1, 3), d)
    for a, b in zip(before, (st.cpu_left, st.free, st.F, st.nfull)):
        assert (a == b).all()


@pytest.mark.parametrize("field,value", [("cpu_milli", -1), ("num_gpus", -2), ("gpu_memory_mib", -5)])
def test_negative_requests_are_rejected(field, value):
    with pytest.raises(ValueError, match=field):
        Demand("bad", **{field: value})


def test_unknown_policy_lists_the_valid_ones():
    from placement import UnknownPolicyError, create

    with pytest.raises(UnknownPolicyError, match="best-fit.*fgd"):
        create("fdg")


def test_fastgpu_picks_the_gpu_its_node_score_assumed():
    """On a node with a loaded and an idle GPU (or a busy and a free one), the idle/free GPU is bound."""
    loaded = NodeSpec("n", 8000, 64000, (GpuSpec("T4", 16000, util=0.9), GpuSpec("T4", 16000, util=0.0)))
    busy = NodeSpec("n", 8000, 64000, (GpuSpec("T4", 16000, busy_s=30.0), GpuSpec("T4", 16000)))
    for node_spec in (loaded, busy):
        for d in (Demand("w", num_gpus=1, gpu_milli=1000, work_s=1.0), Demand("m", num_gpus=1, gpu_memory_mib=4000)):
            plan = schedule(PlacementRequest(Snapshot((node_spec,)), (d,)), "fastgpu")
            assert plan.assignments[0].gpus == (1,), (node_spec, d)
    # With nothing live, the packing choice stands (fastgpu's GPU is the one its packing score priced).
    part = NodeSpec("n", 8000, 64000, (GpuSpec("T4", 16000), GpuSpec("T4", 16000, milli_used=500)))
    d = Demand("s", num_gpus=1, gpu_milli=300)
    st = state(part)
    pol = create("fastgpu")
    pol.prepare(st, (d,))
    expected = pol.compute(pol._scorer_for(st), d, np.array([0]))[1][0]
    plan = schedule(PlacementRequest(Snapshot((part,)), (d,)), "fastgpu")
    assert plan.assignments[0].gpus == (expected,)


def test_unknown_gpu_model_is_named_with_the_models_the_cluster_has():
    snap = Snapshot((node("a", model="T4"), node("b", model="A10")))
    plan = schedule(PlacementRequest(snap, (Demand("x", num_gpus=1, gpu_milli=500, gpu_types=("A100",)),)))
    (u,) = plan.unplaced
    assert u.never and "A100" in u.reason and "A10, T4" in u.reason


def test_memory_only_demand_never_lands_on_a_gpu_held_whole():
    snap = Snapshot((NodeSpec("a", 8000, 64000, (GpuSpec("T4", 16000, milli_used=1000),
                                                 GpuSpec("T4", 16000, milli_used=400))),))
    plan = schedule(PlacementRequest(snap, (Demand("m", num_gpus=1, gpu_memory_mib=1000),)), "best-fit")
    assert plan.assignments[0].gpus == (1,)


def test_a_queued_subtask_delays_a_packed_gpu_by_its_share_of_the_gpu():
    """``add_wait``: five 3 GiB subtasks queued on a 16 GiB GPU (five run at once) push its wait back by
    one run, not five; a whole-GPU subtask by its full run; a quarter share by a quarter."""
    from placement import ClusterState

    snap = Snapshot((NodeSpec("n", 8000, 65536, (GpuSpec(model="E", memory_mib=16384),)),))
    cases = [(Demand(id="m", num_gpus=1, gpu_memory_mib=3072, work_s=1.0), 1.0),
             (Demand(id="w", num_gpus=1, gpu_milli=1000, work_s=1.0), 5.0),
             (Demand(id="q", num_gpus=1, gpu_milli=250, work_s=1.0), 1.25)]
    for d, want in cases:
        st = ClusterState.from_snapshot(snap)
        for _ in range(5):
            st.add_wait(0, (0,), d)
        assert st.busy[0, 0] == pytest.approx(want), d.id
    st = ClusterState.from_snapshot(snap)
    st.max_side_by_side = 2  # the runtime's slot cap bounds it too
    for _ in range(4):
        st.add_wait(0, (0,), cases[0][0])
    assert st.busy[0, 0] == pytest.approx(2.0)
