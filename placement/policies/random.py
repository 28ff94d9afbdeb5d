"""``random``: a uniformly random feasible node; a share goes to a random GPU it fits on (FGD paper's 01)."""
from __future__ import annotations

import numpy as np

from ..policy import Policy, select_random
from ..registry import register


@register
class RandomPolicy(Policy):
    name = "random"
    description = "uniformly random feasible node and GPU"

    def score(self, state, d, nodes):
        # Drawn once per call: the scheduler calls score once per demand with >= 2 candidates.
        s = np.zeros(len(nodes), dtype=np.int64)
        s[self.rng.integers(len(nodes))] = 100
        return s

    def select_gpus(self, state, node, d):
        return select_random(state, node, d, self.rng)
