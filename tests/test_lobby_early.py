"""The lobby's early workers without Ray (fastgpu_ray.actors.lobby): which waiting subtasks an early worker may
run and in what order, and what a failed early run costs (one retry; none left: the subtask fails)."""
from __future__ import annotations

import asyncio
import heapq

import pytest

from fastgpu_ray.errors import RetriesExhaustedError
from fastgpu_ray.actors.lobby import Lobby, _Entry, _Ran
from fastgpu_ray.options import make_options
from fastgpu_ray.core.wire import FnBox, Payload, RouteInfo


class _Method:
    """Stands in for an actor method: ``.remote(...)`` returns an awaitable of ``fn(...)``."""

    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args):
        async def call():
            return self.fn(*args)
        return call()


class FakeWorker:
    def __init__(self, outcome):
        self.calls = []

        def run_batch(keys, items, *flat):
            self.calls.append([it.sid for it in items])
            if isinstance(outcome, Exception):
                raise outcome
            return [outcome], []
        self.run_batch = _Method(run_batch)


def lobby():
    lb = Lobby.__ray_actor_class__("s", ())
    lb._task = object()  # no matching loop here: the test drives the lobby's steps itself
    return lb


def entry(lb, sid, priority=0, refs=(), **opts):
    e = _Entry((-priority, next(lb._seq)), sid, make_options(priority=priority, **opts), FnBox("f", None),
               Payload(b"x", list(refs)), RouteInfo(), "waiting for a node", None, 0.0,
               asyncio.get_running_loop().create_future())
    lb.heap.append(e)
    lb.waiting[sid] = e
    return e


def test_early_workers_take_whole_gpu_subtasks_without_refs_in_priority_order():
    async def main():
        lb = lobby()
        for sid, prio, kw in (("low", 0, {}), ("shared", 9, {"gpu_memory": "2GiB"}), ("high", 3, {}),
                              ("typed", 5, {"gpu_types": ("A100",)}), ("ref", 7, {"refs": [object()]})):
            entry(lb, sid, prio, **kw)
        heapq.heapify(lb.heap)
        got = [lb._pop_early(), lb._pop_early(), lb._pop_early()]
        return [g.sid if g else None for g in got], sorted(lb.waiting)
    order, left = asyncio.run(main())
    assert order == ["high", "low", None]
    assert left == ["ref", "shared", "typed"]  # (a memory share, a GPU type, a ref: for a scheduler)


def test_an_early_run_out_of_gpu_memory_waits_again_for_a_scheduler_at_the_cost_of_a_retry():
    async def main():
        lb = lobby()
        e = entry(lb, "a", max_retries=1)
        oom = FakeWorker(("err", "CUDA out of memory", True))
        assert lb._pop_early() is e
        alive = await lb._run_early(oom, "node1", (0,), e, set())
        assert alive and lb.waiting["a"] is e and not e.takes_early and e.opts.max_retries == 0
        assert "out of GPU memory on node node1" in e.info.history[-1] and not e.future.done()
        assert "a" not in lb.ran  # (explain shows it waiting again, not as run)
        # No retry left: the next failure is the subtask's result (its own error value).
        e.early = True
        assert lb._pop_early() is e
        await lb._run_early(oom, "node1", (0,), e, set())
        return e.future.result()
    node, ran = asyncio.run(main())
    assert isinstance(ran, _Ran) and ran.value == "CUDA out of memory"


def test_an_early_worker_lost_fails_a_subtask_without_retries_and_requeues_one_with():
    async def main():
        lb = lobby()
        a, b = entry(lb, "a", max_retries=0), entry(lb, "b", max_retries=2)
        lost = FakeWorker(RuntimeError("actor died"))
        out = []
        for e in (a, b):
            lb.waiting.pop(e.sid)
            out.append(await lb._run_early(lost, "node1", (1,), e, set()))
        with pytest.raises(RetriesExhaustedError, match="early worker on node node1 was lost"):
            a.future.result()
        return out, b
    alive, b = asyncio.run(main())
    assert alive == [False, False]
    assert b.opts.max_retries == 1 and not b.future.done() and not b.takes_early


def test_an_early_run_resolves_the_call_with_its_value_and_a_record():
    async def main():
        lb = lobby()
        e = entry(lb, "a")
        w = FakeWorker(("ok", 42))
        assert lb._pop_early() is e
        assert await lb._run_early(w, "node1", (0,), e, set())
        return e.future.result(), await lb.explain("a"), w.calls
    (node, ran), rec, calls = asyncio.run(main())
    assert node == "node1" and ran.value == 42 and calls == [["a"]]
    assert rec.state == "finished" and rec.gpus == (0,) and "ran on an early GPU worker" in rec.history[-1]


def test_warm_workers_owed_to_subtasks_that_left_the_wait_otherwise_are_not_counted_again():
    """``_warmed`` counts warm workers started for waiting subtasks not yet handed out; once nothing waits
    (the last one expired, was cancelled or ran early), none is owed, and a later wait starts its own."""
    async def main():
        lb = lobby()
        a, b = entry(lb, "a"), entry(lb, "b")
        lb._warmed = 2.0  # a node's scheduler came up with two warm workers for them
        lb._drop(a)
        owed_one_left = lb._warmed
        assert lb._pop_early() is b  # the last one runs on an early worker
        return owed_one_left, lb._warmed
    assert asyncio.run(main()) == (2.0, 0.0)
