"""The driver's choice of node (fastgpu_ray.core.routing.Router), without Ray: spreading, following producers,
moving when waiting is dearer, failing fast, bounded memory."""
from __future__ import annotations

import pytest

from placement import Demand, GpuSpec, NodeSpec
from placement.cost import CostModel

from fastgpu_ray.core.routing import DEFAULT_OUTPUT_BYTES, Router

MiB = 2**20


def node(name: str, busy=(0.0, 0.0), util=(0.0, 0.0), mem=16384) -> NodeSpec:
    gpus = tuple(GpuSpec(model="E", memory_mib=mem, util=u, memory_used_mib=0, busy_s=b) for b, u in zip(busy, util))
    return NodeSpec(name, 4000, 16384, gpus)


def demand(i=0, work=0.1, **kw) -> Demand:
    return Demand(id=f"d{i}", num_gpus=1, gpu_milli=1000, work_s=work, **kw)


def router(*nodes) -> Router:
    r = Router("fastgpu", cost=lambda: CostModel(link_bandwidth=125e6))
    r.update(nodes)
    return r


def test_consecutive_choices_spread_over_nodes_until_the_next_report():
    r = router(node("a"), node("b"), node("c"))
    picks = [r.choose(demand(i, work=1.0)).node for i in range(6)]
    assert sorted(picks) == ["a", "a", "b", "b", "c", "c"]
    r.update([node("a"), node("b", busy=(5.0, 5.0)), node("c")])  # a report replaces the projection
    assert r.choose(demand(9, work=1.0)).node in ("a", "c")


def test_a_chunk_is_priced_at_its_total_work():
    r = router(node("a", busy=(0.0,), util=(0.0,)), node("b", busy=(0.0,), util=(0.0,)))
    first = r.choose(demand(0, work=0.5), count=10).node
    assert [r.choose(demand(i, work=0.5)).node for i in range(1, 10)] == ["b" if first == "a" else "a"] * 9


def test_a_consumer_follows_its_pending_producer_when_waiting_there_is_cheaper():
    r = router(node("a"), node("b"), node("c"))
    r.produced_by(["ref1"], "b", "produce")
    d = r.with_inputs(demand(0, work=0.02), located=[], pending=["ref1"])
    assert d.input_bytes == {"b": DEFAULT_OUTPUT_BYTES} and d.input_total == DEFAULT_OUTPUT_BYTES
    route = r.choose(d, explain=True)
    assert route.node == "b"
    terms = {c.node: c.terms for c in route.explanation.candidates}
    assert terms["a"]["move_bytes"] == DEFAULT_OUTPUT_BYTES and terms["b"]["move_bytes"] == 0


def test_sizes_are_learned_per_producer_function_and_moving_wins_when_waiting_is_long():
    r = router(node("a"), node("b", busy=(30.0, 30.0)))
    r.produced_by(["old", "new"], "b", "produce")
    d = r.with_inputs(demand(0, work=0.02), located=[("old", 64 * MiB)], pending=["new"])
    assert d.input_bytes == {"b": 64 * MiB}  # the function's last located output, not the default
    assert r.choose(d).node == "a"  # 30 s of queue at b; moving 64 MiB at 1 Gbit/s takes ~0.5 s


def test_never_fits_names_the_largest_gpu_and_no_gpu_node_says_so():
    r = router(node("a", mem=16384))
    route = r.choose(demand(0, gpu_memory_mib=10**7))
    assert route.node is None and "the largest is GPU" in route.never and "16384 MiB" in route.never
    empty = Router("fastgpu")
    route = empty.choose(demand(0))
    assert route.node is None and "no live node with a GPU" in route.never


def test_producer_entries_are_bounded_and_forgotten_with_their_node():
    r = Router("fastgpu", keep_refs=3)
    r.update([node("a"), node("b")])
    r.produced_by([f"r{i}" for i in range(5)], "a", "f")
    assert list(r.produced) == ["r2", "r3", "r4"]
    r.produced_by(["x"], "b", "f")
    r.forget_node("a")
    assert list(r.produced) == ["x"] and set(r.specs) == {"b"}


