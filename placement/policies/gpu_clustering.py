"""``gpu-clustering``: keep demands of one kind together on a node (FGD paper's 03)."""
from __future__ import annotations

import numpy as np

from ..policy import Policy
from ..registry import register
from ..state import tag_of
from .common import MAX_GPU


@register
class GpuClusteringPolicy(Policy):
    name = "gpu-clustering"
    description = "prefer nodes that already run only demands of the same kind"

    def score(self, state, d, nodes):
        if not d.num_gpus:
            return np.zeros(len(nodes), dtype=np.int64)
        tags = state.tags[nodes]
        t = tag_of(d)
        mine = tags[:, t] > 0
        others = (tags.sum(axis=1) - tags[:, t]) > 0
        base = (25 * (MAX_GPU - state.F[nodes])) // MAX_GPU
        bonus = np.where(mine & ~others, 75, np.where(mine, 50, np.where(~others, 25, 0)))
        return base + bonus
