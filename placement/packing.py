"""The packing part of the ``fastgpu`` policy: what it adds to FGD's fragmentation measure.

Two workload-derived pieces, both computed once per run from the demands the policy may learn from:

* ``packing_workload``: FGD's typical workload (the most popular shapes covering 95 % of demands) plus
  every whole multi-GPU shape, however rare. The coverage cut drops exactly the rare, large demands that
  fragmentation starves (e.g. 8 GPUs with 120 CPUs, which only one node type can hold when idle); without
  them as targets nothing stops small work from spreading over the few nodes that could host them.
* ``cpu_per_gpu_milli`` and ``stranding``: the CPU a free GPU milli typically needs, and the free GPU milli
  a node cannot use for lack of CPU at that ratio. ``fastgpu`` breaks FGD's (coarse, integer) score ties
  first by the least growth of stranding (CPU-heavy work goes where CPU is spare instead of leaving GPUs
  without CPU), then by the least ``model_pressure`` (work that may use any GPU model leaves the models
  that model-restricted demands need), then by the least ``capability_loss`` (spare CPU is not taken
  from a node that is still able to host a multi-GPU shape).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .frag import TargetWorkload, typical_workload
from .model import GPU_MILLI, Demand


def _key(d: Demand) -> tuple:
    return (d.cpu_milli, d.gpu_share, d.num_gpus, "|".join(d.gpu_types))


def packing_workload(demands: Sequence[Demand]) -> TargetWorkload:
    """FGD's typical workload plus every whole multi-GPU shape of ``demands`` (frequencies sum to 1).

    Each added shape weighs its own share of all demands; the typical shapes keep their relative weights
    and share the rest.
    """
    tw = typical_workload(demands)
    if not len(tw):
        return tw
    kept = set(zip(tw.cpu.tolist(), tw.gm.tolist(), tw.ng.tolist(), ("|".join(t) for t in tw.types)))
    counts = Counter(_key(d) for d in demands)
    total = sum(counts.values())
    extra = sorted((k for k in counts if k[2] > 1 and k[1] >= GPU_MILLI and k not in kept),
                   key=lambda k: (counts[k], k), reverse=True)
    if not extra:
        return tw
    w_extra = np.array([counts[k] / total for k in extra])
    freq = np.r_[tw.freq * (1.0 - w_extra.sum()), w_extra]
    return TargetWorkload(
        cpu=np.r_[tw.cpu, [k[0] for k in extra]].astype(np.int64),
        gm=np.r_[tw.gm, [k[1] for k in extra]].astype(np.int64),
        ng=np.r_[tw.ng, [k[2] for k in extra]].astype(np.int64),
        freq=freq / freq.sum(),
        types=tw.types + tuple(tuple(p for p in k[3].split("|") if p) for k in extra),
    )


def cpu_per_gpu_milli(demands: Sequence[Demand], cpu_cap: np.ndarray, gpu_count: np.ndarray) -> float:
    """CPU milli that GPU demands ask per milli-GPU; the cluster's own ratio if no GPU demand asks CPU."""
    gpu = [d for d in demands if d.num_gpus]
    cpu = sum(d.cpu_milli for d in gpu)
    milli = sum(d.total_gpu_milli for d in gpu)
    if cpu > 0 and milli > 0:
        return cpu / milli
    cap = float(np.sum(gpu_count)) * GPU_MILLI
    return float(np.sum(cpu_cap)) / cap if cap > 0 and np.sum(cpu_cap) > 0 else 0.0


def stranding(free_milli: np.ndarray, cpu_left: np.ndarray, c: float) -> np.ndarray:
    """Free GPU milli beyond what ``cpu_left`` can feed at ``c`` CPU milli per GPU milli (0 if c <= 0)."""
    free_milli = np.asarray(free_milli, dtype=np.float64)
    if c <= 0:
        return np.zeros_like(free_milli)
    return np.maximum(0.0, free_milli - np.asarray(cpu_left, dtype=np.float64) / c)


