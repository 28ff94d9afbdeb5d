"""Dynamic trace replay: pods arrive, queue, run and leave under a simulated clock. No Ray here.

Every system is fastgpu's own scheduling core configured differently: the queue discipline of the live
node schedulers (``placement.queue``: priority heap, best match, a round that skips what does not fit),
the placement ``Scheduler`` with a registered policy on one ``ClusterState`` kept up to date by binding
and unbinding (never rebuilt, no explain records), and learned durations (``placement.durations``)::

    fifo-best-fit   arrival order, no priorities; a round stops at the first pod that does not fit
    k8s-best-fit    priority order; a pod that does not fit now is skipped and retried next round
    k8s-fgd         the same queue with the FGD policy (kube-scheduler with the FGD plugin)
    k8s-fastgpu     the same queue with the fastgpu policy (an ablation: packing without queue order)
    fastgpu-per-pod fastgpu, but each queued pod of a shape that did not fit costs a miss, as in the
                    k8s-like queue (an ablation: the queue's order and holds without its shape index)
    fastgpu         priority order, best match among the top priority (shortest learned run first,
                    aged; a multi-GPU pod keeps its place), skipping what does not fit (backfill): a
                    shape that does not fit is set aside whole, and a multi-GPU pod that does not fit
                    holds the node nearest to holding it; the fastgpu policy

Rounds run every ``round_s`` simulated seconds in which something arrived or left. No scheduler reads a
pod's own run time: durations are learned per pod template (qos, CPU, memory, GPUs, GPU share and
model; what a scheduler sees of a pod) from pods that finished, as the live runtime learns per function.

Speed (the replay is driven at simulator speed): state changes are incremental; a pod that did not fit
in the last round is tried again only if a node freed since could hold it, judged from upper bounds
over the freed nodes and those whose hold ended (exact: placing only fills nodes, so nothing else can
have made room). The cost is one placement per started pod (vectorised over the nodes: linear in nodes)
plus per round at most the queue discipline's miss limit of O(1) checks (with the shape index: one per
shape that does not fit, O(log shapes) each), so it grows linearly with pods and with nodes.
"""
from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .. import registry
from ..durations import DurationModel
from ..model import Demand
from ..queue import UNPLACED_SCAN_LIMIT, Holds, Scan, ShapeQueue, best_first
from ..scheduler import Scheduler
from ..state import ClusterState
from .trace import Nodes
from .workload import QOS_PRIORITY, Workload, gpu_class, gpus_of

ROUND_S = 1.0


@dataclass(frozen=True)
class System:
    name: str
    policy: str
    priorities: bool  # serve by qos priority (else arrival order)
    best_match: bool  # best match among the top priority (learned durations)
    limit: float  # misses per round before it ends (1: strict FIFO)
    shapes_aside: bool = False  # a shape that did not fit is set aside whole (else each pod of it is a miss)
    holds: bool = False  # multi-GPU pods keep their place in best match and hold a node when they do not fit


SYSTEMS = {s.name: s for s in (
    System("fifo-best-fit", "best-fit", False, False, 1),
    System("k8s-best-fit", "best-fit", True, False, UNPLACED_SCAN_LIMIT),
    System("k8s-fgd", "fgd", True, False, UNPLACED_SCAN_LIMIT),
    System("k8s-fastgpu", "fastgpu", True, False, UNPLACED_SCAN_LIMIT),
    System("fastgpu-per-pod", "fastgpu", True, True, UNPLACED_SCAN_LIMIT, holds=True),
    System("fastgpu", "fastgpu", True, True, UNPLACED_SCAN_LIMIT, shapes_aside=True, holds=True),
)}


def system(name: str) -> System:
    if name not in SYSTEMS:
        raise ValueError(f"unknown system {name!r}; the dynamic replay has: {', '.join(SYSTEMS)}")
    return SYSTEMS[name]


@dataclass
class DynamicResult:
    system: str
    seed: int
    load: float
    warmup_s: float
    horizon_s: float
    capacity: int  # milli-GPU
    arrive: np.ndarray  # per replayed pod
    start: np.ndarray  # nan: never started within the horizon (or never could fit)
    end: np.ndarray
    gpus: np.ndarray  # GPUs each pod asked for (a share counts its fraction)
    klass: list[str]
    qos: list[str]
    dropped: np.ndarray  # per replayed pod: no node could ever hold it (dropped at arrival, never queued)
    series: np.ndarray  # rows of (time, allocated milli, queued pods), one per round
    seconds: float = 0.0
    rounds: int = 0
    placements: int = 0
    transform: dict = field(default_factory=dict)  # the workload's figures (``workload.Workload.figures``)


