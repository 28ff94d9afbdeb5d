"""The policy interface: score feasible nodes, then pick GPU indices on the winner.

A policy is a small class with two phases (the scheduler owns filter and reserve):

* ``score(state, demand, nodes)`` -> one number per candidate node; higher wins; ties go to the node
  with the lowest ``state.rank``. Scores may be ints (the published policies truncate) or floats.
* ``select_gpus(state, node, demand)`` -> the GPU indices to bind on the chosen node.

``terms`` returns the named parts of the score for explanations; by default just the score.
``prepare`` receives the workload the policy may learn from (FGD's target distribution) once per run.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .cost import CostModel

from .model import GPU_MILLI, Demand
from .state import ClusterState


class Policy:
    name: str = ""
    description: str = ""

    def __init__(self, rng: np.random.Generator | None = None, cost: CostModel | None = None) -> None:
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.cost = cost or CostModel()  # the one objective's prices (link bandwidth) for this policy

    def prepare(self, state: ClusterState, workload: Sequence[Demand] = ()) -> None:
        """Called once before a run with the demands the policy may treat as typical."""

    def score(self, state: ClusterState, d: Demand, nodes: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def terms(self, state: ClusterState, d: Demand, nodes: np.ndarray,
              scores: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Named score terms per node, for explanations. ``scores``: this policy's scores of ``nodes``
        already computed for the decision (a policy that draws at random must not draw again)."""
        return {"score": np.asarray(self.score(state, d, nodes) if scores is None else scores, dtype=float)}

    def select_gpus(self, state: ClusterState, node: int, d: Demand) -> tuple[int, ...]:
        return select_best(state, node, d)


def select_best(state: ClusterState, node: int, d: Demand) -> tuple[int, ...]:
    """Whole GPUs: the first fully free indices. A share: the fitting GPU with least free (lowest index)."""
    if not d.num_gpus:
        return ()
    fit = state.gpu_fit(d, node)
    if d.gpu_share >= GPU_MILLI or d.num_gpus > 1:
        return tuple(int(g) for g in np.flatnonzero(fit)[: d.num_gpus])
    cand = np.flatnonzero(fit)
    key = state.free[node, cand] * (1 << 42) + np.minimum(state.gmem_free[node, cand], (1 << 42) - 1)
    return (int(cand[np.argmin(key)]),)


def select_random(state: ClusterState, node: int, d: Demand, rng: np.random.Generator) -> tuple[int, ...]:
    """Whole GPUs: as ``select_best``. A share: uniformly among the GPUs it fits on."""
    if not d.num_gpus or d.gpu_share >= GPU_MILLI or d.num_gpus > 1:
        return select_best(state, node, d)
    cand = np.flatnonzero(state.gpu_fit(d, node))
    return (int(cand[rng.integers(len(cand))]),)