def stranding_growth(state, d: Demand, nodes: np.ndarray, c: float) -> np.ndarray:
    """How much placing ``d`` on each of ``nodes`` would grow its stranded GPU milli (negative: shrink)."""
    F = state.F[nodes]
    cpu = state.cpu_left[nodes]
    return stranding(F - d.total_gpu_milli, cpu - d.cpu_milli, c) - stranding(F, cpu, c)


def model_pressure(state, demands: Sequence[Demand]) -> np.ndarray:
    """Per GPU model of ``state``: GPU milli that model-restricted ``demands`` ask of it, per milli it has.

    A demand restricted to several models spreads its ask over them in proportion to their capacity.
    All zeros when no demand names a model.
    """
    cap = np.zeros(len(state.model_names))
    np.add.at(cap, state.model, state.gpu_count * float(GPU_MILLI))
    press = np.zeros(len(state.model_names))
    for d in demands:
        if d.num_gpus and d.gpu_types:
            ms = [i for i, m in enumerate(state.model_names) if m in d.gpu_types]
            total = cap[ms].sum()
            if total > 0:
                press[ms] += d.total_gpu_milli / total
    return press


@dataclass(frozen=True)
class WholeTargets:
    """The whole multi-GPU shapes of a target workload: what an idle or emptier node can uniquely host."""

    cpu: np.ndarray  # [K] milli-CPU
    ng: np.ndarray  # [K] GPUs, each whole
    weight: np.ndarray  # [K] frequency x GPUs (the GPU share of work a node loses when it can no longer host it)
    type_ok: np.ndarray  # [n_models, K]


def whole_targets(tw: TargetWorkload, type_ok: np.ndarray) -> WholeTargets:
    m = (tw.ng > 1) & (tw.gm >= GPU_MILLI)
    return WholeTargets(tw.cpu[m], tw.ng[m], tw.freq[m] * tw.ng[m], type_ok[:, m])


def capability_loss(state, d: Demand, nodes: np.ndarray, gpus: np.ndarray, wt: WholeTargets) -> np.ndarray:
    """Weight of the multi-GPU target shapes each node could host now but not after placing ``d``.

    ``gpus``: for a share, the GPU it would take on each node (taking a fully free GPU costs a whole one).
    """
    if not len(wt.ng):
        return np.zeros(len(nodes))
    nfull, cpu = state.nfull[nodes], state.cpu_left[nodes]
    if d.num_gpus == 1 and d.gpu_share < GPU_MILLI:
        used = (state.free[nodes, gpus] == GPU_MILLI).astype(np.int64)
    else:
        used = np.full(len(nodes), d.num_gpus if d.gpu_share >= GPU_MILLI else 0)
    ok = wt.type_ok[state.model[nodes]]
    before = (nfull[:, None] >= wt.ng) & (cpu[:, None] >= wt.cpu) & ok
    after = ((nfull - used)[:, None] >= wt.ng) & ((cpu - d.cpu_milli)[:, None] >= wt.cpu) & ok
    return ((before & ~after) * wt.weight).sum(axis=1)


def tie_key(growth: np.ndarray, pressure: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Higher is better. Lexicographic: least stranding growth (only growth counts), then least model
    pressure, then least capability loss; equal triples get equal keys (the node rank decides between them).

    Pressure before loss: a node of a scarce model that already lost its gang capability must not look
    like the cheapest home for work that may run anywhere.
    """
    g = np.round(np.maximum(growth, 0.0), 6)  # float noise must not decide
    trip = np.stack([g, pressure, np.round(loss, 9)], axis=1)
    order = np.lexsort((trip[:, 2], trip[:, 1], trip[:, 0]))
    steps = np.r_[0, np.cumsum(np.any(np.diff(trip[order], axis=0) != 0, axis=1))]
    key = np.empty(len(g))
    key[order] = -steps
    return key
