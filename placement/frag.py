"""FGD's fragmentation measure (Weng et al., ATC '23), vectorised over nodes.

A node's fragmentation is the GPU capacity that typical demands cannot use there, weighted by how
common each typical demand is: ``Frag(node) = sum_j freq_j * A_j`` where ``A_j`` is the node's whole
free GPU milli unless demand j fits (GPU, CPU and model), in which case only the free milli on GPUs
too small for it. Target demands that use no GPU count the whole free milli (the paper's quirk, kept
because the published numbers depend on it).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .model import Demand

COVERAGE = 0.95  # typical demands: the most popular keys up to this share of all demands


@dataclass(frozen=True)
class TargetWorkload:
    cpu: np.ndarray  # [T] milli-CPU
    gm: np.ndarray  # [T] per-GPU milli (0 for CPU-only)
    ng: np.ndarray  # [T]
    freq: np.ndarray  # [T], sums to 1
    types: tuple[tuple[str, ...], ...]  # [T] allowed GPU models, () = any

    def __len__(self) -> int:
        return len(self.freq)

    def type_ok(self, model_names: Sequence[str]) -> np.ndarray:
        """[n_models, T]: may target j use a GPU of model m?"""
        return np.array([[not t or m in t for t in self.types] for m in model_names], dtype=bool).reshape(
            len(model_names), len(self.types))


def typical_workload(demands: Sequence[Demand], coverage: float = COVERAGE) -> TargetWorkload:
    """The popular demand keys (cpu, share, #GPUs, type) covering ``coverage`` of ``demands``."""
    counts = Counter((d.cpu_milli, d.gpu_share, d.num_gpus, "|".join(d.gpu_types)) for d in demands)
    total = sum(counts.values())
    if not total:
        return TargetWorkload(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64),
                              np.zeros(0), ())
    # Most frequent first; ties by the key descending, as the published simulator sorts them.
    keys = sorted(counts, key=lambda k: (counts[k], k), reverse=True)
    kept, cum = [], 0
    for k in keys:
        kept.append(k)
        cum += counts[k]
        if cum >= coverage * total:
            break
    denom = total if len(kept) == len(keys) else cum
    return TargetWorkload(
        cpu=np.array([k[0] for k in kept], dtype=np.int64),
        gm=np.array([k[1] for k in kept], dtype=np.int64),
        ng=np.array([k[2] for k in kept], dtype=np.int64),
        freq=np.array([counts[k] / total / (denom / total) for k in kept], dtype=np.float64),
        types=tuple(tuple(p for p in k[3].split("|") if p) for k in kept),
    )


def fragmentation(tw: TargetWorkload, type_ok: np.ndarray, cpu_left: np.ndarray, free: np.ndarray,
                  model: np.ndarray) -> np.ndarray:
    """Frag of each node. ``cpu_left`` [...], ``free`` [..., G] (padding < 0), ``model`` [...]."""
    fpos = np.maximum(free, 0)
    F = fpos.sum(axis=-1)
    gm = tw.gm
    fits = free[..., None, :] >= gm[:, None]  # [..., T, G]
    small = np.where(fits, 0, fpos[..., None, :]).sum(axis=-1)  # free milli too small for target j
    ok = (fits.sum(axis=-1) >= tw.ng) & (cpu_left[..., None] >= tw.cpu) & (gm > 0) & type_ok[model]
    amount = np.where(ok, small, F[..., None])
    return amount @ tw.freq
