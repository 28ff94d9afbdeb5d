"""Decisions without hints (DispatchCore with the fake backend, no Ray): run times learned per function and
explained, every running subtask has an estimated end, load that changes mid-run is seen, best match
within a priority, priorities strict, work that does not follow the cost model's slowdown."""
from __future__ import annotations

import asyncio
import time

import pytest

from fastgpu_ray.core.dispatch import Outcome
from fastgpu_ray.core.records import Record
from placement.cost import slowdown
from test_runtime_dispatch import FakeBackend, block_gpu, claim_gpus, started, sub, until, value


def loaded(b: FakeBackend, seconds: float, power: float = 1.0, v=None):
    """Work of ``seconds`` on an idle GPU, slowed by the GPU's outside load when it starts:
    ``slowdown(load) ** power`` (power 1: the cost model's own formula)."""
    async def run(w):
        util = next(r.external_util for r in b.sources[w.node_id].read() if r.index == w.gpu_index)
        await asyncio.sleep(seconds * slowdown(util) ** power)
        return v
    return run


async def blocked_node(learn: bool = True):
    """A 1-GPU node whose GPU runs a 1 s subtask ("block") until the returned gate is set, with 0.2 s
    subtasks of function "fn" learned first (``learn``): (backend, core, gate, the block's future)."""
    b = FakeBackend({"n": [16384]})
    core = await started(b)
    if learn:
        await core.submit(sub("learn", loaded(b, 0.2), batch=False))
    gate, first = await block_gpu(core, fn="block", work_s=1.0)
    return b, core, gate, first


def test_run_time_is_learned_without_work_s_normalised_by_load_and_explained():
    async def main():
        b = FakeBackend({"a": [16384, 16384]})
        b.sources["a"].set_gpu(1, util=0.8)
        core = await started(b)
        cold = sub("f0", loaded(b, 0.08), batch=False)
        assert core.estimate(cold).source == "unknown"
        for i in range(6):  # one at a time, so some run on the loaded GPU too
            await core.submit(sub(f"f{i}", loaded(b, 0.08), batch=False))
        est = core.estimate(sub("next", value(0)))
        text = core.explain("f5").format()
        await core.shutdown()
        return est, text
    est, text = asyncio.run(main())
    assert est.source == "learned" and est.runs == 6
    assert est.seconds == pytest.approx(0.08, rel=0.35)  # not 5x: runs on the loaded GPU are divided out
    assert "duration estimate:" in text and "learned from 5 runs" in text


def test_a_run_started_before_anything_was_known_shows_its_true_end_once_its_function_is_learned():
    """Two 1 s subtasks of an unknown function, the second started 0.5 s after the first on the other GPU
    (both on the 0.5 s guess). When the first ends, its node has learned 1 s: the second's GPU shows about
    0.5 s left (its start + 1 s), not a quarter of its elapsed time (0.125 s) as an overdue guess would."""
    async def main():
        b = FakeBackend({"n": [16384, 16384]})
        core = await started(b)
        await claim_gpus(core, 2)
        first = asyncio.ensure_future(core.submit(sub("a", loaded(b, 1.0), batch=False)))
        await asyncio.sleep(0.5)
        second = asyncio.ensure_future(core.submit(sub("b", loaded(b, 1.0), batch=False)))
        await until(lambda: core.explain("b") is not None and core.explain("b").state == "running", what="b runs")
        gpu = core.explain("b").gpus[0]
        await first
        left = core.free_in("n", gpu, core.clock())
        await second
        await core.shutdown()
        return left
    left = asyncio.run(main())
    assert 0.3 < left < 0.7, left


def test_queue_waits_for_the_idle_gpu_although_no_subtask_declares_work():
    """Cold start (unknown work, priced at UNKNOWN_WORK_S) and learned: a running subtask has an estimated
    end, so queued ones wait for the idle GPU instead of starting 10x slower on the loaded one."""
    async def main():
        b = FakeBackend({"a": [16384], "b": [16384]})
        b.sources["b"].set_gpu(0, util=0.9)
        core = await started(b)
        await claim_gpus(core, 2)
        assert len(core.pool.workers) == 2
        nodes = []
        for wave in range(2):
            b.runs.clear()
            await asyncio.gather(*(core.submit(sub(f"w{wave}-{i}", loaded(b, 0.05), batch=False))
                                   for i in range(4)))
            nodes.append([r.node for r in b.runs])
        await core.shutdown()
        return nodes
    cold, learned = asyncio.run(main())
    assert set(cold) == {"a"} and set(learned) == {"a"}, (cold, learned)


