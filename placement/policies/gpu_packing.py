"""``gpu-packing``: partly used GPUs first, then partly used nodes, then idle nodes (FGD paper's 04)."""
from __future__ import annotations

import numpy as np

from ..model import GPU_MILLI
from ..policy import Policy
from ..registry import register


@register
class GpuPackingPolicy(Policy):
    name = "gpu-packing"
    description = "fill partly used GPUs, then partly used nodes, before idle nodes"

    def score(self, state, d, nodes):
        if not d.num_gpus:
            return np.zeros(len(nodes), dtype=np.int64)
        free = np.sort(state.free[nodes], axis=1)  # ascending; padding (-1) first, never fits
        G = state.gpu_count[nodes]
        fits = free >= d.gpu_share
        picked = fits & (np.cumsum(fits, axis=1) <= d.num_gpus)
        k = (picked & (free == GPU_MILLI)).sum(axis=1)
        partial = np.maximum(100 - (np.where(picked, free * 100 // GPU_MILLI, 0).sum(axis=1)) // 10, 50)
        score = np.where(k > 0, np.maximum(50 - k, 33), partial)
        idle = state.nfull[nodes] == G
        return np.where(idle, np.maximum(33 - G, G), score)
