"""GPU choice *within* the chosen node by live load, around any policy.

The published policies pick GPU indices by packing only (``placement.policy.select_best``: the first
free whole GPU, or the fullest GPU a share fits on); in the trace simulator nothing else exists. On a
live cluster a node can have one GPU 90 % busy with outside work and one idle, and the node's score
already assumed its best GPU (``FastGpuPolicy.finish_terms``). ``LiveGpuChoice`` keeps the policy's
node scores and GPU choice, but restricts the GPU choice to the GPUs whose estimated finish
(``placement.cost``: wait + compute at live load) is within the policy's resolution of the best.
(Asked of the placement owner: make this the policies' own ``select_gpus``; then drop this wrapper.)
"""
from __future__ import annotations

import numpy as np

from placement.cost import CostModel
from placement.policy import Policy

RESOLUTION = 0.05
MIN_RESOLUTION_S = 0.01


class LiveGpuChoice(Policy):
    def __init__(self, inner: Policy, cost: CostModel | None = None) -> None:
        super().__init__(inner.rng)
        self.inner = inner
        self.name = inner.name
        self.description = inner.description
        self.cost = cost or CostModel()

    def prepare(self, state, workload=()):
        self.inner.prepare(state, workload)

    def score(self, state, d, nodes):
        return self.inner.score(state, d, nodes)

    def terms(self, state, d, nodes):
        return self.inner.terms(state, d, nodes)

    def select_gpus(self, state, node, d):
        pick = self.inner.select_gpus(state, node, d)
        if not d.num_gpus or not state.has_live:
            return pick
        fit = np.flatnonzero(state.gpu_fit(d, node))
        work = d.work_s if d.work_s > 0 else 1.0  # unknown work: compare by load alone
        finish = np.array([state.busy[node, g] + self.cost.compute_s(work, state.load[node, g]) for g in fit])
        best = finish.min()
        ok = set(int(g) for g in fit[finish <= best + max(best * RESOLUTION, MIN_RESOLUTION_S)])
        if all(g in ok for g in pick):
            return pick
        if len(ok) < d.num_gpus:  # a gang: take the best finishing GPUs
            return tuple(int(g) for g in fit[np.argsort(finish, kind="stable")[: d.num_gpus]])
        order = sorted(ok, key=lambda g: (state.free[node, g], state.gmem_free[node, g], g))
        if d.gpu_share >= 1000 or d.num_gpus > 1:
            order = sorted(ok)
        return tuple(order[: d.num_gpus])