def test_load_that_appears_mid_map_is_seen():
    async def main():
        b = FakeBackend({"n": [16384, 16384]})
        core = await started(b)
        await asyncio.gather(*(core.submit(sub(f"warm{i}", loaded(b, 0.04), batch=False)) for i in range(4)))
        b.runs.clear()
        futs = [asyncio.ensure_future(core.submit(sub(f"m{i}", loaded(b, 0.04), batch=False))) for i in range(15)]
        await until(lambda: len(b.runs) >= 5, what="a third of the map to start")
        b.sources["n"].set_gpu(1, util=0.95)  # 20x slower from now on
        seen = time.monotonic() + 0.15  # the core reads telemetry every 0.05 s here
        await asyncio.gather(*futs)
        late = [r for r in b.runs if r.start > seen]
        await core.shutdown()
        return b.runs, late
    runs, late = asyncio.run(main())
    assert late, "no subtask started after the load changed"
    assert all(r.gpu == 0 for r in late), [(r.sid, r.gpu) for r in late]


def test_best_match_serves_the_shortest_first_within_a_priority_never_across():
    async def main():
        b = FakeBackend({"n": [16384]})
        core = await started(b)
        for fn, s in (("long", 0.2), ("short", 0.01)):  # learn both
            await core.submit(sub(f"learn-{fn}", loaded(b, s), fn=fn, batch=False))
        gate = asyncio.Event()

        async def blocker(w):
            await gate.wait()

        first = asyncio.ensure_future(core.submit(sub("block", lambda w: blocker(w), fn="block")))
        await until(lambda: core.explain("block") and core.explain("block").state == "running", what="block")
        b.runs.clear()
        order = [("L1", "long", 0), ("L2", "long", 0), ("S1", "short", 0), ("hi-L", "long", 5), ("S2", "short", 0)]
        futs = [asyncio.ensure_future(core.submit(sub(s, loaded(b, 0.2 if fn == "long" else 0.01), fn=fn,
                                                      priority=p, batch=False))) for s, fn, p in order]
        await until(lambda: len(core.queue) == 5, what="the five to queue behind it")
        gate.set()
        await asyncio.gather(first, *futs)
        await core.shutdown()
        return [r.sid for r in b.runs]
    ran = asyncio.run(main())
    # priority first: the long one of priority 5 before any short one; then the shortest first
    assert ran == ["hi-L", "S1", "S2", "L1", "L2"], ran


def sized(sid: str, b: FakeBackend, mib: float, per_mib_s: float = 0.02):
    """A subtask of function ``f`` whose input is ``mib`` MiB and whose work takes ``per_mib_s`` per MiB."""
    st = sub(sid, loaded(b, per_mib_s * mib), fn="f", batch=False)
    st.input_bytes = int(mib * 2**20)
    return st


