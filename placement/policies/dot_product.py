"""``dot-product``: Tetris-style alignment of (CPU, GPU) free and request vectors (FGD paper's 02)."""
from __future__ import annotations

import numpy as np

from ..policy import Policy
from ..registry import register
from .common import MAX_CPU, MAX_GPU


@register
class DotProductPolicy(Policy):
    name = "dot-product"
    description = "prefer nodes whose free (CPU, GPU) has the smallest dot product with the request"

    def score(self, state, d, nodes):
        dot = (state.cpu_left[nodes] / MAX_CPU) * (d.cpu_milli / MAX_CPU) + (state.F[nodes] / MAX_GPU) * (
            d.total_gpu_milli / MAX_GPU)
        return (100 * (1 - dot / 2)).astype(np.int64)
