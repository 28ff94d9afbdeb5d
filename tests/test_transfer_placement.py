"""The transfer estimate feeding the fastgpu policy's single objective (placement.cost), no Ray.

The decision the issue asks for: run where the data is unless waiting there costs more than moving it.
"""
import pytest

from placement import Demand, GpuSpec, NodeSpec, PlacementRequest, Scheduler, ClusterState, Snapshot, create, schedule
from placement.cost import CostModel
from transfer import FakeLocator, TransferOptimizer

from tests.helpers_transfer import MiB, Ref
GBIT = 125e6


def snap(busy_a=0.0, busy_b=0.0, busy_c=0.0):
    def n(name, busy):
        return NodeSpec(name, 8000, 32000, (GpuSpec("G", busy_s=busy), GpuSpec("G", busy_s=busy)))
    return Snapshot((n("A", busy_a), n("B", busy_b), n("C", busy_c)))


def demand(opt, *args, work_s=0.05, id="s"):
    est = opt.estimate(args)
    return Demand(id, cpu_milli=0, num_gpus=1, gpu_milli=1000, work_s=work_s, **est.demand_fields()), est


@pytest.fixture
def opt():
    loc = FakeLocator()
    loc.put("shard", 32 * MiB, ["B"])  # 32 MiB: 0.27 s over 1 Gbit/s
    loc.put("w", 64 * MiB, ["C"])
    return TransferOptimizer(loc, CostModel(link_bandwidth=GBIT), is_ref=lambda o: isinstance(o, Ref))


def place(snapshot, d, bandwidth=GBIT):
    pol = create("fastgpu", cost=CostModel(link_bandwidth=bandwidth))
    return Scheduler(ClusterState.from_snapshot(snapshot), pol).place(d, explain=True)


def test_runs_where_its_data_is_when_that_gpu_is_free(opt):
    d, _ = demand(opt, Ref("shard"))
    dec = place(snap(), d)
    assert dec.explanation.winner == "B"
    terms = {c.node: c.terms for c in dec.explanation.candidates}
    assert terms["B"]["move_bytes"] == 0 and terms["A"]["move_bytes"] == 32 * MiB
    assert terms["A"]["move_s"] == pytest.approx(CostModel(link_bandwidth=GBIT).transfer_s(32 * MiB))


def test_short_wait_at_the_data_beats_moving_it(opt):
    d, _ = demand(opt, Ref("shard"))
    assert place(snap(busy_b=0.1), d).explanation.winner == "B"  # 0.1 s wait < 0.27 s move


def test_long_wait_at_the_data_moves_it(opt):
    d, _ = demand(opt, Ref("shard"))
    assert place(snap(busy_b=2.0), d).explanation.winner in ("A", "C")


def test_faster_links_change_the_decision(opt):
    d, _ = demand(opt, Ref("shard"))
    # 0.1 s wait vs 32 MiB over 10 Gbit/s (0.027 s): moving is now cheaper
    assert place(snap(busy_b=0.1), d, bandwidth=10 * GBIT).explanation.winner in ("A", "C")


def test_most_bytes_win_when_inputs_are_split(opt):
    d, _ = demand(opt, Ref("shard"), [Ref("w")])
    assert place(snap(), d).explanation.winner == "C"  # 64 MiB on C beats 32 MiB on B


def test_broadcast_object_moves_once_per_node(opt):
    """Many subtasks reading one 64 MiB object while its holder C is busy: the first one pulls it to
    some node X; from then on X counts it as arriving (no transfer term), so the rest follow to X and
    nobody pulls it again."""
    st = ClusterState.from_snapshot(snap(busy_c=5.0))
    sched = Scheduler(st, create("fastgpu", cost=opt.cost))
    chosen, fetched = [], []
    for i in range(4):
        d, est = demand(opt, Ref("w"), id=f"s{i}")
        dec = sched.place(d, explain=True, bind=False)  # GPUs stay free: only the data term differs
        moves = {c.node: c.terms["move_bytes"] for c in dec.explanation.candidates}
        if chosen:
            assert moves[chosen[0]] == 0 and moves[({"A", "B"} - {chosen[0]}).pop()] == 64 * MiB
        node = dec.explanation.winner
        chosen.append(node)
        fetched.extend(o.key for o in opt.placed(est, node))
    assert chosen[0] in ("A", "B") and set(chosen) == {chosen[0]}
    assert fetched == ["w"]


def test_schedule_request_carries_the_fields(opt):
    d1, _ = demand(opt, Ref("shard"), id="one")
    d2, _ = demand(opt, Ref("w"), id="two")
    plan = schedule(PlacementRequest(snap(), (d1, d2)), policy=create("fastgpu", cost=opt.cost))
    assert {a.demand_id: a.node for a in plan.assignments} == {"one": "B", "two": "C"}


def test_waiting_subtasks_queue_behind_a_busy_gpu_then_data_moves(opt):
    """B (the data's node) is busy for 0.05 s on both GPUs. Subtasks queue there while the queue is
    shorter than moving 32 MiB (0.27 s); after that, the next one moves its data to a free node."""
    st = ClusterState.from_snapshot(snap(busy_b=0.05))
    sched = Scheduler(st, create("fastgpu", cost=opt.cost))
    chosen = []
    for i in range(14):
        d, _ = demand(opt, Ref("shard"), work_s=0.05, id=f"s{i}")
        dec = sched.place(d)
        chosen.append(st.names[dec.node])
        if st.busy[dec.node, list(dec.gpus)].any():  # the dispatcher keeps it queued behind that GPU
            st.queue_behind(dec.node, dec.gpus, d)
    # finish on B: wait 0.05, 0.05, 0.10, 0.10, ... + 0.05 s of work; elsewhere: 0.27 s move + 0.05 s
    assert chosen[:8] == ["B"] * 8
    assert chosen[-1] in ("A", "C")
    first_move = next(i for i, n in enumerate(chosen) if n != "B")
    wait_then = 0.05 * (1 + first_move // 2)
    assert wait_then + 0.05 >= opt.cost.transfer_s(32 * MiB) + 0.05 - 0.02  # moved only once waiting cost more


def test_within_equal_finish_times_the_data_node_wins(opt):
    """20 s of work: moving 32 MiB (0.27 s) is within the 5 % finish resolution, yet it still loads the
    network for nothing: the node that holds the data wins the tie (B is not the rank winner)."""
    d, _ = demand(opt, Ref("shard"), work_s=20.0)
    assert place(snap(), d).explanation.winner == "B"


def test_queue_behind_frees_the_gpu_and_extends_its_wait_by_the_work_at_load():
    """A subtask that will wait for a held GPU: unbound in the round's state, the GPU's wait grows by its
    compute time at that GPU's load (placement.cost.slowdown), so the next subtask weighs that queue."""
    from placement.cost import slowdown

    st = ClusterState.from_snapshot(snap())
    d = Demand("x", num_gpus=1, gpu_milli=1000, work_s=0.1, input_bytes={"B": 1 << 20}, input_total=1 << 20)
    dec = Scheduler(st, create("fastgpu")).place(d)
    g = dec.gpus[0]
    st.load[dec.node, g] = 0.5
    st.queue_behind(dec.node, dec.gpus, d)
    assert st.free[dec.node, g] == 1000 and st.busy[dec.node, g] == pytest.approx(0.1 * slowdown(0.5))
