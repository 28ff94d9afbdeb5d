"""DispatchCore with a fake backend (no Ray): queue order, waiting vs failing fast, packing by memory,
batching, retries after worker loss and out-of-memory, load-aware placement, explanations."""
from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass, field

import pytest

from fastgpu_ray.core.dispatch import CLAIM_BACKOFF_S, DispatchCore, Outcome, Subtask, WorkerLost
from fastgpu_ray.core.records import Record
from fastgpu_ray.core.telemetry import NodeInfo, NodeTelemetry
from fastgpu_ray.core.worker_pool import WorkerInfo
from fastgpu_ray.errors import GpuOutOfMemoryError, NeverFitsError, RetriesExhaustedError, is_gpu_oom
from fastgpu_ray.gpu_sources import EmulatedSource
from fastgpu_ray.options import make_options


@dataclass
class Run:
    sid: str
    node: str
    gpu: int
    start: float
    end: float = 0.0


@dataclass
class FakeBackend:
    """Nodes with emulated GPUs; a payload is ``fn(worker) -> value`` (may raise, may await)."""

    gpus: dict[str, list[int]]  # node -> memory MiB per GPU
    runs: list[Run] = field(default_factory=list)
    calls: int = 0
    claims: int = 0
    released: list = field(default_factory=list)
    dead: set = field(default_factory=set)  # (node, gpu) whose worker dies on its next call

    def __post_init__(self):
        self.sources = {n: EmulatedSource(len(m), m) for n, m in self.gpus.items()}

    def nodes(self):
        return [NodeInfo(n, True, 4, 4, 8 << 30, len(m), len(m) - sum(1 for (x, _) in self._held if x == n))
                for n, m in self.gpus.items()]

    _held: set = field(default_factory=set)

    async def read(self, node):
        src = self.sources[node.node_id]
        return NodeTelemetry(node.node_id, True, tuple(src.read()))

    async def claim(self, node, count, ready):
        self.claims += 1
        free = [g for g in range(len(self.gpus[node.node_id])) if (node.node_id, g) not in self._held][:count]
        for g in free:
            await asyncio.sleep(0.01)
            self._held.add((node.node_id, g))
            ready(WorkerInfo(handle=None, node_id=node.node_id, gpu_index=g, pid=1000 + g))

    async def run(self, worker, batch):
        self.calls += 1
        key = (worker.node_id, worker.gpu_index)
        outs = []
        for st in batch:
            r = Run(st.id, worker.node_id, worker.gpu_index, time.monotonic())
            self.runs.append(r)
            if key in self.dead:
                self.dead.discard(key)
                raise WorkerLost("killed by the test")
            try:
                v = st.payload(worker)
                if asyncio.iscoroutine(v):
                    v = await v
                outs.append(Outcome(True, v))
            except Exception as e:
                outs.append(Outcome(False, e, is_gpu_oom(e)))
            r.end = time.monotonic()
        return outs

    async def release(self, worker):
        self.released.append((worker.node_id, worker.gpu_index))
        self._held.discard((worker.node_id, worker.gpu_index))

    def fail(self, message, exc):
        return exc


def sub(sid, payload, fn="fn", **opts) -> Subtask:
    """A subtask of function ``fn`` (durations are learned per function)."""
    return Subtask(sid, make_options(**opts), fn, None, payload)


async def started(backend, **kw) -> DispatchCore:
    core = DispatchCore(backend, telemetry_period_s=0.05, **kw)
    await core.start()
    return core


async def claim_gpus(core: DispatchCore, n: int) -> None:
    """Run ``n`` instant subtasks of another function at once, so the core holds ``n`` GPUs (and has
    learned nothing about the functions a test times)."""
    await asyncio.gather(*(core.submit(sub(f"warm{i}", value(0), fn="warm", batch=False)) for i in range(n)))