def test_a_run_time_learned_per_input_byte_sends_a_large_input_to_the_idle_gpu_and_a_small_one_to_the_loaded():
    """Run time 0.02 s per MiB of input, learned from runs of 1 to 16 MiB (nothing declared). GPU 0 is
    busy with other work, GPU 1 80 % loaded (5x slower): a 0.5 MiB subtask starts on the loaded GPU at
    once (~0.05 s there) and a 16 MiB one waits for GPU 0 (0.32 s there, 1.6 s on the loaded one). With
    one estimate for every size both would choose alike."""
    async def main():
        b = FakeBackend({"a": [16384, 16384]})
        core = await started(b)
        await claim_gpus(core, 2)
        for i, mib in enumerate((1, 16, 2, 8, 4, 1, 16, 8)):
            await core.submit(sized(f"learn{i}", b, mib))
        b.sources["a"].set_gpu(1, util=0.8)
        await asyncio.sleep(0.2)  # the core reads telemetry every 0.05 s here
        block = asyncio.ensure_future(core.submit(sub("block", loaded(b, 0.4), fn="other", batch=False)))
        await until(lambda: core.explain("block") and core.explain("block").state == "running", what="block")
        assert core.explain("block").gpus == (0,)
        b.runs.clear()
        small, big = sized("small", b, 0.5), sized("big", b, 16)
        assert core.estimate(big).seconds == pytest.approx(32 * core.estimate(small).seconds, rel=0.2)
        await asyncio.gather(block, core.submit(small), core.submit(big))
        text = core.explain("big").format()
        await core.shutdown()
        return {r.sid: r.gpu for r in b.runs}, text
    gpus, text = asyncio.run(main())
    assert gpus == {"small": 1, "big": 0}, gpus
    assert "for 16 MiB of input, run time ~ bytes^" in text, text


def test_not_circular_work_slowed_more_than_the_cost_model_says():
    """The work's slowdown is the model's squared (0.8 load: 25x, the model says 5x): estimates still
    converge to the idle run time, and the loaded GPU gets no more work as the estimates are learned."""
    async def main():
        b = FakeBackend({"a": [16384], "b": [16384]})
        b.sources["b"].set_gpu(0, util=0.8)
        core = await started(b)
        await claim_gpus(core, 2)
        on_b = []
        for wave in range(3):
            b.runs.clear()
            await asyncio.gather(*(core.submit(sub(f"w{wave}-{i}", loaded(b, 0.03, power=2), batch=False))
                                   for i in range(6)))
            on_b.append(sum(1 for r in b.runs if r.node == "b"))
        est = core.estimate(sub("x", value(0)))
        await core.shutdown()
        return on_b, est
    on_b, est = asyncio.run(main())
    # runs on b teach 5x the truth (25x slower, divided by the model's 5x); the estimate stays well below
    assert 0.015 <= est.seconds <= 0.09, est
    assert on_b[-1] <= on_b[0] and on_b[-1] <= 1, on_b


def test_a_node_receives_hand_offs_when_a_gpu_frees_within_the_donors_move_time():
    """``handoff.pairs``: the longest wait gives to the soonest free; a receiver about to free counts when
    its GPU frees within the time the donor's largest input takes to move (at least 0.1 s), so the data
    arrives as the GPU frees; without inputs, only a GPU free within 0.1 s; one hand-off per node."""
    from fastgpu_ray.core import handoff

    move = lambda nbytes: nbytes / 125e6  # 1 Gbit/s  # noqa: E731
    wait = {"heavy": 3.0, "light": 0.2, "mid": 1.5}
    queued = {"heavy": 4, "mid": 1}
    alone = {n: None for n in wait}
    assert handoff.pairs(wait, queued, alone, {"heavy": 32 << 20}, move) == [("heavy", "light")]  # 0.27 s move
    assert handoff.pairs(wait, queued, alone, {"heavy": 0}, move) == []  # no data: light is not free yet
    wait["light"] = 0.05
    assert handoff.pairs(wait, queued, alone, {}, move) == [("heavy", "light")]  # mid has no receiver left
    # another job shares the cluster: a GPU of this job on "mid" takes more within HORIZON_S / 2
    assert handoff.pairs({"heavy": 3.0, "mid": 0.9}, queued, {"heavy": None, "mid": [(0.9, 0.0)]}, {}, move) == [
        ("heavy", "mid")]
    assert handoff.pairs({"heavy": 0.1, "light": 0.05}, queued, alone, {}, move) == []  # not worth the hop


def test_the_largest_input_a_node_could_hand_over_is_reported():
    from fastgpu_ray.core import handoff

    async def main():
        b, core, gate, first = await blocked_node()
        futs = []
        for i, nbytes in enumerate((10, 5000, None)):
            st = sub(f"q{i}", value(i), batch=False)
            st.input_bytes = nbytes
            futs.append(asyncio.ensure_future(core.submit(st)))
        await until(lambda: len(core.queue) == 3, what="the queue")
        got = handoff.largest_input(core, 1)
        gate.set()
        await asyncio.gather(first, *futs)
        await core.shutdown()
        return got
    assert asyncio.run(main()) == 5000


