"""The arbiter's books (fastgpu_ray.core.share_book) and a node scheduler's core under a share (DispatchCore with
a fake backend): no Ray."""
from __future__ import annotations

import asyncio

from fastgpu_ray.core.share_book import Share, ShareBook

from test_runtime_dispatch import FakeBackend, started, sleeper, sub, until


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def report(book, job, node, held, want, ray_job=None, weight=1.0):
    return book.report(job, node, weight=weight, ray_job=ray_job or job, gpu_total=2, held=held, want=want)


def test_a_second_job_gets_half_and_only_changes_are_sent():
    book = ShareBook()
    for n in ("n1", "n2"):
        assert report(book, "a", n, 2, 2) is False  # first report of that (job, node)
    assert {k: s.cap for k, s in book.changed()} == {("a", "n1"): 2, ("a", "n2"): 2}
    assert book.changed() == []  # nothing changed, nothing to send
    for n in ("n1", "n2"):
        report(book, "b", n, 0, 2)
    sent = dict(book.changed())
    assert sent[("a", "n1")].cap + sent[("a", "n2")].cap == 2
    assert sent[("b", "n1")].cap + sent[("b", "n2")].cap == 2
    # a still holds 2 where its cap is 1: b is told that GPU is being handed over
    for n in ("n1", "n2"):
        if sent[("a", n)].cap == 1:
            assert sent[("b", n)].handing_over == 1 and sent[("b", n)].others_held == 2
    assert sent[("b", "n1")].jobs == 2 and sent[("b", "n1")].share == 2.0


def test_dead_drivers_and_silent_schedulers_leave():
    clock = Clock()
    book = ShareBook(clock=clock, stale_s=10)
    report(book, "a", "n1", 2, 2, ray_job="01000000")
    report(book, "b", "n1", 0, 2, ray_job="02000000")
    assert book.drop_dead(["01000000"]) == ["a"]
    assert [j.job for j in book.status()] == ["b"]
    assert dict(book.changed())[("b", "n1")].cap == 2  # the dead job's GPUs go to b
    clock.t = 11.0
    book.drop_dead([])
    assert book.status() == [] and book.decide() == {}


def test_status_shows_each_jobs_share_and_work():
    book = ShareBook()
    book.report("a", "n1", weight=2, ray_job="01", gpu_total=2, held=2, want=2, running=2, queued=7)
    book.report("b", "n1", weight=1, ray_job="02", gpu_total=2, held=0, want=2, running=0, queued=3)
    book.decide()
    a, b = book.status()
    assert (a.job, a.weight, a.running, a.queued, a.held) == ("a", 2.0, 2, 7, 2)
    assert a.share_gpus > b.share_gpus > 0


def test_idle_workers_above_the_cap_go_back_at_once_and_busy_ones_when_done():
    async def main():
        b = FakeBackend({"n1": [16384, 16384]})
        core = await started(b)
        long = asyncio.ensure_future(core.submit(sub("long", sleeper(0.5, "done"))))
        await core.submit(sub("short", sleeper(0.01)))
        await until(lambda: len(core.pool.workers) == 2, what="both GPUs held")
        core.set_share(Share(cap=0, jobs=2))
        await until(lambda: len(b.released) == 1, what="the idle worker released")
        assert len(core.pool.workers) == 1 and not long.done()  # the busy one is not preempted
        out = await long
        await until(lambda: not core.pool.workers, what="the busy worker released once done")
        await core.shutdown()
        return out
    assert asyncio.run(main()).value == "done"


def test_claims_stay_within_the_cap_and_the_wait_is_explained():
    async def main():
        b = FakeBackend({"n1": [16384, 16384]})
        core = await started(b)
        core.set_share(Share(cap=1, jobs=2, share=1.0))
        futs = [asyncio.ensure_future(core.submit(sub(f"s{i}", sleeper(0.05, i)))) for i in range(4)]
        await asyncio.sleep(0.1)
        waiting = [r for r in core.records.values() if r.state == "queued"]
        outs = await asyncio.gather(*futs)
        await core.shutdown()
        return b, outs, waiting
    b, outs, waiting = asyncio.run(main())
    assert [o.value for o in outs] == [0, 1, 2, 3]
    assert {r.gpu for r in b.runs} == {0} or {r.gpu for r in b.runs} == {1}  # one GPU only
    assert any("waiting for fair share" in h for r in waiting for h in r.history)


def test_no_claim_before_the_first_share():
    async def main():
        b = FakeBackend({"n1": [16384, 16384]})
        core = await started(b)
        core.share_expected_until = core.clock() + 60
        fut = asyncio.ensure_future(core.submit(sub("s", sleeper(0.01, "ok"))))
        await asyncio.sleep(0.2)
        before = b.claims
        core.set_share(Share(cap=2))
        out = await fut
        await core.shutdown()
        return before, out
    before, out = asyncio.run(main())
    assert before == 0 and out.value == "ok"


