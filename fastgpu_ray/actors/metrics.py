"""Dispatcher metrics through ``ray.util.metrics`` (exported by Ray's metrics agent / Prometheus)."""
from __future__ import annotations


class RayMetrics:
    """Queue depth, subtasks placed / finished / failed, placement latency, per-GPU utilisation."""

    def __init__(self, session: str) -> None:
        from ray.util.metrics import Counter, Gauge, Histogram

        tags = {"session": session}
        self._queue = Gauge("fastgpu_queue_depth", "Subtasks waiting in fastgpu's queue", tag_keys=("session",))
        self._placed = Counter("fastgpu_subtasks_placed", "Subtasks placed on a GPU", tag_keys=("session",))
        self._finished = Counter("fastgpu_subtasks_finished", "Subtasks that returned a value",
                                 tag_keys=("session",))
        self._failed = Counter("fastgpu_subtasks_failed", "Subtasks that ended in an error", tag_keys=("session",))
        self._latency = Histogram("fastgpu_placement_latency_s", "Seconds per scheduling round that placed work",
                                  boundaries=[0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0],
                                  tag_keys=("session",))
        self._util = Gauge("fastgpu_gpu_utilization", "GPU utilisation 0..1 (NVML or emulated)",
                           tag_keys=("session", "node", "gpu"))
        for m in (self._queue, self._placed, self._finished, self._failed, self._latency):
            m.set_default_tags(tags)
        self.session = session
        self.counts = {"placed": 0, "finished": 0, "failed": 0}

    def queued(self, n: int) -> None:
        self._queue.set(n)

    def placed(self, n: int, latency_s: float) -> None:
        self.counts["placed"] += n
        self._placed.inc(n)
        self._latency.observe(latency_s)

    def finished(self, ok: bool, n: int = 1) -> None:
        self.counts["finished" if ok else "failed"] += n
        (self._finished if ok else self._failed).inc(n)

    def gpu_util(self, node: str, gpu: int, util: float) -> None:
        self._util.set(util, tags={"session": self.session, "node": node, "gpu": str(gpu)})
