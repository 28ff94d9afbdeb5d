"""Fair share of GPUs between jobs (drivers) on one cluster: who may hold how many GPUs on which node. No Ray.

The arbiter actor (``fastgpu_ray.actors.arbiter``) keeps one ``JobNode`` row per (job, GPU node) from the node
schedulers' reports and calls ``node_caps`` whenever a row changes; each node scheduler then holds at most
its cap of GPU workers on its node (it claims up to the cap and gives back idle workers above it; running
work is never preempted).

The rule, in two steps (docs/design-runtime.md, "Many jobs"):

1. **Shares** (``fair_shares``): weighted max-min fairness (water-filling) over the cluster's GPUs. A job's
   demand is what it could use now (GPUs running its work + its queued work, per node, capped at the node's
   GPUs); a job demanding less than its weighted share gets its demand and the rest goes to the others in
   proportion to their weights (work-conserving). Shares are rounded to whole GPUs by largest remainder,
   ties to the job holding more now (fewer hand-overs), then to the older job.
2. **Caps per node** (``node_caps``): a job keeps the GPUs it holds where it has work, down to its share
   (hand-overs cost a worker process start, so they are made only to bring a job to its share); GPUs
   freed that way and free GPUs go to the job furthest below its share that has work queued on that node,
   then to any job with work there (work-conserving). A job gives GPUs up first where its queue per GPU is
   shortest and gets them first where its queue is longest, so its backlog drains evenly over the nodes.
   Where no job wants a GPU, its holder keeps it (its warm worker goes back after the session's idle
   timeout, or as soon as another job wants the GPU); a GPU nobody holds or wants goes to the job with
   work queued on that node (one claim starts all its workers at once).

Subtask priorities do not enter here: they order work inside a job only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class JobNode:
    """One job's state on one GPU node, as that job's node scheduler reports it."""

    job: str
    node: str
    held: int  # GPU workers this job holds there (or was granted there and is claiming)
    want: int  # GPUs it could use there now: GPUs running its work + its queued work there (whole GPUs)
    queued: int = 0  # its subtasks queued there (where its backlog is longest, it keeps or gets GPUs first)


def fair_shares(weights: dict[str, float], demand: dict[str, float], capacity: float) -> dict[str, float]:
    """Weighted max-min fair split of ``capacity`` between jobs, no job above its ``demand``."""
    share = {j: 0.0 for j in weights}
    active = {j for j in weights if demand.get(j, 0) > 0}
    left = float(capacity)
    while active and left > 1e-9:
        total_w = sum(weights[j] for j in active)
        sated = {j for j in active if demand[j] - share[j] <= left * weights[j] / total_w + 1e-9}
        if not sated:
            for j in active:
                share[j] += left * weights[j] / total_w
            break
        for j in sated:
            left -= demand[j] - share[j]
            share[j] = float(demand[j])
        active -= sated
    return share


def whole_gpus(shares: dict[str, float], capacity: int, held: dict[str, int], age: dict[str, int]) -> dict[str, int]:
    """Round ``shares`` to whole GPUs summing to at most ``capacity`` (largest remainder; ties to the job
    holding more now, then the older job: ``age`` smaller = older)."""
    out = {j: int(math.floor(s + 1e-9)) for j, s in shares.items()}
    spare = min(capacity, int(round(sum(shares.values())))) - sum(out.values())
    order = sorted(shares, key=lambda j: (-(shares[j] - out[j]), -held.get(j, 0), age.get(j, 0), j))
    for j in order[:max(0, spare)]:
        out[j] += 1
    return out


def job_demands(rows: list[JobNode], capacity: dict[str, int]) -> dict[str, float]:
    """Each job's demand: the GPUs it could use now, summed over nodes (each at most the node's GPUs)."""
    out: dict[str, float] = {}
    for r in rows:
        out[r.job] = out.get(r.job, 0.0) + min(r.want, capacity.get(r.node, 0))
    return out


def node_caps(rows: list[JobNode], capacity: dict[str, int], weights: dict[str, float],
              age: dict[str, int] | None = None, shares: dict[str, float] | None = None) -> dict[tuple[str, str], int]:
    """The cap of GPU workers each (job, node) may hold; every row gets one. ``capacity``: GPUs per node
    fastgpu may use; ``weights``: per job (every job of ``rows``); ``age``: arrival order (ties);
    ``shares``: the jobs' ``fair_shares`` of these rows when the caller has them already."""
    age = age or {}
    want = {(r.job, r.node): min(r.want, capacity.get(r.node, 0)) for r in rows}
    held = {(r.job, r.node): r.held for r in rows}
    backlog = {(r.job, r.node): r.queued for r in rows}
    jobs = sorted({r.job for r in rows}, key=lambda j: (age.get(j, 0), j))
    held_by_job = {j: sum(h for (jj, _), h in held.items() if jj == j) for j in jobs}
    if shares is None:
        shares = fair_shares({j: weights.get(j, 1.0) for j in jobs}, job_demands(rows, capacity),
                             sum(capacity.values()))
    target = whole_gpus(shares, sum(capacity.values()), held_by_job, age)

    cap = {k: min(held[k], want[k]) for k in want}  # keep warm workers (or standing grants) that have work
    total = {j: sum(c for (jj, _), c in cap.items() if jj == j) for j in jobs}
    used = {n: 0 for n in capacity}
    for (_, n), c in cap.items():
        used[n] = used.get(n, 0) + c
    for n in capacity:  # holds may overlap (a worker going back, another job's grant): fit the node
        while used[n] > capacity[n]:
            k = max((k for k in cap if k[1] == n and cap[k] > 0), key=lambda k: (total[k[0]] - target[k[0]], k[0]))
            cap[k] -= 1
            total[k[0]] -= 1
            used[n] -= 1

    def hungry(node: str, but: str) -> bool:  # another job below its share wants more on this node
        return any(j != but and total[j] < target[j] and want[(j, node)] > cap[(j, node)]
                   for (j, n) in cap if n == node)

    # Bring jobs above their share down, first where a job below its share waits for the GPU.
    for j in jobs:
        while total[j] > target[j]:
            k = max((k for k in cap if k[0] == j and cap[k] > 0),
                    key=lambda k: (hungry(k[1], j), -backlog[k] / cap[k], cap[k], k[1]))
            cap[k] -= 1
            total[j] -= 1
            used[k[1]] -= 1
    # Jobs below their share, furthest first: a free GPU where they want one (a node where they already
    # have a worker first: no process start), else one freed by moving another job's GPU to a node where
    # that job also has work (an augmenting path: the other job keeps its count).
    by_node: dict[str, list[str]] = {}
    for (j, n) in cap:
        by_node.setdefault(n, []).append(j)
    for _ in range(sum(capacity.values())):
        short = [j for j in jobs if total[j] < target[j]]
        if not short:
            break
        j = min(short, key=lambda j: (-(target[j] - total[j]) / weights.get(j, 1.0), age.get(j, 0), j))
        path = _augment(j, cap, want, held, used, capacity, by_node, backlog)
        if path is None:
            target[j] = total[j]  # nothing more it can get where its work is
            continue
        for (jj, n), step in path:
            cap[(jj, n)] += step
        total[j] += 1
    # Work-conserving: GPUs still free go to any job with work there (least served by weight first).
    for (j, n) in sorted(cap, key=lambda k: (total[k[0]] / weights.get(k[0], 1.0), age.get(k[0], 0), k)):
        extra = min(want[(j, n)] - cap[(j, n)], capacity.get(n, 0) - used[n])
        if extra > 0:
            cap[(j, n)] += extra
            used[n] += extra
            total[j] += extra
    # GPUs nobody wants stay with their holder (its idle timeout gives them back).
    for k in sorted(cap, key=lambda k: (age.get(k[0], 0), k)):
        extra = min(held[k] - cap[k], capacity.get(k[1], 0) - used[k[1]])
        if extra > 0:
            cap[k] += extra
            used[k[1]] += extra
    # GPUs still free that nobody wants: to the job with work on that node (the longest queue there), so
    # one claim starts workers for all of them at once rather than one process start per new subtask;
    # they go back at once when another job wants them (they are idle then).
    for n in capacity:
        if capacity[n] - used[n] <= 0:
            continue
        busy = [k for k in cap if k[1] == n and want[k] > 0]
        if busy:
            k = max(busy, key=lambda k: (backlog[k], -age.get(k[0], 0), k[0]))
            cap[k] += capacity[n] - used[n]
            used[n] = capacity[n]
    return cap


