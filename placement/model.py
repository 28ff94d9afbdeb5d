"""The data placement works on: a cluster snapshot, demands, and the plan that answers them.

Units everywhere: CPU in milli-cores, host memory in MiB, GPU share in milli-GPU (1000 = one whole
GPU), GPU memory in MiB, times in seconds, data in bytes. Nothing here imports Ray.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

GPU_MILLI = 1000


@dataclass(frozen=True)
class GpuSpec:
    """One GPU of a node as placement sees it.

    ``milli_used`` and ``memory_reserved_mib`` are what placed work already holds. The live figures
    (``util``, ``memory_used_mib``, ``external_processes``) come from NVML or from emulation; they are
    ``None``/0 where nobody measured them (the trace simulator).
    """

    model: str = "GPU"
    memory_mib: int = 0  # 0 = memory is not tracked (the trace simulator)
    milli_used: int = 0
    memory_reserved_mib: int = 0
    util: float | None = None  # 0..1, live utilisation
    memory_used_mib: int | None = None  # live, all processes, Ray or not
    external_processes: int = 0  # compute processes on this GPU that fastgpu did not start
    emulated: bool = False
    busy_s: float = 0.0  # estimated seconds until work already queued/running here lets new work start

    @property
    def milli_free(self) -> int:
        return GPU_MILLI - self.milli_used

    @property
    def memory_free_mib(self) -> int:
        """Free GPU memory for new work: the live reading where there is one, minus reservations."""
        if self.memory_mib <= 0:
            return 1 << 40
        live_used = self.memory_used_mib or 0
        return max(0, self.memory_mib - max(live_used, self.memory_reserved_mib))


@dataclass(frozen=True)
class NodeSpec:
    """One node: its CPU and memory (capacity and what is in use) and its GPUs, indexed 0..n-1."""

    name: str
    cpu_milli: int
    memory_mib: int
    gpus: tuple[GpuSpec, ...] = ()
    cpu_used: int = 0
    memory_used_mib: int = 0
    alive: bool = True


@dataclass(frozen=True)
class Snapshot:
    """The cluster at one instant. ``rank`` optionally fixes each node's tie-break rank (lower wins)."""

    nodes: tuple[NodeSpec, ...]
    rank: tuple[int, ...] | None = None

    def node_index(self, name: str) -> int:
        for i, n in enumerate(self.nodes):
            if n.name == name:
                return i
        raise KeyError(f"no node named {name!r} in the snapshot")