async def until(pred, timeout_s: float = 10.0, what: str = "condition") -> None:
    """Poll ``pred`` (the core runs on the same loop) until it holds; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def block_gpu(core: DispatchCore, sid: str = "block", fn: str = "fn", **opts):
    """Submit a subtask that holds its GPU until the returned event is set; returns (event, its future)
    once it runs."""
    gate = asyncio.Event()

    async def blocker(w):
        await gate.wait()

    fut = asyncio.ensure_future(core.submit(sub(sid, lambda w: blocker(w), fn=fn, **opts)))
    await until(lambda: core.explain(sid) and core.explain(sid).state == "running", what=sid)
    return gate, fut


def value(v):
    return lambda w: v


def sleeper(s, v=None):
    async def run(w):
        await asyncio.sleep(s)
        return v
    return lambda w: run(w)


def test_results_come_back_and_small_subtasks_are_batched():
    async def main():
        b = FakeBackend({"n1": [16384, 16384]})
        core = await started(b)
        outs = await asyncio.gather(*(core.submit(sub(f"s{i}", value(i * i))) for i in range(200)))
        await core.shutdown()
        return b, outs
    b, outs = asyncio.run(main())
    assert [o.value for o in outs] == [i * i for i in range(200)]
    assert all(o.ok for o in outs)
    assert b.calls < 100, f"{b.calls} worker calls for 200 tiny subtasks: batching is not happening"
    assert b.claims == 1  # one claim took both GPUs of the node


class AdoptingBackend(FakeBackend):
    """Also takes workers started for the core elsewhere (``started``: the GPU index each holds)."""

    async def claim(self, node, count, ready, started=None):
        if started is None:
            return await super().claim(node, count, ready)
        for g in started:
            await asyncio.sleep(0.01)
            self._held.add((node.node_id, g))
            ready(WorkerInfo(handle=None, node_id=node.node_id, gpu_index=g, pid=2000 + g))


def test_workers_started_beside_a_new_scheduler_are_taken_as_its_claim():
    """The lobby starts GPU workers on a node just launched beside its scheduler: the core counts them as
    a claim in progress (so it claims nothing more for them) and runs its subtasks on them; workers for a
    node it does not know are refused (the caller kills them)."""
    async def main():
        b = AdoptingBackend({"n1": [16384, 16384]})
        core = await started(b)
        assert not core.adopt("elsewhere", [0])
        assert core.adopt("n1", [0, 1])
        assert core.pool.claiming == {"n1": 2}
        outs = await asyncio.gather(*(core.submit(sub(f"s{i}", sleeper(0.05, i), batch=False)) for i in range(4)))
        held = sorted(core.pool.workers)
        await core.shutdown()
        return b, outs, held
    b, outs, held = asyncio.run(main())
    assert [o.value for o in outs] == [0, 1, 2, 3]
    assert b.claims == 0, "the core claimed GPUs of its own beside the adopted workers"
    assert held == [("n1", 0), ("n1", 1)]
    assert {(r.node, r.gpu) for r in b.runs} == {("n1", 0), ("n1", 1)}


def test_the_queue_plays_out_per_subtask_kind_over_gpus_of_different_load():
    """``play_queue`` (what the driver's reports are made of): each subtask starts on the GPU(s) free first
    and holds them for its own estimated run at each GPU's load; kinds of subtask interleaved in one queue
    each keep their own run (the play-out computes a kind's runs once per call)."""
    core = DispatchCore(FakeBackend({"n1": [16384, 16384]}))
    a = [sub(f"a{i}", value(0), fn="a", work_s=1.0) for i in range(4)]
    b = sub("b", value(0), fn="b", work_s=2.0, num_gpus=2)
    free = [(0.0, 0.0), (1.0, 0.5)]  # GPU 1: busy for 1 s more, half loaded from outside (runs take 2x)
    starts, until = core.play_queue(free, [a[0], a[1], a[2], b, a[3]])
    assert starts == [(0.0, 0), (1.0, 0), (1.0, 1), (3.0, 0), (5.0, 0)]
    assert until == [6.0, 7.0]


def test_queue_orders_by_priority_then_age():
    async def main():
        b = FakeBackend({"n1": [16384]})
        core = await started(b)
        gate, first = await block_gpu(core, work_s=1.0)
        order = ["low0", "low1", "high0", "mid0", "high1"]
        prio = {"low": 0, "mid": 3, "high": 9}
        futs = [asyncio.ensure_future(core.submit(sub(s, value(s), priority=prio[s[:-1]], batch=False)))
                for s in order]
        await until(lambda: len(core.queue) == 5, what="the five to queue behind it")
        gate.set()
        await asyncio.gather(first, *futs)
        await core.shutdown()
        return [r.sid for r in b.runs]
    ran = asyncio.run(main())
    assert ran == ["block", "high0", "high1", "mid0", "low0", "low1"]


def test_never_fits_fails_at_once_naming_the_largest_gpu():
    async def main():
        b = FakeBackend({"n1": [8192, 24576], "n2": [16384]})
        core = await started(b)
        t0 = time.monotonic()
        out = await asyncio.wait_for(core.submit(sub("huge", value(1), gpu_memory="40GiB")), 5)
        await core.shutdown()
        return out, time.monotonic() - t0
    out, dt = asyncio.run(main())
    assert not out.ok and isinstance(out.value, NeverFitsError)
    msg = str(out.value)
    assert "24576 MiB" in msg and "GPU 1 on n1" in msg, msg
    assert dt < 2


def test_subtask_that_does_not_fit_now_waits_for_memory():
    async def main():
        b = FakeBackend({"n1": [16384]})
        core = await started(b)
        outs = await asyncio.gather(*(core.submit(sub(f"m{i}", sleeper(0.2, i), gpu_memory="10GiB", work_s=0.2))
                                      for i in range(2)))
        await core.shutdown()
        return b, outs
    b, outs = asyncio.run(main())
    assert [o.value for o in outs] == [0, 1]
    r0, r1 = sorted(b.runs, key=lambda r: r.start)
    assert r1.start >= r0.end - 1e-3, "two 10 GiB subtasks ran together on a 16 GiB GPU"


def test_memory_declaring_subtasks_share_a_gpu_and_whole_gpu_ones_do_not():
    async def main(**opts):
        b = FakeBackend({"n1": [16384]})
        core = await started(b)
        await asyncio.gather(*(core.submit(sub(f"p{i}", sleeper(0.3, i), work_s=0.3, **opts)) for i in range(4)))
        await core.shutdown()
        return b.runs
    packed = asyncio.run(main(gpu_memory="2GiB"))
    assert max(r.start for r in packed) < min(r.end for r in packed), "4 x 2 GiB did not run together"
    whole = sorted(asyncio.run(main()), key=lambda r: r.start)
    assert all(b.start >= a.end - 1e-3 for a, b in zip(whole, whole[1:])), "whole-GPU subtasks overlapped"


def test_worker_lost_replaces_subtask_then_gives_up_after_max_retries():
    async def main(retries, deaths):
        b = FakeBackend({"n1": [16384, 16384]})
        core = await started(b)
        await core.submit(sub("warm", value(0)))  # claim the GPUs
        b.dead = {("n1", 0), ("n1", 1)}
        outs = [await core.submit(sub("x", value(42), max_retries=retries, batch=False))]
        if deaths > 2:
            b.dead = {("n1", 0), ("n1", 1)}
        rec = core.explain("x")
        await core.shutdown()
        return b, outs[0], rec
    b, out, rec = asyncio.run(main(3, 2))
    assert out.ok and out.value == 42
    assert rec.retries >= 1 and any("lost" in h for h in rec.history)
    assert b.released, "the dead worker's GPU was not given back"
    b, out, rec = asyncio.run(main(0, 2))
    assert not out.ok and isinstance(out.value, RetriesExhaustedError)


def test_out_of_memory_is_retried_on_a_gpu_with_more_free_memory():
    def needs_big(w):
        if w.gpu_index == 0:  # GPU 0 has 4 GiB
            raise GpuOutOfMemoryError("CUDA out of memory (emulated)")
        return w.gpu_index

    async def main():
        b = FakeBackend({"n1": [4096, 16384]})
        b.sources["n1"].set_gpu(1, util=0.9)  # the big GPU is busy: placement tries the small one first
        core = await started(b)
        out = await core.submit(sub("oom", needs_big, gpu_memory="1GiB", work_s=1.0))
        rec = core.explain("oom")
        await core.shutdown()
        return b, out, rec
    b, out, rec = asyncio.run(main())
    assert [r.gpu for r in b.runs] == [0, 1]
    assert out.ok and out.value == 1
    assert rec.retries == 1 and "out of GPU memory" in " ".join(rec.history)


def test_user_error_is_the_result_not_retried():
    def boom(w):
        raise ValueError("bad input 7")

    async def main():
        b = FakeBackend({"n1": [16384]})
        core = await started(b)
        out = await core.submit(sub("e", boom))
        await core.shutdown()
        return b, out
    b, out = asyncio.run(main())
    assert not out.ok and "bad input 7" in str(out.value)
    assert len(b.runs) == 1


def test_loaded_gpu_is_avoided_and_explained():
    async def main():
        b = FakeBackend({"a": [16384], "b": [16384]})
        b.sources["a"].set_gpu(0, util=0.8, processes=2)
        core = await started(b)
        out = await core.submit(sub("w", lambda w: w.node_id, work_s=2.0))
        rec = core.explain("w")
        await core.shutdown()
        return out, rec
    out, rec = asyncio.run(main())
    assert out.value == "b"
    ex = rec.explanation
    assert ex.winner == "b" and ex.policy == "fastgpu"
    terms = {c.node: c.terms for c in ex.candidates}
    assert terms["a"]["compute_s"] == pytest.approx(10.0) and terms["b"]["compute_s"] == pytest.approx(2.0)
    assert "policy=fastgpu" in rec.format()


def test_idle_workers_are_released():
    async def main():
        b = FakeBackend({"n1": [16384, 16384]})
        core = await started(b, idle_timeout_s=0.2)
        await core.submit(sub("x", value(1)))
        await until(lambda: not core.pool.workers, what="the idle workers to be released")
        held = dict(core.pool.workers)
        await core.shutdown()
        return b, held
    b, held = asyncio.run(main())
    assert held == {} and sorted(b.released) == [("n1", 0), ("n1", 1)]


def test_unknown_policy_fails_at_construction():
    with pytest.raises(ValueError, match="valid policies"):
        DispatchCore(FakeBackend({"n": [1]}), policy="nope")


def test_waits_for_an_idle_gpu_rather_than_starting_on_a_loaded_one():
    async def main():
        b = FakeBackend({"a": [16384], "b": [16384]})
        b.sources["b"].set_gpu(0, util=0.8)  # 5x slower there
        core = await started(b)
        await claim_gpus(core, 2)
        assert len(core.pool.workers) == 2  # both GPUs claimed
        b.runs.clear()
        outs = await asyncio.gather(*(core.submit(sub(f"w{i}", sleeper(0.15, i), work_s=0.15, batch=False))
                                      for i in range(4)))
        recs = [core.explain(f"w{i}") for i in range(4)]
        await core.shutdown()
        return b, outs, recs
    b, outs, recs = asyncio.run(main())
    assert [o.value for o in outs] == [0, 1, 2, 3]
    # finish on a: wait <= 0.45 s + 0.15 s; on b: 0.75 s -> all four queue for a
    assert {r.node for r in b.runs} == {"a"}, [(r.sid, r.node) for r in b.runs]
    assert recs[-1].explanation.winner == "a"


def test_a_subtask_that_cannot_be_placed_fails_alone_and_the_queue_survives():
    class Broken(Subtask):
        def demand(self, context_mib=0, transfer=None):
            raise ValueError("bad demand")

    async def main():
        b = FakeBackend({"n1": [16384]})
        core = await started(b)
        bad = Broken("bad", make_options(), "fn", None, value(0))
        outs = await asyncio.wait_for(asyncio.gather(
            core.submit(sub("a", value(1))), core.submit(bad), core.submit(sub("b", value(2)))), 10)
        await core.shutdown()
        return outs
    a, bad, b2 = asyncio.run(main())
    assert (a.ok, a.value, b2.ok, b2.value) == (True, 1, True, 2)
    assert not bad.ok and "bad demand" in str(bad.value)


def test_memory_packed_subtasks_wait_for_a_slot_on_an_idle_gpu_rather_than_a_loaded_one():
    """a's GPU holds two 5.5 GiB subtasks at a time (each with its process's 0.5 GiB CUDA context); b's GPU has room but is 80 % busy (5x slower).
    Waiting for a slot on a (<= 0.15 s) beats 0.75 s on b, so every subtask runs on a."""
    async def main():
        b = FakeBackend({"a": [12288], "b": [16384]})
        b.sources["b"].set_gpu(0, util=0.8)
        core = await started(b)
        await claim_gpus(core, 2)
        assert len(core.pool.workers) == 2
        b.runs.clear()
        outs = await asyncio.gather(*(core.submit(sub(f"m{i}", sleeper(0.15, i), gpu_memory="5.5GiB", work_s=0.15,
                                                      batch=False)) for i in range(6)))
        await core.shutdown()
        return b, outs
    b, outs = asyncio.run(main())
    assert [o.value for o in outs] == list(range(6))
    assert {r.node for r in b.runs} == {"a"}, [(r.sid, r.node) for r in b.runs]


def test_cancel_drops_a_queued_subtask_and_releases_the_worker_of_a_running_one():
    async def main():
        b = FakeBackend({"n1": [16384]})
        core = await started(b)
        long = asyncio.ensure_future(core.submit(sub("long", sleeper(30.0, 1), batch=False)))
        queued = asyncio.ensure_future(core.submit(sub("queued", value(2), batch=False)))
        await until(lambda: core.explain("long") and core.explain("long").state == "running", what="long")
        await until(lambda: core.explain("queued") is not None, what="queued")
        queued.cancel()
        await until(lambda: core.explain("queued").state == "cancelled", what="the cancellation")
        long.cancel()  # running alone on its worker: the worker is released, its GPU is free again
        await until(lambda: b.released, what="the worker's release")
        rec, released, holds = core.explain("long"), list(b.released), dict(core.reservations.holds)
        await core.shutdown()
        return rec, released, holds, [r.sid for r in b.runs]
    rec, released, holds, ran = asyncio.run(main())
    assert rec.state == "cancelled" and any("cancelled while running" in h for h in rec.history)
    assert released == [("n1", 0)] and ("n1", 0) not in holds
    assert "queued" not in ran


def test_a_retry_racing_shutdown_fails_cleanly_instead_of_queueing():
    async def main():
        b = FakeBackend({"n1": [16384]})
        core = await started(b)
        await core.submit(sub("warm", value(0)))
        st = sub("x", value(1), max_retries=3)
        st.future = asyncio.get_running_loop().create_future()
        st.record = Record("x")
        await core.shutdown()
        core._retry(st, "worker lost (test)")  # what a worker loss seen after shutdown does
        return st.future.result(), core.queue
    out, queue = asyncio.run(main())
    assert not out.ok and "shutdown() was called" in str(out.value) and len(queue) == 0


def test_history_does_not_grow_while_a_subtask_waits():
    async def main():
        b = FakeBackend({"n1": [16384]})
        core = await started(b)
        long = asyncio.ensure_future(core.submit(sub("long", sleeper(0.6, 1), batch=False)))
        waiting = asyncio.ensure_future(core.submit(sub("w", value(2), batch=False)))
        await asyncio.sleep(0.4)  # many scheduling rounds (telemetry every 50 ms) while "w" waits
        n_waiting = len(core.explain("w").history)
        await asyncio.gather(long, waiting)
        rec = core.explain("w")
        await core.shutdown()
        return n_waiting, rec
    n_waiting, rec = asyncio.run(main())
    assert n_waiting == 0 and len(rec.history) == 1, rec.history


def test_idle_workers_go_back_at_once_when_other_ray_work_waits_for_a_gpu():
    class Waiting(FakeBackend):
        demand = 0.0

        async def pending_gpu_demand(self):
            return self.demand

    async def main():
        b = Waiting({"n1": [16384, 16384]})
        core = await started(b, idle_timeout_s=60.0)
        await core.submit(sub("x", value(1)))
        await asyncio.sleep(0.7)
        kept = dict(core.pool.workers)  # nobody else waits: kept for the idle timeout
        b.demand = 1.0  # another job's worker (or a plain Ray task) waits for a GPU
        await until(lambda: not core.pool.workers, timeout_s=3.0, what="the idle workers to go back")
        await core.shutdown()
        return kept, b.released
    kept, released = asyncio.run(main())
    assert len(kept) == 2 and sorted(released) == [("n1", 0), ("n1", 1)]


def test_the_report_plays_the_queue_out_over_the_gpus():
    """What the driver routes with: one queued 20 s subtask on an idle 2-GPU node leaves a GPU free for a
    new arrival (it is not spread as 10 s over both); more queued work fills the GPUs in turn."""
    async def main():
        b = FakeBackend({"n1": [16384, 16384]})
        core = await started(b)
        seen = []
        for n in (1, 3):
            # (waiting for inputs: counted as queued soon, never started by the placement loop)
            core.waiting = {f"h{i}": sub(f"h{i}", value(0), fn="hog", work_s=20.0) for i in range(n)}
            seen.append(sorted(round(g.busy_s, 3) for g in core.projected_spec("n1").gpus))
        core.waiting = {"w": sub("w", value(0), fn="wide", work_s=5.0, num_gpus=2)}
        seen.append(sorted(round(g.busy_s, 3) for g in core.projected_spec("n1").gpus))
        core.waiting = {}
        await core.shutdown()
        return seen
    assert asyncio.run(main()) == [[0.0, 20.0], [20.0, 40.0], [5.0, 5.0]]


def test_work_never_finished_is_priced_at_least_at_the_elapsed_time_of_its_running_subtask():
    """Before any run of a function ends, a queue of it is not priced at the unknown-work default per
    subtask once its first run has taken longer (the hand-off and the report read these estimates)."""
    now = [0.0]

    async def main():
        b = FakeBackend({"n1": [16384]})
        core = await started(b, clock=lambda: now[0])
        gate = asyncio.Event()

        async def blocked(w):
            await gate.wait()
        first = asyncio.ensure_future(core.submit(sub("a", lambda w: blocked(w), fn="slow")))
        await until(lambda: "a" in core.records and core.records["a"].state == "running", what="the first run")
        queued = sub("b", value(0), fn="slow")
        before = core.estimate(queued)
        now[0] = 3.0
        during = core.estimate(queued)
        other = core.estimate(sub("c", value(0), fn="other"))
        gate.set()
        await first
        after = core.estimate(queued)
        await core.shutdown()
        return before, during, other, after
    before, during, other, after = asyncio.run(main())
    assert before.source == "unknown" and before.seconds == 0.5
    assert during.source == "running" and during.seconds == 3.0 and "at least" in during.describe()
    assert other.source == "unknown"  # another function's estimate is untouched
    assert after.source == "learned" and after.seconds == pytest.approx(3.0)


def test_the_report_plays_the_queue_only_over_gpus_the_job_can_run_on():
    """GPUs other Ray work holds stay full and take none of the queue: three queued 10 s subtasks on a
    4-GPU node with one GPU left for us are 30 s ahead on that GPU, not 10 s spread over four."""
    class OthersHoldThree(FakeBackend):
        def nodes(self):
            return [dataclasses.replace(n, gpu_available=max(0, n.gpu_available - 3)) for n in super().nodes()]

    async def main():
        core = await started(OthersHoldThree({"n1": [16384] * 4}))
        core.waiting = {f"q{i}": sub(f"q{i}", value(0), fn="q", work_s=10.0) for i in range(3)}
        spec = core.projected_spec("n1")
        core.waiting = {}
        await core.shutdown()
        return [(g.milli_used, round(g.busy_s, 3)) for g in spec.gpus]
    gpus = asyncio.run(main())
    assert sorted(gpus) == [(0, 30.0), (1000, 0.0), (1000, 0.0), (1000, 0.0)]


def test_a_multi_gpu_subtask_holds_its_node_so_single_gpu_work_behind_it_does_not_starve_it():
    """Two 1-GPU subtasks hold both GPUs; a 2-GPU subtask queues, then 1-GPU ones of the same priority. When
    one GPU frees, the 2-GPU subtask holds the node (``placement.queue.Holds``): the 1-GPU ones behind it
    wait, and it starts once the second GPU frees, before them; a higher priority still passes the hold."""
    async def main():
        b = FakeBackend({"n1": [16384, 16384]})
        core = await started(b)
        (gate_a, first_a), (gate_b, first_b) = [await block_gpu(core, k, fn=k, batch=False) for k in ("a", "b")]
        wide = asyncio.ensure_future(core.submit(sub("wide", value("w"), fn="wide", num_gpus=2, batch=False)))
        await until(lambda: len(core.queue) == 1, what="wide queued")
        small = [asyncio.ensure_future(core.submit(sub(f"s{i}", sleeper(0.05, i), fn="s", batch=False)))
                 for i in range(3)]
        await until(lambda: len(core.queue) == 4, what="the small ones queued")
        gate_b.set()
        await first_b
        await asyncio.sleep(0.3)  # many rounds with one GPU free
        held = [r.sid for r in b.runs]
        urgent = asyncio.ensure_future(core.submit(sub("urgent", value("u"), fn="u", priority=5, batch=False)))
        await urgent
        gate_a.set()
        await asyncio.gather(first_a, wide, *small)
        await core.shutdown()
        return held, [r.sid for r in b.runs]
    held, ran = asyncio.run(main())
    assert held == ["a", "b"]  # nothing started on the freed GPU while "wide" waited for the second
    assert ran.index("urgent") < ran.index("wide") < min(ran.index(f"s{i}") for i in range(3))


def test_a_subtask_cancelled_deep_in_a_queue_leaves_it_at_the_next_round():
    """A round sets a shape that fits nowhere aside without popping its subtasks, so a cancelled one
    behind the first would stay queued (counted in the fair-share report and ``room``) until that shape
    places; the round after a cancellation takes every cancelled subtask off the queue."""
    async def main():
        b = FakeBackend({"n1": [16384]})
        core = await started(b)
        gate, first = await block_gpu(core, fn="b", batch=False)
        waiting = [asyncio.ensure_future(core.submit(sub(f"w{i}", value(i), fn="w", batch=False)))
                   for i in range(3)]
        await until(lambda: len(core.queue) == 3, what="three queued")
        await asyncio.sleep(0.2)  # rounds in which the shape is set aside
        waiting[1].cancel()
        await until(lambda: len(core.queue) == 2, what="the cancelled one off the queue", timeout_s=3)
        left = sorted(x[2].id for x in core.queue)
        gate.set()
        await asyncio.gather(first, waiting[0], waiting[2])
        await core.shutdown()
        return left
    assert asyncio.run(main()) == ["w0", "w2"]


def test_rounds_place_nothing_while_no_queued_subtask_can_start(monkeypatch):
    """While every GPU that could take the queued work is busy (and none can be claimed), a wake-up (an
    arrival, telemetry) costs no placement once the queue's head has been placed: a round would rebuild
    its state and place the head again only to find that out (most rounds of a busy node scheduler were
    these). The head is placed once (its explanation; placement may find it never fits)."""
    import placement.scheduler

    calls = []
    real = placement.scheduler.Scheduler.place
    monkeypatch.setattr(placement.scheduler.Scheduler, "place",
                        lambda self, d, **kw: calls.append(d.id) or real(self, d, **kw))

    async def main():
        b = FakeBackend({"n1": [16384]})
        core = await started(b)
        gate, first = await block_gpu(core, fn="b", batch=False)
        calls.clear()
        waiting = []
        for i in range(5):  # each arrival wakes the loop; telemetry does too (every 50 ms)
            waiting.append(asyncio.ensure_future(core.submit(sub(f"w{i}", value(i), fn="w", batch=False))))
            await asyncio.sleep(0.05)
        await until(lambda: len(core.queue) == 5, what="five queued")
        idle_calls = list(calls)
        gate.set()
        outs = await asyncio.gather(first, *waiting)
        await core.shutdown()
        return idle_calls, [o.value for o in outs[1:]]
    idle_calls, values = asyncio.run(main())
    assert values == [0, 1, 2, 3, 4]
    assert idle_calls == ["w0"], idle_calls


def test_a_chunk_queued_at_once_gives_every_outcome_and_cancels_whole():
    """``submit_all`` (a map chunk: no task per subtask) resolves each subtask's outcome in order; cancelled
    (``ray.cancel`` of the chunk's call), its queued subtasks leave the queue and say so, and the core
    goes on serving others."""
    async def main():
        b = FakeBackend({"n1": [16384]})
        core = await started(b)
        outs = await core.submit_all([sub(f"c{i}", value(i), fn="c") for i in range(5)])
        gate, first = await block_gpu(core, fn="b", batch=False)
        chunk = asyncio.ensure_future(core.submit_all([sub(f"q{i}", value(i), fn="q") for i in range(3)]))
        await until(lambda: len(core.queue) == 3, what="the chunk queued behind the blocked GPU")
        chunk.cancel()
        await until(lambda: not core.queue, what="the cancelled chunk off the queue", timeout_s=3)
        gate.set()
        await first
        after = await core.submit(sub("after", value(9), fn="c"))
        states = [core.explain(f"q{i}").state for i in range(3)]
        await core.shutdown()
        return [o.value for o in outs], chunk.cancelled(), states, after.value
    values, cancelled, states, after = asyncio.run(main())
    assert values == [0, 1, 2, 3, 4] and cancelled and after == 9
    assert states == ["cancelled"] * 3, states


def test_never_fits_fails_at_once_also_when_the_gpus_are_held():
    """A subtask no GPU of the node could ever hold fails at once even when every GPU is held by a worker
    (a round that skips queues nothing can start in must still place each new head once)."""
    async def main():
        b = FakeBackend({"n1": [16384, 16384]})
        core = await started(b)
        await asyncio.gather(*(core.submit(sub(f"w{i}", sleeper(0.05, i), fn="w", batch=False)) for i in range(2)))
        assert len(core.pool.workers) == 2  # both GPUs held (idle) by workers
        gate, first = await block_gpu(core, fn="b", batch=False)
        out = await asyncio.wait_for(core.submit(sub("huge", value(1), gpu_memory="40GiB")), 5)
        gate.set()
        await first
        await core.shutdown()
        return out
    assert "16384 MiB" in never_fits(asyncio.run(main()))


def test_a_queued_head_that_can_no_longer_ever_fit_fails_within_a_few_seconds():
    """A head placed once, waiting behind busy GPUs, whose node's GPU memory then shrinks below what it
    asks for (nothing wakes the loop for that): a full round still comes every ``FULL_ROUND_S`` and
    placement fails it, naming the largest GPU, instead of leaving it queued for ever."""
    async def main():
        b = FakeBackend({"n1": [16384]})
        core = await started(b)
        gate, first = await block_gpu(core, fn="b", batch=False, gpu_memory="2GiB")
        waiting = asyncio.ensure_future(core.submit(sub("big", value(1), fn="w", gpu_memory="15GiB")))
        await until(lambda: core.explain("big") and core.explain("big").state == "queued", what="big queued")
        b.sources["n1"] = EmulatedSource(1, [4096])  # the GPU now has 4 GiB in all
        out = await asyncio.wait_for(waiting, 6)
        gate.set()
        await first
        await core.shutdown()
        return out
    assert "4096 MiB" in never_fits(asyncio.run(main()))


def never_fits(out) -> str:
    """The message of ``out``, which must be a NeverFitsError."""
    assert not out.ok and isinstance(out.value, NeverFitsError), out.value
    return str(out.value)


def test_every_wait_of_the_core_goes_through_its_injected_sleep():
    """The core waits only through the ``sleep`` it is given, so a replay can run it on a clock of its own:
    the refresh period, the gap between rounds and a claim's back-off. With a sleep that returns at once,
    periods that add up to hours take well under a second of real time."""

    class NoWorkerComesUp(FakeBackend):
        async def claim(self, node, count, ready):
            self.claims += 1  # Ray's view was stale: no GPU for the claim after all

    async def main():
        slept = []

        async def sleep(s):
            slept.append(s)
            await asyncio.sleep(0.001)

        b = NoWorkerComesUp({"n1": [16384]})
        core = DispatchCore(b, telemetry_period_s=3600.0, round_gap_s=600.0, sleep=sleep)
        await core.start()
        fut = asyncio.ensure_future(core.submit(sub("a", value(1))))
        await until(lambda: b.claims >= 2, what="a second claim, after the first one's back-off")
        await core.shutdown()  # (fails the queued subtask)
        await asyncio.gather(fut, return_exceptions=True)
        return slept

    t0 = time.monotonic()
    slept = asyncio.run(main())
    assert {3600.0, 600.0, CLAIM_BACKOFF_S} <= set(slept), slept
    assert time.monotonic() - t0 < 5.0