def test_hand_off_picks_from_the_back_what_finishes_sooner_elsewhere():
    """Delay scheduling (fastgpu_ray.core.handoff.pick): a queue of learned 0.2 s subtasks behind a 1 s one on
    a 1-GPU node; none leaves before it has waited as long as moving its inputs takes; then another
    node's GPU, free in 0.6 s, takes subtasks from the back of the queue while they
    finish sooner there (each after the one before), none when moving costs more than waiting or that
    GPU is 10x slower, never a higher-priority one before a lower one, never a gang."""
    from fastgpu_ray.core import handoff

    async def main():
        b, core, gate, first = await blocked_node()
        futs = [asyncio.ensure_future(core.submit(sub(f"q{i}", value(i), batch=False, priority=5 if i < 2 else 0)))
                for i in range(6)]
        await until(lambda: len(core.queue) == 6, what="the queue")
        moved = handoff.pick(core, [(0.0, 0.0)], lambda st: 0.1)  # queued < 0.1 s: not yet (delay scheduling)
        await asyncio.sleep(0.12)
        none = handoff.pick(core, [(0.0, 0.0), (0.0, 0.0)], lambda st: 100.0)
        far = handoff.pick(core, [(0.0, 0.9)], lambda st: 0.0)  # 10x slower there: 2 s > waiting here
        got = handoff.pick(core, [(0.6, 0.0)], lambda st: 0.1)
        left = sorted(x[2].id for x in core.queue)
        for st, here, there in got:
            core.handed_off(st, "other", here, there)
            if st is got[0][0]:  # the other node handed it on: its record names where it ran
                core.ran_elsewhere(st, Record(st.id, "handed off", "third", (1,), history=["handed to node third"]))
            core.finish_elsewhere(st, Outcome(True, "elsewhere"))
        gate.set()
        outs = await asyncio.gather(first, *futs)
        recs = {st.id: core.explain(st.id) for st, _, _ in got}
        await core.shutdown()
        return moved, none, far, got, left, outs, recs
    moved, none, far, got, left, outs, recs = asyncio.run(main())
    assert moved == [] and none == [] and far == []
    # finish here: ~0.85 s + 0.2 s per subtask ahead; there: 0.6 s + 0.2 s per subtask taken (+ the hop)
    assert [st.id for st, _, _ in got] == ["q5", "q4", "q3"], got
    assert left == ["q0", "q1", "q2"]
    assert all(there < here for _, here, there in got)
    assert [o.value for o in outs[1:]] == [0, 1, 2, "elsewhere", "elsewhere", "elsewhere"]
    assert all("handed to node other" in "\n".join(r.history) for r in recs.values())
    chained = recs[got[0][0].id]
    assert (chained.node, chained.gpus) == ("third", (1,)) and "on other: handed to node third" in chained.history
    assert {r.node for r in list(recs.values())[1:]} == {"other"}


@pytest.mark.parametrize("rerun", [None, "re-run: its node scheduler was restarted on n after node b died"])
def test_a_subtask_back_at_the_node_that_handed_it_on_keeps_its_record_there(rerun):
    """A subtask comes back to the node that handed it on: handed back (the arbiter moved its job's GPUs
    there again), or forwarded by the other node's scheduler restarted there after that node died
    (``rerun``). That node's record (what explain(ref) reads, the user's ref being its call) keeps the
    driver's routing and the hand-off, then says where it ran."""
    from fastgpu_ray.core import handoff

    async def main():
        b, core, gate, first = await blocked_node(learn=False)
        orig = sub("s", value(7), batch=False)
        fut = asyncio.ensure_future(core.submit(orig, node_choice="the driver's choice",
                                                history=("transfer to n: nothing to move",)))
        await until(lambda: len(core.queue) == 1, what="the queue")
        (picked, here, there), = handoff.pick(core, [(0.0, 0.0)], lambda st: 0.0)
        core.handed_off(picked, "b", here, there)
        gate.set()
        again = await core.submit(sub("s", value(7), batch=False), history=("handed over by node n (its queue "
                                  "was longer)",), rerun=rerun)
        rec = core.explain("s")
        core.finish_elsewhere(picked, again)
        out = await fut
        await first
        await core.shutdown()
        return rec, out
    rec, out = asyncio.run(main())
    assert out.ok and out.value == 7
    assert rec.node_choice == "the driver's choice", rec.format()
    assert rec.history[0] == "transfer to n: nothing to move", rec.history
    assert any(h.startswith("handed to node b") for h in rec.history), rec.history
    assert any(h.startswith("handed over by node n") for h in rec.history), rec.history
    assert any(h.startswith("placed on n") for h in rec.history) and rec.state == "finished", rec.format()
    assert (rerun is None) != any(h.startswith("re-run") for h in rec.history), rec.history


