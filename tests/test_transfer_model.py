"""The transfer cost model with plain stand-ins for ObjectRefs and a fake locator (no Ray)."""
import numpy as np
import pytest

from placement.cost import CostModel
from transfer import (INLINE_THRESHOLD, FakeLocator, TransferLedger, TransferOptimizer, build_estimate,
                      find_refs, large_values, promote_large_values, value_size)

from tests.helpers_transfer import MiB, Ref, is_ref


class Wrapped:  # what a runtime might wrap refs in so its dispatcher does not resolve them
    def __init__(self, ref):
        self.ref = ref


def test_find_refs_nested_distinct_in_order():
    a, b, c, d = Ref("a"), Ref("b"), Ref("c"), Ref("d")
    shared = [b, b]
    args = (1, [a, {"k": shared, c: "as key"}], (shared,))
    kwargs = {"x": {"deep": [[[d]]]}, "y": a}
    assert [r.name for r in find_refs(args, kwargs, is_ref, key=lambda r: r.hex())] == ["a", "b", "c", "d"]


def test_find_refs_survives_cycles():
    a = Ref("a")
    loop = [a]
    loop.append(loop)
    assert [r.name for r in find_refs((loop,), {}, is_ref)] == ["a"]


def test_value_size_buffers_and_containers():
    assert value_size(b"x" * 1000) == 1000
    assert value_size(np.zeros(1000, dtype=np.float64)) == 8000
    big = [np.zeros(MiB, dtype=np.uint8), np.zeros(MiB, dtype=np.uint8), Ref("r")]
    assert 2 * MiB <= value_size(big, is_ref) < 2 * MiB + 1024


def test_large_values_only_top_level_over_threshold():
    small, large = b"x" * 1024, np.zeros(INLINE_THRESHOLD + 1, dtype=np.uint8)
    got = large_values((small, large, Ref("r")), {"w": large, "n": 3}, is_ref)
    assert got == {"arg1": INLINE_THRESHOLD + 1, "kw:w": INLINE_THRESHOLD + 1}


def test_promote_puts_each_large_value_once_and_keeps_the_rest():
    puts = []

    def put(v):
        puts.append(v)
        return Ref(f"put{len(puts)}")

    large = np.zeros(200_000, dtype=np.uint8)
    args, kwargs = promote_large_values((1, large), {"w": large, "s": "x"}, is_ref, put)
    assert args[0] == 1 and is_ref(args[1]) and is_ref(kwargs["w"]) and kwargs["s"] == "x"
    assert len(puts) == 2
    assert promote_large_values((1,), {"s": "x"}, is_ref, put) == ((1,), {"s": "x"}) and len(puts) == 2


def test_estimate_rules_inline_unknown_duplicates():
    est = build_estimate([
        ("big", 32 * MiB, ["A"]),
        ("small", INLINE_THRESHOLD, ["B"]),  # at the threshold: inlined, free
        ("pending", None, []),
        ("big", 32 * MiB, ["A"]),  # twice in one call: moves once
        ("two", 10 * MiB, ["A", "C"]),
    ])
    assert est.total == 42 * MiB and est.inline_bytes == INLINE_THRESHOLD and est.unknown == ("pending",)
    assert est.input_bytes() == {"A": 42 * MiB, "C": 10 * MiB}
    assert est.demand_fields() == {"input_bytes": {"A": 42 * MiB, "C": 10 * MiB}, "input_total": 42 * MiB}


def test_for_node_bytes_time_and_sources():
    cost = CostModel(link_bandwidth=100 * MiB, latency_s=0.002)
    est = build_estimate([("big", 32 * MiB, ["A"]), ("two", 10 * MiB, ["A", "C"])])
    a, b, c = (est.for_node(n, cost) for n in "ABC")
    assert (a.local_bytes, a.move_bytes, a.move_s, dict(a.sources)) == (42 * MiB, 0, 0.0, {})
    assert b.move_bytes == 42 * MiB and b.move_s == pytest.approx(0.002 + 0.42)
    assert b.sources == {"A": 37 * MiB, "C": 5 * MiB}  # 'two' comes from A or C at random
    assert c.move_bytes == 32 * MiB and c.sources == {"A": 32 * MiB}
    assert "32.0 MiB from A" in c.describe() and "10.0 MiB local" in c.describe()
    assert b.move_s == cost.transfer_s(b.move_bytes)  # the one cost function, not a copy


def test_ledger_dedups_an_object_moving_to_a_node():
    loc = FakeLocator()
    loc.put("weights", 64 * MiB, ["A"])
    opt = TransferOptimizer(loc, CostModel(), is_ref=is_ref)
    w = Ref("weights")
    first = opt.estimate((w, 1))
    assert first.input_bytes() == {"A": 64 * MiB}
    fetch = opt.placed(first, "B")
    assert [o.key for o in fetch] == ["weights"]
    second = opt.estimate((w, 2))  # Ray does not list B yet: the copy is still in flight
    assert second.input_bytes() == {"A": 64 * MiB, "B": 64 * MiB}
    assert second.for_node("B", opt.cost).move_bytes == 0
    assert opt.placed(second, "B") == ()  # nothing more to prefetch: it crosses once
    opt.node_lost("B")
    assert opt.estimate((w,)).for_node("B", opt.cost).move_bytes == 64 * MiB
    assert loc.calls == 3  # one lookup per estimate, whatever the number of nodes


def test_ledger_is_bounded_oldest_first():
    led = TransferLedger(max_entries=2)
    led.note("A", ["x", "y"])
    led.note("B", ["z"])
    assert len(led) == 2 and led.arriving("x") == frozenset() and led.arriving("z") == {"B"}


def test_by_value_args_start_on_origin_and_are_never_shared():
    opt = TransferOptimizer(FakeLocator(), CostModel(), is_ref=is_ref, origin="D")
    table = np.ones(4 * MiB, dtype=np.uint8)
    e1 = opt.estimate((table,), {"small": 3})
    assert e1.input_bytes() == {"D": 4 * MiB} and e1.total == 4 * MiB
    opt.placed(e1, "A")
    e2 = opt.estimate((table,))  # Ray puts a new copy per call: still on D only
    assert e2.input_bytes() == {"D": 4 * MiB}


def test_unwrap_sees_refs_through_the_runtime_wrapper():
    loc = FakeLocator()
    loc.put("x", 16 * MiB, ["A"])
    opt = TransferOptimizer(loc, CostModel(), is_ref=is_ref,
                            unwrap=lambda o: o.ref if isinstance(o, Wrapped) else o)
    est = opt.estimate((Wrapped(Ref("x")), [Wrapped(Ref("x"))]))
    assert est.input_bytes() == {"A": 16 * MiB} and est.unknown == ()


def test_explain_lists_every_candidate():
    loc = FakeLocator({})
    loc.put("x", 16 * MiB, ["A"])
    opt = TransferOptimizer(loc, CostModel(link_bandwidth=16 * MiB), is_ref=is_ref)
    terms = opt.explain(opt.estimate((Ref("x"),)), ["A", "B"])
    assert terms["A"].move_bytes == 0 and terms["B"].move_s == pytest.approx(1.0)


def test_bad_threshold():
    with pytest.raises(ValueError, match="threshold"):
        TransferOptimizer(FakeLocator(), CostModel(), is_ref=is_ref, threshold=-1)
