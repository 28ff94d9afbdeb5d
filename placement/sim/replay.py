"""Replay a trace by the FGD paper's protocol (``placement/traces/openb`` README, PROTOCOL summary):

seeded shuffle of the name-sorted pods; tune to ``tune`` x GPU capacity by appending i.i.d. resamples
(stop at the first one that would pass the target by its per-GPU share) or by removing random pods;
a per-run random node rank breaks score ties; one pass, failed pods are dropped, nothing departs.
After every arrival the allocated milli-GPU is logged against the arrived milli-GPU.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .. import registry
from ..model import GPU_MILLI, Demand
from ..scheduler import Scheduler
from ..state import ClusterState
from .trace import Nodes, Pods

KINDS = ("share", "1", "2", "4", "8")  # GPU task kinds for failure counts


def kind_of(d: Demand) -> str | None:
    if not d.num_gpus:
        return None
    if d.gpu_share < GPU_MILLI:
        return "share"
    return str(d.num_gpus)


def arrival_order(pods: Pods, capacity: int, tune: float, rng: np.random.Generator) -> list[Demand]:
    """Shuffled trace, then resamples appended (tune up) or random pods removed (tune down)."""
    pool = pods.demands
    order = [pool[i] for i in rng.permutation(len(pool))]
    total = sum(d.total_gpu_milli for d in order)
    target = tune * capacity
    if total < target:
        while True:
            d = pool[int(rng.integers(len(pool)))]
            if total + d.gpu_share > target:  # the published quirk: one GPU's share, not all of them
                break
            order.append(d)
            total += d.total_gpu_milli
    else:
        while total > target:
            d = order.pop(int(rng.integers(len(order))))
            total -= d.total_gpu_milli
    return order


@dataclass
class RunResult:
    policy: str
    seed: int
    arrived: np.ndarray  # milli-GPU arrived after each event
    allocated: np.ndarray  # milli-GPU allocated after each event
    capacity: int
    failed_early: dict[str, int] = field(default_factory=dict)  # kind -> failures before 90 % arrived
    failed: int = 0
    seconds: float = 0.0

    def buckets(self, top: int = 130) -> np.ndarray:
        """Allocation % per arrived-% bucket 0..top, event-weighted, as the paper's analysis script."""
        ngpu = self.capacity / GPU_MILLI
        ar = np.round(self.arrived / ngpu / 10.0)
        al = np.round(self.allocated / ngpu / 10.0, 2)
        out = np.full(top + 1, np.nan)
        idx = ar.astype(np.int64)
        ok = (idx >= 0) & (idx <= top)
        sums = np.bincount(idx[ok], al[ok], minlength=top + 1)[: top + 1]
        cnts = np.bincount(idx[ok], minlength=top + 1)[: top + 1]
        with np.errstate(invalid="ignore"):
            out = np.where(cnts > 0, sums / np.maximum(cnts, 1), np.nan)
        for k in np.flatnonzero(cnts == 0):  # empty bucket: mean over k-1..k+1
            near = (idx >= k - 1) & (idx <= k + 1)
            if near.any():
                out[k] = al[near].mean()
        return np.round(out, 2)


def replay(nodes: Nodes, pods: Pods, policy: str, seed: int, tune: float = 1.3) -> RunResult:
    rng = np.random.default_rng(seed)
    capacity = nodes.capacity_milli
    order = arrival_order(pods, capacity, tune, rng)
    rank = np.empty(len(nodes.names), dtype=np.int64)
    rank[rng.permutation(len(nodes.names))] = np.arange(len(nodes.names))
    state = ClusterState(nodes.names, nodes.cpu, nodes.mem, nodes.gpus, nodes.models, rank=rank)
    pol = registry.create(policy, rng=rng)
    pol.prepare(state, pods.demands)  # the original trace (name-sorted) is the typical workload
    sched = Scheduler(state, pol)
    arrived_a = np.empty(len(order), dtype=np.int64)
    alloc_a = np.empty(len(order), dtype=np.int64)
    early = dict.fromkeys(KINDS, 0)
    arrived = alloc = failed = 0
    limit90 = 0.9 * capacity
    t0 = time.perf_counter()
    for i, d in enumerate(order):
        arrived += d.total_gpu_milli
        dec = sched.place(d, reasons=False)
        if dec.node >= 0:
            alloc += d.total_gpu_milli
        else:
            failed += 1
            k = kind_of(d)
            if k is not None and arrived < limit90:
                early[k] = early.get(k, 0) + 1
        arrived_a[i] = arrived
        alloc_a[i] = alloc
    secs = time.perf_counter() - t0
    assert alloc == state.allocated_milli(), "bookkeeping drifted"
    return RunResult(policy, seed, arrived_a, alloc_a, capacity, early, failed, secs)
