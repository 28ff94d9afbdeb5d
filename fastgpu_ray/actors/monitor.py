"""The per-node monitor actor: polls NVML (or emulates GPUs) about once a second; one per node.

Named ``monitor-<node id>`` in the ``fastgpu`` namespace so that subtasks, plain Ray tasks
(``emulate_work``) and ``fastgpu status`` find it; fastgpu sessions on one cluster share it.
"""
from __future__ import annotations

import os
import threading
import time

import ray

from ..core.telemetry import NodeTelemetry
from ..gpu_sources import EmulatedSource, NvmlSource, open_nvml

NAMESPACE = "fastgpu"
POLL_S = 1.0


def monitor_name(node_id: str) -> str:
    return f"monitor-{node_id}"


def monitor_for(node_id: str):
    return ray.get_actor(monitor_name(node_id), namespace=NAMESPACE)


class NodeMonitor:
    """Plain class (tested without Ray); the actor below wraps it."""

    def __init__(self, node_id: str, logical_gpus: int, emulated_memory_mib: int, force_emulation: bool,
                 nvml=None, poll: bool = True) -> None:
        """``poll``: keep NVML readings fresh in a thread (False: one reading, for a one-off ``read``)."""
        self.node_id = node_id
        nvml = None if force_emulation else (nvml or open_nvml())
        self.source = NvmlSource(nvml) if nvml is not None else EmulatedSource(logical_gpus, emulated_memory_mib)
        self.pids: set[int] = set()
        self._last = self.source.read()
        self._lock = threading.Lock()
        if poll and not self.source.emulated:
            threading.Thread(target=self._poll, daemon=True, name="fastgpu-nvml-poll").start()

    def _poll(self) -> None:
        while True:
            time.sleep(POLL_S)
            try:
                r = self.source.read()
                with self._lock:
                    self._last = r
            except Exception:  # keep the last good reading; NVML hiccups are transient
                pass

    def read(self, fresh: bool = False) -> NodeTelemetry:
        """The node now (NVML: as of the last poll; ``fresh``: read now, for a monitor without its thread)."""
        gpus = self.source.read() if self.source.emulated or fresh else self._last
        return NodeTelemetry(self.node_id, self.source.emulated, tuple(gpus), frozenset(self.pids), time.time())

    def register_pids(self, pids, add: bool = True) -> None:
        (self.pids.update if add else self.pids.difference_update)(pids)

    def set_emulated(self, index: int, **kw) -> None:
        if not self.source.emulated:
            raise ValueError(f"node {self.node_id} has real GPUs (NVML): their load cannot be set")
        self.source.set_gpu(index, **kw)

    def work_begin(self, index: int, util: float, pid: int = 0) -> tuple[int, float]:
        if self.source.emulated:
            return self.source.work_begin(index, util, pid)
        from placement.cost import slowdown
        r = next((g for g in self._last if g.index == index), None)
        return 0, slowdown(r.util if r else 0.0)

    def work_end(self, index: int, token: int) -> None:
        if self.source.emulated:
            self.source.work_end(index, token)


@ray.remote(num_cpus=0, max_concurrency=64)
class MonitorActor(NodeMonitor):
    def pid(self) -> int:
        return os.getpid()
