"""The arbiter's books: every job's state per GPU node, and the caps it sends back. No Ray (unit-tested).

``fastgpu_ray.actors.arbiter`` wraps one ``ShareBook`` in a detached actor shared by every driver on the cluster.
Node schedulers ``report`` their job's state on their node (on change, and about once a second); the book
recomputes the caps (``fair_share.node_caps``) and ``changed()`` lists the (job, node) pairs whose
``Share`` must be sent. A job leaves when its session shuts down, when Ray's job table says its driver
died, or when its reports stop for ``STALE_S``.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from .fair_share import JobNode, fair_shares, job_demands, node_caps

STALE_S = 10.0  # a (job, node) that has not reported for this long is dropped (its scheduler is gone)


@dataclass(frozen=True)
class Share:
    """What one job's node scheduler may hold on its node."""

    cap: int  # GPU workers it may hold there (it gives back idle ones above this at once)
    handing_over: int = 0  # GPUs other jobs hold there above their caps: free for this job as their work ends
    others_held: int = 0  # GPUs other jobs hold there (the driver may route work here: fair share hands
    #                       them over as their work ends)
    share: float = 0.0  # the job's fair share of the cluster, in GPUs (for explain and status)
    jobs: int = 1  # jobs with work on the cluster


@dataclass
class _Row:
    gpu_total: int
    held: int = 0
    claiming: int = 0
    want: int = 0
    running: int = 0
    queued: int = 0
    seen: float = 0.0


@dataclass
class _Job:
    weight: float
    ray_job: str
    age: int
    label: str = ""


@dataclass(frozen=True)
class JobShare:
    """One job as ``fastgpu status`` shows it."""

    job: str
    ray_job: str
    label: str
    weight: float
    share_gpus: float
    held: int
    running: int
    queued: int
    claiming: int = 0  # GPUs its workers are starting on (or waiting for)


class ShareBook:
    def __init__(self, clock: Callable[[], float] = time.monotonic, stale_s: float = STALE_S) -> None:
        self.clock = clock
        self.stale_s = stale_s
        self.jobs: dict[str, _Job] = {}
        self.rows: dict[tuple[str, str], _Row] = {}
        self.sent: dict[tuple[str, str], Share] = {}
        self.shares: dict[str, float] = {}
        self._ages = itertools.count()

    def report(self, job: str, node: str, *, weight: float, ray_job: str, gpu_total: int, held: int, want: int,
               claiming: int = 0, running: int = 0, queued: int = 0, label: str = "") -> bool:
        """One node scheduler's state; returns whether the book already knew this (job, node)."""
        if job not in self.jobs:
            self.jobs[job] = _Job(float(weight), ray_job, next(self._ages), label)
        key = (job, node)
        known = key in self.rows
        r = self.rows.setdefault(key, _Row(gpu_total))
        r.gpu_total, r.held, r.claiming, r.want = gpu_total, held, claiming, want
        r.running, r.queued, r.seen = running, queued, self.clock()
        return known

    def leave(self, job: str, node: str | None = None) -> None:
        for key in [k for k in self.rows if k[0] == job and (node is None or k[1] == node)]:
            del self.rows[key]
            self.sent.pop(key, None)
        if not any(k[0] == job for k in self.rows):
            self.jobs.pop(job, None)

    def drop_dead(self, dead_ray_jobs: Iterable[str] = ()) -> list[str]:
        """Drop jobs whose driver Ray reports dead and (job, node) rows that stopped reporting."""
        dead = set(dead_ray_jobs)
        gone = [j for j, info in self.jobs.items() if info.ray_job in dead]
        for j in gone:
            self.leave(j)
        now = self.clock()
        for (j, n), r in list(self.rows.items()):
            if now - r.seen > self.stale_s:
                self.leave(j, n)
        return gone

    def decide(self) -> dict[tuple[str, str], Share]:
        """Every row's share now (see ``fair_share``)."""
        if not self.rows:
            return {}
        nodes: dict[str, list[str]] = {}
        for j, n in self.rows:
            nodes.setdefault(n, []).append(j)
        capacity = {n: max(self.rows[(j, n)].gpu_total for j in js) for n, js in nodes.items()}
        rows = [JobNode(j, n, self._held(j, n, nodes[n], capacity[n]), r.want, r.queued)
                for (j, n), r in self.rows.items()]
        # every job gets a row on every node (want 0 where it has no scheduler yet)
        for j in self.jobs:
            rows += [JobNode(j, n, 0, 0) for n in nodes if (j, n) not in self.rows]
        weights = {j: info.weight for j, info in self.jobs.items()}
        demand = job_demands(rows, capacity)
        self.shares = fair_shares(weights, demand, sum(capacity.values()))
        caps = node_caps(rows, capacity, weights, {j: info.age for j, info in self.jobs.items()}, self.shares)
        busy_jobs = sum(1 for j in self.jobs if demand.get(j, 0) > 0)
        out = {}
        for (j, n) in self.rows:
            others = [k for k in nodes[n] if k != j]
            over = sum(max(0, self.rows[(k, n)].held - caps[(k, n)]) for k in others)
            out[(j, n)] = Share(caps[(j, n)], over, sum(self.rows[(k, n)].held for k in others),
                                round(self.shares.get(j, 0.0), 2), max(busy_jobs, 1))
        return out

    def _held(self, job: str, node: str, jobs: list[str], capacity: int) -> int:
        """GPUs ``job`` holds on ``node`` for the rule (what it keeps unless the share says otherwise): its
        workers, plus its claims under way up to the cap it was last sent there (a standing grant: without
        it a job whose workers are still starting would see its grant moved at every report), plus other
        claims as far as the node has GPUs no job's worker holds. Overlaps (a worker going back while
        another job's grant stands) are fitted to the node by ``node_caps``."""
        r = self.rows[(job, node)]
        sent = self.sent.get((job, node))
        granted = min(r.claiming, max(0, sent.cap - r.held)) if sent is not None else 0
        room = capacity - sum(self.rows[(k, node)].held + (0 if k != job else granted) for k in jobs)
        return r.held + granted + min(r.claiming - granted, max(room, 0))

    def changed(self) -> list[tuple[tuple[str, str], Share]]:
        """The shares that differ from what was last sent (and marks them sent)."""
        out = []
        for key, share in self.decide().items():
            if self.sent.get(key) != share:
                self.sent[key] = share
                out.append((key, share))
        return out

    def status(self) -> list[JobShare]:
        out = []
        for j, info in sorted(self.jobs.items(), key=lambda kv: kv[1].age):
            rows = [r for (jj, _), r in self.rows.items() if jj == j]
            out.append(JobShare(j, info.ray_job, info.label, info.weight, round(self.shares.get(j, 0.0), 2),
                                sum(r.held for r in rows), sum(r.running for r in rows), sum(r.queued for r in rows),
                                sum(r.claiming for r in rows)))
        return out
