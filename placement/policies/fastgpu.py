"""``fastgpu``: the default policy (placeholder while the packing research runs: FGD)."""
from __future__ import annotations

from ..registry import register
from .fgd import FgdPolicy


@register
class FastGpuPolicy(FgdPolicy):
    name = "fastgpu"
    description = "fastgpu-ray's default"