def template(d: Demand, qos: str) -> str:
    """A pod's duration key: what a scheduler sees of it (its template), never its run time."""
    return f"{qos}|{d.cpu_milli}|{d.memory_mib}|{d.num_gpus}x{d.gpu_share}|{','.join(d.gpu_types)}"


@dataclass
class _Replay:
    """What one replay's rounds read and change (``_round``): the cluster, the queue, the pods' fates."""

    state: ClusterState
    sched: Scheduler
    sys_: System
    wl: Workload
    demands: list[Demand]  # per trace pod (with its qos priority)
    shapes: list[tuple]  # per trace pod: what decides where it fits
    keys: list[str]  # per trace pod: its duration key (``template``)
    pods: list[int]  # per replayed pod: its trace pod
    enq: list[float]  # per replayed pod: when it was queued
    start: np.ndarray
    end: np.ndarray
    estimate: Callable[[int], float]  # per replayed pod: its learned run time now
    heap: ShapeQueue = field(init=False)
    holds: Holds | None = field(init=False)
    failed_round: list[int] = field(init=False)  # the round each queued pod last did not fit in
    leaving: list[tuple[float, int, int, tuple[int, ...]]] = field(default_factory=list)  # (end, pod, node, gpus)
    freed: set[int] = field(default_factory=set)  # nodes that freed (or whose hold ended) since the last round

    def __post_init__(self) -> None:
        self.heap = ShapeQueue(lambda i: self.shapes[self.pods[i]])
        self.holds = Holds() if self.sys_.holds else None
        self.failed_round = [-2] * len(self.pods)


def replay(nodes: Nodes, wl: Workload, sys_: System, seed: int, *, priorities: dict[str, int] | None = None,
           round_s: float = ROUND_S, warmup_s: float | None = None) -> DynamicResult:
    prio_of = QOS_PRIORITY if priorities is None else priorities
    tp = wl.timed
    rng = np.random.default_rng(seed)
    rank = np.empty(len(nodes.names), dtype=np.int64)
    rank[rng.permutation(len(nodes.names))] = np.arange(len(nodes.names))
    state = ClusterState(nodes.names, nodes.cpu, nodes.mem, nodes.gpus, nodes.models, rank=rank)
    pol = registry.create(sys_.policy, rng=rng)
    pol.prepare(state, tp.demands)  # the trace's pods are the typical workload (as the static replay)
    model = DurationModel()

    n = len(wl.pods)
    demands: list[Demand] = []
    keys: list[str] = []
    for j, d in enumerate(tp.demands):  # (one Demand per trace pod, with its qos priority)
        p = prio_of.get(tp.qos[j], 0) if sys_.priorities else 0
        demands.append(Demand(d.id, d.cpu_milli, d.memory_mib, d.num_gpus, d.gpu_milli, gpu_types=d.gpu_types,
                              priority=p))
        keys.append(template(d, tp.qos[j]))
    pods = wl.pods.tolist()  # (plain lists: the round's loop indexes them ~250 times per round)
    memo: dict[str, float] = {}  # estimates of this round (the model changes only as pods leave)

    def estimate(i: int) -> float:
        k = keys[pods[i]]
        v = memo.get(k)
        if v is None:
            v = memo[k] = model.estimate(k).seconds
        return v

    r = _Replay(state, Scheduler(state, pol), sys_, wl, demands,
                [(d.shape, d.memory_mib, d.gpu_types) for d in demands],  # (host memory is checked, not in shape)
                keys, pods, wl.arrive.tolist(), np.full(n, math.nan), np.full(n, math.nan), estimate)
    heap, holds, leaving, freed = r.heap, r.holds, r.leaving, r.freed
    ever: dict[tuple, bool] = {}
    dropped = np.zeros(n, dtype=bool)  # no node could ever hold it: dropped at arrival
    series = []
    ai = rounds = placements = 0
    t = 0.0
    t0 = time.perf_counter()
    while True:
        nxt = min(wl.arrive[ai] if ai < n else math.inf, leaving[0][0] if leaving else math.inf)
        if nxt >= wl.horizon_s:
            break
        t = max(nxt, t + round_s) if rounds else nxt
        if t >= wl.horizon_s:
            break
        freed.clear()
        if holds is not None:  # (a node whose hold ended may take what waited behind the hold)
            freed.update(holds.opened)
            holds.opened.clear()
        memo.clear()
        while leaving and leaving[0][0] <= t:
            e, i, node, gpus = heapq.heappop(leaving)
            state.unbind(node, gpus, demands[pods[i]])
            freed.add(node)
            model.observe(keys[pods[i]], wl.run_s[i])
        while ai < n and wl.arrive[ai] <= t:
            d = demands[pods[ai]]
            k = r.shapes[pods[ai]]
            if k not in ever:
                ever[k] = state.could_ever_fit(d)
            if ever[k]:
                heap.push((-d.priority, ai, ai))
            else:
                dropped[ai] = True
            ai += 1
        rounds += 1
        if heap:
            placements += _round(r, t, rounds)
        series.append((t, state.allocated_milli(), len(heap)))
    secs = time.perf_counter() - t0
    gpus = np.array([gpus_of(demands[j]) for j in wl.pods])
    return DynamicResult(sys_.name, seed, wl.load, wl.cap_s if warmup_s is None else warmup_s, wl.horizon_s,
                         state.capacity_milli(), wl.arrive, r.start, r.end, gpus,
                         [gpu_class(tp.demands[j]) for j in wl.pods], [tp.qos[j] for j in wl.pods], dropped,
                         np.array(series, dtype=float).reshape(-1, 3), secs, rounds, placements,
                         wl.figures())


