"""The single objective: estimated finish time of a demand on a GPU.

    finish = wait for the GPU + move the inputs that are not on that node + compute at the GPU's load

Placement (the ``fastgpu`` policy's ``finish_s`` term), the transfer optimiser (``transfer/``, which
supplies the bytes) and the emulated GPUs (which slow work down by the same ``slowdown``) all call these
functions; there is no second copy.
"""
from __future__ import annotations

from dataclasses import dataclass

MAX_UTIL = 0.95  # a GPU reported fully busy still makes some progress; caps the slowdown at 20x


def slowdown(util: float) -> float:
    """How much longer work takes on a GPU that is ``util`` (0..1) busy with other work.

    The model: the GPU time-slices between its tenants, so our work gets the idle fraction.
    """
    u = min(max(util, 0.0), MAX_UTIL)
    return 1.0 / (1.0 - u)


@dataclass(frozen=True)
class CostModel:
    """Link bandwidth in bytes/s; ``latency_s`` per transfer that moves anything."""

    link_bandwidth: float = 125e6  # 1 Gbit/s
    latency_s: float = 0.0

    def transfer_s(self, move_bytes: float) -> float:
        if move_bytes <= 0:
            return 0.0
        return self.latency_s + move_bytes / self.link_bandwidth

    def compute_s(self, work_s: float, util: float) -> float:
        return work_s * slowdown(util)

    def finish_s(self, wait_s: float, move_bytes: float, work_s: float, util: float) -> float:
        return wait_s + self.transfer_s(move_bytes) + self.compute_s(work_s, util)