def test_a_burst_of_small_subtasks_shares_placements_and_a_few_calls_do_not():
    from fastgpu_ray.core.routing import LEASE

    r = router(node("a"), node("b"), node("c"))  # 6 GPUs: bursts start after 24 routed
    placements = []
    real = r._choose
    r._choose = lambda d, count, explain: placements.append(count) or real(d, count, explain)
    few = [r.choose(demand(i, work=0.04)).node for i in range(6)]
    assert sorted(few) == ["a", "a", "b", "b", "c", "c"] and placements == [1] * 6  # one by one
    many = [r.choose(demand(i, work=0.04)).node for i in range(218)]
    assert len(placements) < 6 + 18 + 200 / LEASE + 2 and set(placements[24:]) == {LEASE}
    counts = [many.count(n) for n in "abc"]
    assert max(counts) - min(counts) <= 2 * LEASE, counts  # still spread over the nodes
    placements.clear()
    r.asking()  # reports asked for now show the whole burst
    r.update([node("a"), node("b"), node("c")])  # they come back empty: the burst is over
    with_work = [r.choose(demand(i, work=1.0)).node for i in range(6)]
    assert placements == [1] * 6 and len(set(with_work)) == 3  # declared work: always one by one
    placements.clear()
    [r.choose(demand(i, work=0.0)) for i in range(60)]
    assert placements == [1] * 60  # unknown work, however many: one by one (next test: why)


def test_a_burst_of_unknown_work_goes_by_usable_gpus_not_in_leases():
    """Unknown work is priced at an assumed 0.5 s; a lease of 8 of it (4 s) finished about as late on every
    node (within the policy's 5 % tie), so a node with one usable GPU (the other 75 % busy from outside) got
    leases as large as nodes with two: 13 of 48 (fastgpu demo: 12 subtasks on that one GPU, 8-10 on others)."""
    r = router(node("a", util=(0.0, 0.75)), node("b"), node("c"))
    picks = [r.choose(Demand(id=f"d{i}", num_gpus=1, gpu_milli=0, gpu_memory_mib=3584)).node for i in range(48)]
    counts = [picks.count(x) for x in "abc"]
    assert counts[0] <= 10 and min(counts[1:]) >= 18, counts  # a fifth of the usable GPUs: 9.6


def test_choices_made_after_reports_were_asked_for_survive_the_update():
    r = router(node("a", busy=(0.0,), util=(0.0,)), node("b", busy=(0.0,), util=(0.0,)))
    before = r.choose(demand(0, work=5.0)).node  # made before the ask: the report shows it
    r.asking()
    after = r.choose(demand(1, work=5.0)).node  # made after: the report cannot show it
    assert {before, after} == {"a", "b"}
    # the reports arrive: they show the first choice's 5 s, not the second's
    r.update([node(before, busy=(5.0,), util=(0.0,)), node(after, busy=(0.0,), util=(0.0,))])
    st = r._scheduler(demand(2)).state
    assert [float(st.busy[st.names.index(n), 0]) for n in ("a", "b")] == [5.0, 5.0]
    assert float(st.free[st.names.index(after), 0]) == 1000  # queued there, not bound


def test_a_node_that_answers_late_keeps_the_work_routed_to_it_since_its_last_report():
    """Reports come back from some nodes only (one answered too late): the others keep the spec they last
    reported, and every choice made for them since that one was asked for. Dropped with the log, a node
    whose report was late looked the least busy and a whole stage of consumers left its producers' nodes
    (netns pipeline: 0.21 of the intermediate bytes moved)."""
    now = [0.0]
    r = Router("fastgpu", cost=lambda: CostModel(link_bandwidth=125e6), clock=lambda: now[0])
    one = {"busy": (0.0,), "util": (0.0,)}
    r.update([node("a", **one), node("b", **one)], asked_at=0.0)
    r.asking()
    first = [r.choose(demand(i, work=1.0)).node for i in range(2)]  # before the question: in its answers
    assert sorted(first) == ["a", "b"]
    r.asking()
    second = [r.choose(demand(2 + i, work=1.0)).node for i in range(2)]  # after it
    assert sorted(second) == ["a", "b"]
    now[0] = 0.2
    # only "a" answers (it shows its first choice); "b" keeps its empty spec from t=0 and both its choices
    r.update([node("a", busy=(1.0,), util=(0.0,)), node("b", **one)], asked_at=0.1, fresh=["a"])
    st = r._scheduler(demand(9)).state
    busy = {n: float(st.busy[st.names.index(n), 0]) for n in "ab"}
    assert busy == {"a": pytest.approx(2.0 - 0.1), "b": 2.0}, busy  # "a" aged from its ask, "b" from t=0
    now[0] = 0.3  # "b" answers the next question, showing both of its choices: the log may forget them
    r.asking()
    r.update([node("a", busy=(1.0,), util=(0.0,)), node("b", busy=(2.0,), util=(0.0,))], asked_at=0.3)
    assert r._log == []
    # a node that stops answering keeps only its own choices in the log, not everyone's since
    picks = [r.choose(demand(10 + i, work=0.5)).node for i in range(6)]
    r.asking()  # "a"'s answer shows its choices, "b" does not answer
    r.update([node("a", busy=(1.0,), util=(0.0,)), node("b", busy=(2.0,), util=(0.0,))], asked_at=0.4, fresh=["a"])
    assert sorted(e[1] for e in r._log) == ["b"] * picks.count("b") and picks.count("b") > 0


