"""The single objective: estimated finish time of a demand on a GPU.

    finish = wait for the GPU + move the inputs that are not on that node + compute at the GPU's load

Compute at load is the expected run time times the slowdown, plus, for work whose run time varies, the
extra a long run suffers on a slower GPU (``compute_s``): for a map whose longest subtasks decide the
makespan, starting one on a 5x slower GPU to save a short wait is a bad bet even when the mean says
otherwise.

Placement (the ``fastgpu`` policy's ``finish_s`` term), the transfer optimiser (``transfer/``, which
supplies the bytes) and the emulated GPUs (which slow work down by the same ``slowdown``) all call these
functions; there is no second copy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_UTIL = 0.95  # a GPU reported fully busy still makes some progress; caps the slowdown at 20x


def slowdown(util):
    """How much longer work takes on a GPU that is ``util`` (0..1) busy with other work (a float, or
    elementwise for an array).

    The model: the GPU time-slices between its tenants, so our work gets the idle fraction.
    """
    if np.ndim(util):  # (fmax/fmin drop NaN for the bound, as clipping nan_to_num's value would; cheaper)
        return 1.0 / (1.0 - np.fmin(np.fmax(np.asarray(util, dtype=float), 0.0), MAX_UTIL))
    u = min(max(float(util), 0.0), MAX_UTIL)
    return 1.0 / (1.0 - u)


DEFAULT_LINK_BANDWIDTH = 125e6  # 1 Gbit/s, in bytes/s: a CostModel built without one


@dataclass(frozen=True)
class CostModel:
    """Link bandwidth in bytes/s (default 1 Gbit/s; the runtime builds its models with the session's
    bandwidth: ``transfer.runtime_hooks.RuntimeTransfer.cost()``); ``latency_s`` per transfer that moves
    anything."""

    link_bandwidth: float = DEFAULT_LINK_BANDWIDTH
    latency_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.link_bandwidth > 0:
            raise ValueError(f"link bandwidth must be > 0 bytes/s, got {self.link_bandwidth!r}")

    # Each works on floats and, elementwise, on numpy arrays (placement prices all candidates at once).
    def transfer_s(self, move_bytes):
        if np.ndim(move_bytes):
            move = np.asarray(move_bytes, dtype=float)
            return np.where(move > 0, self.latency_s + move / self.link_bandwidth, 0.0)
        if move_bytes <= 0:
            return 0.0
        return self.latency_s + move_bytes / self.link_bandwidth

    def compute_s(self, work_s, util, tail_s=0.0):
        """Expected compute seconds at the GPU's load, plus the tail risk a slower GPU adds: work whose run
        time varies (``tail_s`` = 90th percentile - mean) runs ``tail_s * (slowdown - 1)`` longer there
        when it is a long one. On an idle GPU the term is 0; for work of fixed length it is 0."""
        s = slowdown(util)
        return work_s * s + tail_s * (s - 1.0)

    def finish_s(self, wait_s, move_bytes, work_s, util, tail_s=0.0):
        return wait_s + self.transfer_s(move_bytes) + self.compute_s(work_s, util, tail_s)