def test_a_claim_waiting_for_another_jobs_gpu_is_not_a_hold():
    book = ShareBook()
    book.report("a", "n1", weight=1, ray_job="01", gpu_total=2, held=2, want=2)
    book.report("b", "n1", weight=1, ray_job="02", gpu_total=2, held=0, claiming=1, want=2)
    caps = {k: s.cap for k, s in book.decide().items()}
    assert caps[("a", "n1")] + caps[("b", "n1")] <= 2
    assert caps == {("a", "n1"): 1, ("b", "n1"): 1}  # shared by the rule, not by who claimed first


def test_status_table_lists_every_job_with_its_share():
    from fastgpu_ray.cluster_status import ClusterStatus

    book = ShareBook()
    book.report("a1b2c3d4", "n1", weight=2, ray_job="01000000", gpu_total=2, held=2, want=2, running=2, queued=9)
    book.report("e5f6a7b8", "n1", weight=1, ray_job="02000000", gpu_total=2, held=0, want=1, running=0, queued=1)
    book.decide()
    text = ClusterStatus((), 10, 1, jobs=tuple(book.status())).format()
    assert "jobs sharing the GPUs" in text
    rows = [line.split() for line in text.splitlines() if line.strip().startswith(("a1b2", "e5f6"))]
    assert rows[0][:3] == ["a1b2c3d4", "01000000", "2"] and rows[0][-2:] == ["2", "9"]
    assert rows[1][:3] == ["e5f6a7b8", "02000000", "1"] and rows[1][-2:] == ["0", "1"]


def test_a_grant_stands_while_its_worker_starts():
    book = ShareBook()
    book.report("a", "n1", weight=1, ray_job="01", gpu_total=2, held=2, want=2, queued=20)
    book.report("a", "n2", weight=1, ray_job="01", gpu_total=2, held=2, want=2, queued=20)
    for n in ("n1", "n2"):
        book.report("b", n, weight=1, ray_job="02", gpu_total=2, held=0, want=2, queued=20)
    first = {k: s.cap for k, s in book.changed()}
    granted = [n for n in ("n1", "n2") if first[("b", n)] > 0]
    # a's workers are still busy there; b's workers are starting (claims), its queues shift a little:
    # b keeps the grants it was given instead of seeing them moved to the other node
    for i in range(5):
        for n in ("n1", "n2"):
            book.report("b", n, weight=1, ray_job="02", gpu_total=2, held=0, claiming=first[("b", n)], want=2,
                        queued=20 + (i if n == "n1" else -i))
        caps = {k: s.cap for k, s in book.decide().items()}
        assert [n for n in ("n1", "n2") if caps[("b", n)] > 0] == granted
        assert sum(caps[("b", n)] for n in ("n1", "n2")) == 2


def test_a_job_alone_does_not_report_every_change_of_its_backlog_but_beats_anyway():
    """A node scheduler reports to the arbiter when what it reports changes: a running count never
    changes a share, a queue length only ranks jobs against each other (so only with others). Its
    heartbeat goes regardless: a busy node alone, whose counts change all the time while nothing else
    does, must still be heard (the arbiter drops schedulers it has not heard from)."""
    from fastgpu_ray.actors.node_scheduler import _due

    before = dict(gpu_total=2, held=2, claiming=0, want=2, running=2, queued=9, weight=1.0)
    busier = dict(before, running=1, queued=30)
    alone, shared = Share(cap=2, jobs=1), Share(cap=1, jobs=2)
    assert not _due(busier, before, None, beat=False) and not _due(busier, before, alone, beat=False)
    assert _due(busier, before, shared, beat=False)
    assert _due(dict(before, want=1), before, alone, beat=False)  # the GPUs it could use: always
    assert _due(before, before, alone, beat=True) and _due(before, None, alone, beat=False)


def test_a_busy_node_alone_is_still_heard_every_heartbeat(monkeypatch):
    """The report loop itself (``node_scheduler.report_shares``): with its state changing all the time
    in what does not matter alone (running, queued) and its change event set every 20 ms, it still
    sends a heartbeat about every ``SHARE_HEARTBEAT_S`` (here 0.2 s). With the beat taken only on a
    second without changes, it sent once in 12 s and the arbiter dropped the job after 10."""
    import asyncio

    from fastgpu_ray.actors import node_scheduler as ns

    monkeypatch.setattr(ns, "SHARE_HEARTBEAT_S", 0.2)
    monkeypatch.setattr(ns, "SHARE_REPORT_GAP_S", 0.01)
    sent, beats, n = [], [], [0]

    def state():
        n[0] += 1
        return dict(gpu_total=2, held=2, claiming=0, want=2, running=1 + n[0] % 2, queued=500 - n[0])

    async def send(st):
        sent.append(st)
        return True

    async def on_beat(k):
        beats.append(k)

    async def main():
        changed = asyncio.Event()
        loop_task = asyncio.ensure_future(ns.report_shares(changed, state, lambda: Share(cap=2, jobs=1), send, on_beat))
        for _ in range(50):  # 1 s of churn
            changed.set()
            await asyncio.sleep(0.02)
        loop_task.cancel()
    asyncio.run(main())
    assert 4 <= len(sent) <= 7, len(sent)  # first report + a beat every 0.2 s, not one per change (~50)
    assert beats[:3] == [1, 2, 3]