def _augment(job, cap, want, held, used, capacity, by_node, backlog):
    """One more GPU for ``job``: the shortest chain job -> node with a free GPU, where each node on the way
    that is full passes one GPU of another job to a further node where that job wants one. Returns the
    cap changes [((job, node), +1 | -1)], or None. Breadth-first over (job, node) edges; nodes where the
    job already holds a worker are tried first."""
    from collections import deque

    start = sorted((n for (j, n) in cap if j == job and want[(j, n)] > cap[(j, n)]),
                   key=lambda n: (-(held[(job, n)] > cap[(job, n)]), -backlog[(job, n)], n))
    prev: dict[str, tuple] = {}
    queue = deque()
    for n in start:
        if n not in prev:
            prev[n] = (None, job)
            queue.append(n)
    while queue:
        n = queue.popleft()
        if used[n] < capacity.get(n, 0):
            path, node = [], n
            while node is not None:
                from_node, j = prev[node]
                path.append(((j, node), +1))
                if from_node is not None:
                    path.append(((j, from_node), -1))
                node = from_node
            used[n] += 1
            return path
        for k in by_node.get(n, ()):  # a job holding a GPU here that could use one elsewhere instead
            if k == job or cap[(k, n)] <= 0:
                continue
            for m in sorted(m for (kk, m) in cap if kk == k and m not in prev and want[(k, m)] > cap[(k, m)]):
                prev[m] = (n, k)
                queue.append(m)
    return None