def test_hand_off_with_other_jobs_counts_only_the_gpus_the_job_holds():
    """Fair share (other jobs on the cluster): a node's GPUs for hand-offs are this job's live workers
    within its cap, plus GPUs no one holds (a claim away); its queue is played out over those only. Where
    the job holds none any more, what starts on the other node within HORIZON_S goes, no more."""
    from fastgpu_ray.core import handoff
    from fastgpu_ray.core.dispatch import CLAIM_S
    from fastgpu_ray.core.share_book import Share

    async def main():
        b = FakeBackend({"n": [16384, 16384]})
        core = await started(b)
        gate = asyncio.Event()

        async def blocker(w):
            await gate.wait()

        blocks = [asyncio.ensure_future(core.submit(sub(f"block{i}", lambda w: blocker(w), fn="block", work_s=1.0,
                                                        batch=False))) for i in range(2)]
        await until(lambda: sum(h.running for h in core.reservations.holds.values()) == 2, what="both GPUs busy")
        key = sub("x", value(0), fn="f").duration_key
        for _ in range(5):
            core.durations.observe(key, 0.5, 1.0)
        alone = core.own_slots("n", core.clock())
        core.set_share(Share(cap=2, jobs=2))
        futs = [asyncio.ensure_future(core.submit(sub(f"q{i}", value(i), fn="f", batch=False))) for i in range(20)]
        await until(lambda: len(core.queue) == 20 and core.nodes[0].gpu_available == 0, what="the queue")
        shared = core.own_slots("n", core.clock())
        held = handoff.pick(core, [(0.1, 0.0)], lambda st: 0.0)
        core.set_share(Share(cap=0, jobs=2))  # its busy workers finish first; none counts for the queue now
        none_held = handoff.pick(core, [(0.1, 0.0)], lambda st: 0.0)
        for st, _, _ in held + none_held:
            core.finish_elsewhere(st, Outcome(True, "elsewhere"))
        core.set_share(Share(cap=2, jobs=2))
        gate.set()
        await asyncio.gather(*blocks, *futs)
        core.set_share(Share(cap=0, jobs=2))  # its idle workers go back: both GPUs free, no one's
        await until(lambda: core.nodes[0].gpu_available == 2, what="the GPUs given back")
        free = core.own_slots("n", core.clock())
        await core.shutdown()
        return alone, shared, held, none_held, free
    alone, shared, held, none_held, free = asyncio.run(main())
    assert alone is None  # alone on the cluster: every GPU is the job's to claim
    assert [g for g, _, _ in shared] == [0, 1] and all(0.5 < busy <= 1.0 for _, busy, _ in shared), shared
    # 20 x 0.5 s over its 2 GPUs (busy for ~1 s): the back of the queue finishes ~5.9 s from now here
    assert held and all(there < 0.9 * here for _, here, there in held), held
    assert [st.id for st, _, _ in held] == [f"q{19 - i}" for i in range(len(held))]
    assert max(here for _, here, _ in held) == pytest.approx(6.0, abs=0.3)
    # no GPU here: starts there at 0.1, 0.6, 1.1, 1.6 s (2.1 s is past HORIZON_S)
    assert len(none_held) == 4 and all(here == float("inf") for _, here, _ in none_held), none_held
    assert free == [(None, CLAIM_S, 0.0)] * 2  # a claim away
