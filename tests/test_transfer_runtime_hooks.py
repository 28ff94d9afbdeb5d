"""The dispatcher-side hooks (transfer.runtime_hooks) with fakes: no Ray, no cluster."""
from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from placement import ClusterState, Demand, GpuSpec, NodeSpec, Scheduler, Snapshot, create
from placement.cost import CostModel
from transfer import FakeLocator, TransferOptimizer
from transfer.runtime_hooks import RuntimeTransfer, after_place, has_inputs

from tests.helpers_transfer import MiB, Ref


@dataclass(eq=False)
class Payload:  # the runtime's shape: pickled args + top-level refs
    blob: bytes = b""
    refs: list = field(default_factory=list)


class FakePrefetcher:
    def __init__(self):
        self.calls, self.started = [], []

    def prefetch(self, node, refs):
        self.calls.append((node, [r.hex() for r in refs]))

    def start(self, nodes):
        self.started.extend(nodes)

    def forget(self, node):
        pass


@pytest.fixture
def rt():
    loc = FakeLocator()
    loc.put("w", 64 * MiB, ["C"])
    loc.put("s", 16 * MiB, ["B"])
    loc.put("tiny", 1000, ["B"])
    opt = TransferOptimizer(loc, CostModel(), is_ref=lambda o: isinstance(o, Ref), origin="D")
    r = RuntimeTransfer(opt, FakePrefetcher(), environ={"FASTGPU_LINK_BANDWIDTH": "1Gbit"},
                        gpu_nodes=lambda: ["A", "B", "C"])
    yield r


def test_bandwidth_from_the_environment_prices_the_session_cost_model(rt):
    assert rt.bandwidth.source == "env" and rt.cost().link_bandwidth == 125e6
    fast = RuntimeTransfer(TransferOptimizer(FakeLocator(), CostModel(), is_ref=lambda o: False, origin="D"),
                           FakePrefetcher(), environ={"FASTGPU_LINK_BANDWIDTH": "8Gbit"}, gpu_nodes=lambda: [])
    assert fast.cost().link_bandwidth == 1e9 and fast.opt.cost.link_bandwidth == 1e9
    assert CostModel().link_bandwidth == 125e6  # nothing process-wide changed


def test_nothing_to_locate_costs_no_lookup(rt):
    assert not has_inputs(Payload(b"x" * 100))
    assert rt.inputs(Payload(b"x" * 100)) is None and rt.opt.locator.calls == 0


def test_refs_and_large_blob_are_located_once_per_cache_period(rt):
    p = Payload(b"x" * (200 * 1024), [Ref("s"), Ref("tiny")])
    est = rt.inputs(p)
    assert est.demand_fields() == {"input_bytes": {"B": 16 * MiB, "D": 200 * 1024}, "input_total": 16 * MiB + 200 * 1024}
    rt.inputs(p)
    assert rt.opt.locator.calls == 1
    assert rt.prefetcher.started == ["A", "B", "C"]  # pullers exist once data moves


def test_a_reused_id_is_not_served_from_the_cache(rt):
    p = Payload(refs=[Ref("s")])
    other = Payload()
    rt._cache[id(p)] = (time.monotonic(), [("w", 64 * MiB, ("C",))], weakref.ref(other))
    assert rt.inputs(p).input_bytes() == {"B": 16 * MiB}


def test_placed_prefetches_once_per_node_and_counts_as_arriving(rt):
    p1, p2 = Payload(refs=[Ref("w")]), Payload(refs=[Ref("w")])
    rt.placed([p1], "A")
    assert rt.prefetcher.calls == [("A", ["w"])]
    assert rt.inputs(p2).input_bytes() == {"C": 64 * MiB, "A": 64 * MiB}  # ledger, despite the cache
    rt.placed([p2], "A")
    assert rt.prefetcher.calls == [("A", ["w"])]  # nothing new to pull


def test_after_place_writes_the_transfer_line_and_leaves_the_state_to_the_dispatcher(rt):
    snap = Snapshot(tuple(NodeSpec(n, 8000, 32000, (GpuSpec("G"),)) for n in "ABC"))
    st_ = ClusterState.from_snapshot(snap)
    p = Payload(refs=[Ref("s")])
    d = Demand("x", num_gpus=1, gpu_milli=1000, work_s=0.1, **rt.inputs(p).demand_fields())
    pol = create("fastgpu")
    dec = Scheduler(st_, pol).place(d, explain=True)
    assert st_.names[dec.node] == "B"
    sub = SimpleNamespace(id="x", payload=p, record=SimpleNamespace(history=[]))
    core = SimpleNamespace(fits_now=lambda node, gpus, dd: False, transfer=rt)  # B's GPU is held by running work
    after_place(core, st_, pol, sub, d, dec)
    assert sub.record.history == ["transfer to B: 16.0 MiB local, nothing to move"]
    # Queueing behind the held GPU is the dispatcher's one call (ClusterState.queue_behind), not the hook's.
    assert st_.free[dec.node, 0] == 0 and st_.busy[dec.node, 0] == 0
    assert rt.prefetcher.calls == []  # already there


def test_each_dispatch_core_uses_the_transfer_model_it_is_given_and_none_without_one():
    """No process-wide transfer state: two cores in one process, each given its own model (data on n2 for
    one, on n1 for the other), place the same subtask by their own model's data; a core given none prices
    no data (as node schedulers, whose driver chose the node by data)."""
    import asyncio

    from fastgpu_ray.core.dispatch import DispatchCore, Subtask
    from fastgpu_ray.options import make_options
    from tests.test_runtime_dispatch import FakeBackend

    @dataclass(eq=False)
    class Work:  # a FakeBackend payload (called on the worker) that carries refs, as the runtime's does
        refs: list
        blob: bytes = b""

        def __call__(self, worker):
            return worker.node_id

    def model(where: str) -> RuntimeTransfer:
        loc = FakeLocator()
        loc.put("w", 256 * MiB, [where])
        return RuntimeTransfer(TransferOptimizer(loc, CostModel(), is_ref=lambda o: isinstance(o, Ref), origin="D"),
                               FakePrefetcher(), environ={"FASTGPU_LINK_BANDWIDTH": "1Gbit"}, gpu_nodes=lambda: [])

    async def run(transfer):
        core = DispatchCore(FakeBackend({"n1": [16384], "n2": [16384]}), telemetry_period_s=0.05, transfer=transfer)
        await core.start()
        st = Subtask("s", make_options(work_s=0.05, batch=False), "fn", None, Work([Ref("w")]))
        ran_on = (await core.submit(st)).value
        history = list(core.explain("s").history)
        await core.shutdown()
        return ran_on, history

    on_n2, hist = asyncio.run(run(model("n2")))
    on_n1, _ = asyncio.run(run(model("n1")))
    assert (on_n2, on_n1) == ("n2", "n1")
    assert [h for h in hist if h.startswith("transfer to")] == ["transfer to n2: 256.0 MiB local, nothing to move"]
    _, plain = asyncio.run(run(None))
    assert not any(h.startswith("transfer to") for h in plain), plain