def _round(r: _Replay, t: float, rnd: int) -> int:
    """Round ``rnd`` of the queue discipline at time ``t``; returns the pods started."""
    state, sched, heap, holds, demands, pods = r.state, r.sched, r.heap, r.holds, r.demands, r.pods
    failed_round, start, end, run_s = r.failed_round, r.start, r.end, r.wl.run_s
    if r.freed:  # upper bounds of what the nodes freed since the last round can hold
        rows = np.fromiter(r.freed, dtype=np.int64)
        cpu, mem = state.cpu_left[rows].max(), state.mem_left[rows].max()
        share, whole = state.max_free[rows].max(), state.nfull[rows].max()
    else:
        cpu = mem = share = whole = -1
    pinned = (lambda i: demands[pods[i]].num_gpus > 1) if r.sys_.holds else None
    front = (best_first(heap, t, r.estimate, lambda i: r.keys[pods[i]], r.enq.__getitem__, pinned=pinned)
             if r.sys_.best_match else None)
    scan = Scan(heap, front, r.sys_.limit, r.sys_.shapes_aside)
    started = 0
    try:
        for entry in scan:
            i = entry[2]
            d = demands[pods[i]]
            if holds is not None:
                holds.trying(state, i)
            # (did not fit last round, and no node freed since can hold it: not placed again)
            skip = failed_round[i] == rnd - 1 and not _may_fit(d, cpu, mem, share, whole)
            dec = None if skip else sched.place(d, reasons=False)
            if dec is None or dec.node < 0:
                failed_round[i] = rnd
                scan.did_not_fit(entry)
                if holds is not None:
                    holds.did_not_fit(state, i, d)
                continue
            if holds is not None:
                opened = holds.started(i)
                if opened is not None:  # (its hold ended: room there counts for the pods after it)
                    cpu, mem = max(cpu, state.cpu_left[opened]), max(mem, state.mem_left[opened])
                    share, whole = max(share, state.max_free[opened]), max(whole, state.nfull[opened])
            start[i] = t
            end[i] = t + run_s[i]
            heapq.heappush(r.leaving, (end[i], i, dec.node, dec.gpus))
            started += 1
    finally:
        scan.close()
    return started


def _may_fit(d: Demand, cpu, mem, share, whole) -> bool:
    if d.cpu_milli > cpu or d.memory_mib > mem:
        return False
    if not d.num_gpus:
        return True
    return share >= d.gpu_share if d.num_gpus == 1 else whole >= d.num_gpus