@dataclass(frozen=True)
class Demand:
    """What one unit of work (a pod, an actor, a subtask) asks for. All on one node.

    ``num_gpus`` GPUs, each contributing ``gpu_milli`` of share (1000 = whole GPU) and
    ``gpu_memory_mib`` of memory. ``gpu_types``: allowed GPU models (empty = any). ``priority``: higher
    goes first within one request. ``work_s``: estimated compute seconds on an idle GPU (0 = unknown);
    ``work_tail_s``: how much longer than ``work_s`` a long run of it takes (its 90th percentile minus
    ``work_s``; 0 = no spread known), which a slower GPU stretches (``placement.cost.compute_s``).
    ``input_bytes``: bytes of this demand's inputs already on each node, by node name, and
    ``input_total`` their sum (for the transfer term; see ``placement.cost``).
    """

    id: str
    cpu_milli: int = 0
    memory_mib: int = 0
    num_gpus: int = 0
    gpu_milli: int = 0
    gpu_memory_mib: int = 0
    gpu_types: tuple[str, ...] = ()
    priority: int = 0
    work_s: float = 0.0
    work_tail_s: float = 0.0
    input_bytes: Mapping[str, int] = field(default_factory=dict)
    input_total: int = 0

    def __post_init__(self) -> None:
        for fname in ("cpu_milli", "memory_mib", "num_gpus", "gpu_milli", "gpu_memory_mib", "input_total"):
            v = getattr(self, fname)
            if v < 0:
                raise ValueError(f"demand {self.id!r}: {fname} must be >= 0, got {v}")
        if self.gpu_milli > GPU_MILLI:
            raise ValueError(f"demand {self.id!r}: gpu_milli is per GPU and at most {GPU_MILLI}, got {self.gpu_milli}")
        if self.num_gpus > 1 and self.gpu_milli not in (0, GPU_MILLI):
            raise ValueError(f"demand {self.id!r}: several GPUs must each be whole (gpu_milli=1000)")
        if self.num_gpus == 0 and (self.gpu_milli or self.gpu_memory_mib):
            raise ValueError(f"demand {self.id!r}: gpu_milli/gpu_memory_mib given but num_gpus is 0")

    @property
    def uses_gpu(self) -> bool:
        return self.num_gpus > 0

    @property
    def gpu_share(self) -> int:
        """Per-GPU share in milli. A GPU demand that names only memory takes the smallest share (1), so it
        packs by memory yet never lands on a GPU another demand holds whole; one naming neither takes
        the whole GPU."""
        if self.num_gpus == 0:
            return 0
        return self.gpu_milli if self.gpu_milli > 0 else (1 if self.gpu_memory_mib else GPU_MILLI)

    @property
    def total_gpu_milli(self) -> int:
        return self.gpu_share * self.num_gpus

    @property
    def shape(self) -> tuple:
        """What a policy's score may depend on (besides node state): equal shapes score alike."""
        return (self.cpu_milli, self.gpu_share, self.num_gpus, self.gpu_memory_mib)


@dataclass(frozen=True)
class PlacementRequest:
    """Snapshot + demands in. Demands are placed in priority order (higher first), then as given."""

    snapshot: Snapshot
    demands: tuple[Demand, ...]
    explain: bool = True


@dataclass(frozen=True)
class Assignment:
    demand_id: str
    node: str
    node_index: int
    gpus: tuple[int, ...]


@dataclass(frozen=True)
class Unplaced:
    """A demand the plan could not place. ``never`` is True when no node could hold it even empty."""

    demand_id: str
    reason: str
    never: bool = False


@dataclass(frozen=True)
class Candidate:
    node: str
    score: float
    terms: Mapping[str, float]
    gpus: tuple[int, ...] = ()


@dataclass(frozen=True)
class Explanation:
    """Why a demand went where it went: the feasible candidates with their score terms (the best-scored
    ones and the winner; ``more`` feasible nodes scored lower and are only counted), and the winner."""

    demand_id: str
    policy: str
    candidates: tuple[Candidate, ...]
    rejected: Mapping[str, int]  # filter reason -> number of nodes it rejected
    winner: str | None
    reason: str
    more: int = 0  # feasible candidates left out of ``candidates`` (lower scores)

    def format(self, limit: int = 5) -> str:
        lines = [f"{self.demand_id}: policy={self.policy} -> {self.winner or 'unplaced'} ({self.reason})"]
        top = sorted(self.candidates, key=lambda c: -c.score)[:limit]
        for c in top:
            terms = ", ".join(f"{k}={v:.3g}" for k, v in c.terms.items())
            lines.append(f"  {c.node:>20s} gpus={list(c.gpus)} score={c.score:.4g} [{terms}]")
        if len(self.candidates) + self.more > limit:
            lines.append(f"  ... {max(0, len(self.candidates) - limit) + self.more} more candidates")
        for why, n in self.rejected.items():
            lines.append(f"  rejected {n} node(s): {why}")
        return "\n".join(lines)


@dataclass(frozen=True)
class Plan:
    assignments: tuple[Assignment, ...]
    unplaced: tuple[Unplaced, ...]
    explanations: tuple[Explanation, ...] = ()

    def by_id(self) -> dict[str, Assignment]:
        return {a.demand_id: a for a in self.assignments}
