"""``best-fit``: least (CPU, total GPU) left over after placing, at 1-point resolution (FGD paper's 05)."""
from __future__ import annotations

import numpy as np

from ..policy import Policy
from ..registry import register
from .common import MAX_CPU, MAX_GPU


@register
class BestFitPolicy(Policy):
    name = "best-fit"
    description = "least CPU and GPU left over on the node after placing"

    def score(self, state, d, nodes):
        s = ((state.cpu_left[nodes] - d.cpu_milli) / MAX_CPU) * 0.5 + (
            (state.F[nodes] - d.total_gpu_milli) / MAX_GPU) * 0.5
        # The published normaliser is strictly increasing, so the argmax is the raw score's.
        return ((1 - s) * 100).astype(np.int64)
