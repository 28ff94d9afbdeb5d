"""The GPU workers one dispatch core holds (Ray-free bookkeeping): one lease (``WorkerInfo``) per GPU it
holds, and per node the GPUs being claimed (workers starting). Ray's side (starting and killing them) is
the backend's; what runs on them is ``reservations``'."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .telemetry import GpuHold, NodeInfo

Key = tuple[str, int]  # (node id, GPU index)


@dataclass
class WorkerInfo:
    handle: Any
    node_id: str
    gpu_index: int
    pid: int = 0
    alive: bool = True
    idle_since: float = 0.0
    grace_until: float = 0.0  # came up above the job's cap: may run one batch before this (clock) first


class WorkerPool:
    def __init__(self) -> None:
        self.workers: dict[Key, WorkerInfo] = {}
        self.claiming: dict[str, int] = {}  # node -> GPUs being claimed there (workers starting)

    def held(self, node: str) -> int:
        """GPUs of ``node`` with a worker."""
        return sum(1 for (nd, _) in self.workers if nd == node)

    def get(self, key: Key) -> WorkerInfo | None:
        return self.workers.get(key)

    def live(self, key: Key) -> bool:
        w = self.workers.get(key)
        return w is not None and w.alive

    def add(self, w: WorkerInfo) -> None:
        self.workers[(w.node_id, w.gpu_index)] = w

    def remove(self, w: WorkerInfo) -> bool:
        """Drop ``w`` (dead, released); returns whether it was the one held for its GPU."""
        w.alive = False
        key = (w.node_id, w.gpu_index)
        if self.workers.get(key) is w:
            del self.workers[key]
            return True
        return False

    def count_claim(self, node: str, k: int) -> None:
        """``k`` more (or, negative, fewer) GPUs of ``node`` being claimed."""
        v = self.claiming.get(node, 0) + k
        if v > 0:
            self.claiming[node] = v
        else:
            self.claiming.pop(node, None)

    def claim_holds(self, nodes: list[NodeInfo], holds: dict[Key, GpuHold]) -> dict[Key, GpuHold]:
        """The GPUs being claimed, as holds (the lowest indices not held yet on each node): a node being
        claimed keeps showing them free to placement, so the subtasks that chose it wait for it."""
        out = {}
        for node, count in self.claiming.items():
            n = next((x for x in nodes if x.node_id == node), None)
            free = [g for g in range(n.gpu_total) if (node, g) not in holds] if n else []
            for g in free[:count]:
                out[(node, g)] = GpuHold(claiming=True)
        return out