def test_a_report_ages_so_a_burst_long_done_does_not_keep_its_node_looking_busy():
    """A report taken while an earlier burst ran projects that node busy for a while; routed later, the
    same report counts down by the time since it was asked for, and the subtask goes to its data."""
    now = [100.0]
    r = Router("fastgpu", cost=lambda: CostModel(link_bandwidth=125e6), clock=lambda: now[0])
    report = [node("a", busy=(0.6, 0.6)), node("b")]  # the data's node "a", busy as last reported

    d = demand(0, work=0.02, input_bytes={"a": 32 * MiB}, input_total=32 * MiB)  # its input sits on "a"

    def route():
        r.update(report, asked_at=100.0)
        return r.choose(d, explain=True)

    assert route().node == "b"  # fresh: 0.6 s of wait at "a" costs more than moving 32 MiB (~0.27 s)
    now[0] = 100.5  # half a second later the same report says "a" frees in 0.1 s
    got = route()
    assert got.node == "a"
    assert {c.node: c.terms["wait_s"] for c in got.explanation.candidates}["a"] == pytest.approx(0.1, abs=1e-6)
    r.update(report)  # no time given: taken as is
    assert r.choose(d).node == "b"


def test_queued_packed_subtasks_spread_by_the_sessions_slot_cap():
    """A 3 GiB subtask packs five to a 16 GiB GPU; with a slot cap of 1 they run one at a time, so the
    router's view of the queue behind a GPU grows by a whole run per subtask; with the default cap (8,
    memory allows 5) by a fifth of one."""
    d = Demand(id="m", num_gpus=1, gpu_memory_mib=3072, work_s=1.0)  # memory only: it packs
    for cap, want in ((1, 1.0), (8, 0.2)):
        r = Router("fastgpu", cost=lambda: CostModel(link_bandwidth=125e6), max_side_by_side=cap)
        r.update([node("a", busy=(0.0,)), node("b", busy=(0.0,))])
        r.choose(d)
        assert float(r._state.busy.max()) == pytest.approx(want)


def test_a_burst_shared_in_leases_comes_out_even_over_equal_nodes():
    """A lease (or map chunk) of one-GPU subtasks is counted spread over its node's GPUs, as that node's
    scheduler runs it; counted on the one GPU chosen for it, the node's other GPU looked as free as other
    nodes' and 48 subtasks of 20 ms went 24/16/8 over three equal nodes."""
    for n in (48, 96):
        r = router(node("a"), node("b"), node("c"))
        picks = [r.choose(demand(i, work=0.02)).node for i in range(n)]
        assert [picks.count(x) for x in "abc"] == [n // 3] * 3, picks


def test_a_lease_is_not_counted_on_a_gpu_other_ray_work_holds():
    """A node whose second GPU other Ray work holds (its report shows it full) runs a lease on one GPU: it
    must look twice as deep as a node that spreads the lease over two, so the burst goes mostly elsewhere."""
    from placement import GpuSpec, NodeSpec

    half = NodeSpec("a", 4000, 16384, (GpuSpec(model="E", memory_mib=16384, util=0.0, memory_used_mib=0),
                                       GpuSpec(model="E", memory_mib=16384, milli_used=1000, util=0.0,
                                               memory_used_mib=0)))
    r = router(half, node("b"), node("c"))
    picks = [r.choose(demand(i, work=0.02)).node for i in range(60)]
    counts = [picks.count(x) for x in "abc"]
    assert counts[0] <= 14 and min(counts[1:]) >= 20, counts  # one GPU of five: a fifth, not a third


def test_a_lease_is_counted_on_a_nodes_gpus_by_where_each_subtask_finishes_first():
    """A lease spread over a node's GPUs counts each subtask where it finishes first (its wait, then its
    run at the GPU's load), as the node's scheduler places it: by the queue's growth alone (a quarter of
    a run for work packed four to a GPU) the 75 %-loaded GPU took 3 of 16, whose runs there take 4x."""
    from collections import Counter

    r = router(node("a", util=(0.0, 0.75)))
    for i in range(16):  # packed 4 to a GPU; a lease after 4 per GPU
        r.choose(Demand(id=f"d{i}", num_gpus=1, gpu_milli=0, gpu_memory_mib=4096, work_s=0.02))
    counted = Counter()
    for _, _, gpus, part in r._log:
        counted[gpus] += round(part.work_s / 0.02)
    # the 13th on GPU 0 waits 0.06 s and finishes at 0.08 s, as the first on the loaded GPU does
    assert counted[(1,)] <= 1 and counted[(0,)] + counted[(1,)] == 16, counted
