"""Live cluster view: Ray's nodes and GPUs + per-node monitor readings + what fastgpu holds -> Snapshot.

Pure functions (no Ray; unit-tested): ``node_infos`` (Ray's node list -> ``NodeInfo``), ``build_snapshot``
(+ readings + holds -> Snapshot), ``taken_indices`` (which unheld GPUs count as taken by other Ray work).
``fastgpu.cluster_snapshot()`` (in ``session``) merges the node schedulers' live reports.

Rules (docs/design-runtime.md): a GPU fastgpu holds (a worker actor owns it in Ray) carries fastgpu's
reservations; of the GPUs fastgpu does not hold, as many as Ray shows taken by other Ray work are marked
fully used (``milli_used=1000``) so placement never picks them. Free GPU memory = total - memory used by
processes outside fastgpu - fastgpu's reservations (not fastgpu's own live usage, which can grow).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Mapping

from placement import GPU_MILLI, GpuSpec, NodeSpec, Snapshot

from ..gpu_sources import GpuReading


@dataclass(frozen=True)
class NodeInfo:
    """Ray's view of one node: logical resources (total and available right now)."""

    node_id: str
    alive: bool
    cpu_total: float
    cpu_available: float
    memory_bytes: float
    gpu_total: int
    gpu_available: float
    address: str = ""


@dataclass
class GpuHold:
    """One GPU fastgpu holds: its reservations and running subtasks (count)."""

    milli_used: int = 0
    memory_reserved_mib: int = 0
    running: int = 0
    calls: int = 0  # worker calls running on it (each in a slot process of its own)
    slot_cap: int = 0  # calls it may run at once (0: no cap); at the cap it takes no more (full)

    @property
    def at_cap(self) -> bool:
        """Every slot it may run is busy: nothing more starts on it until a call ends."""
        return bool(self.slot_cap) and self.calls >= self.slot_cap
    util_declared: float = 0.0  # sum of the running subtasks' declared gpu_util
    claiming: bool = False  # a worker for it is being created (Ray may or may not count it taken yet)


@dataclass(frozen=True)
class NodeTelemetry:
    node_id: str
    emulated: bool
    gpus: tuple[GpuReading, ...]
    fastgpu_pids: frozenset[int] = field(default_factory=frozenset)
    time: float = 0.0


def node_infos(nodes, avail) -> list[NodeInfo]:
    """The one translation of Ray's node list: ``ray.nodes()`` entries + available resources per node id
    (``ray._private.state.available_resources_per_node()``) -> ``NodeInfo`` (dead nodes kept, not alive)."""
    out = []
    for n in nodes:
        nid = n["NodeID"]
        tot = n.get("Resources", {})
        av = avail.get(nid, {})
        out.append(NodeInfo(
            node_id=nid, alive=bool(n.get("Alive")), cpu_total=float(tot.get("CPU", 0)),
            cpu_available=float(av.get("CPU", 0)), memory_bytes=float(tot.get("memory", 0)),
            gpu_total=int(math.floor(tot.get("GPU", 0) + 1e-9)), gpu_available=float(av.get("GPU", 0)),
            address=n.get("NodeManagerAddress", "")))
    return out


def taken_indices(gpus, candidates, count: int) -> set[int]:
    """The one rule for the GPUs Ray shows taken by other work without saying which: of ``candidates``
    (indices fastgpu does not hold), the ``count`` most loaded (live utilisation), ties to the highest
    index. So whatever placement prefers (an idle GPU) is the one least likely to be marked."""
    if count <= 0:
        return set()
    order = sorted(candidates, key=lambda i: (-(gpus[i].util or 0.0), -i))
    return set(order[:count])


def taken_by_others(node: NodeInfo, held: int, claiming: int = 0) -> int:
    """How many of the GPUs fastgpu does not hold Ray shows as taken by other Ray work."""
    unheld = node.gpu_total - held - claiming
    return max(0, min(unheld, unheld - int(node.gpu_available + 1e-9)))


def split_util(reading: GpuReading, pids: frozenset[int]) -> tuple[float, float]:
    """One GPU's utilisation as (fastgpu's own processes', everyone else's): the one rule, so a GPU busy
    with fastgpu's own slots is not priced as loaded from outside. With per-process samples (NVML where
    the driver gives them; emulated GPUs always), own = the samples of fastgpu's pids. Without them: all of
    it is fastgpu's when every compute process on the GPU is fastgpu's, else all of it counts as outside
    load (the safe side: an unknown split never makes a loaded GPU look idle). Emulated GPUs without
    running work: their set external load."""
    own = sum(u for p, u in zip(reading.processes, reading.process_util) if p in pids)
    if reading.emulated:  # its total is capped at 1: outside = the set load + others' work, not the rest
        others = sum(u for p, u in zip(reading.processes, reading.process_util) if p not in pids)
        return min(own, 1.0), min(1.0, reading.external_util + others)
    if reading.process_util:
        own = min(own, reading.util)
        return own, max(0.0, reading.util - own)
    if reading.processes and all(p in pids for p in reading.processes):
        return reading.util, 0.0
    return 0.0, reading.util


def gpu_spec(reading: GpuReading | None, hold: GpuHold | None, pids: frozenset[int]) -> GpuSpec:
    milli = hold.milli_used if hold else 0
    if hold is not None and hold.at_cap:
        milli = GPU_MILLI
    reserved = hold.memory_reserved_mib if hold else 0
    if reading is None:
        return GpuSpec(milli_used=milli, memory_reserved_mib=reserved)
    if reading.emulated:
        external_mem, external_procs = reading.external_memory_mib, reading.external_processes
        own_mem = 0
    else:
        own_mem = sum(m for p, m in zip(reading.processes, reading.process_memory_mib) if p in pids)
        external_mem = max(0, reading.memory_used_mib - own_mem)
        external_procs = sum(1 for p in reading.processes if p not in pids)
    # Declared load of fastgpu's running subtasks counts until a live reading shows it (never twice).
    own, outside = split_util(reading, pids)
    util = min(1.0, outside + max(own, hold.util_declared if hold else 0.0))
    return GpuSpec(
        model=reading.model, memory_mib=reading.memory_total_mib, milli_used=milli,
        memory_reserved_mib=reserved, util=util,
        memory_used_mib=external_mem + max(own_mem, reserved), external_processes=external_procs,
        emulated=reading.emulated)


def holds_by_node(holds: Mapping[tuple[str, int], GpuHold]) -> dict[str, dict[int, GpuHold]]:
    """``holds`` grouped per node: node id -> GPU index -> hold (one pass, however many nodes)."""
    out: dict[str, dict[int, GpuHold]] = {}
    for (node, g), h in holds.items():
        out.setdefault(node, {})[g] = h
    return out


def readings_of(tel: NodeTelemetry | None) -> tuple[dict[int, GpuReading], frozenset[int]]:
    """A node's reading as (GPU index -> reading, fastgpu's pids); empty without one."""
    return ({r.index: r for r in tel.gpus}, tel.fastgpu_pids) if tel else ({}, frozenset())


def taken_on(n: NodeInfo, telemetry: Mapping[str, NodeTelemetry],
             holds: Mapping[tuple[str, int], GpuHold]) -> set[int]:
    """The GPU indices of node ``n`` that count as held by other Ray work (``taken_indices`` over the GPUs
    fastgpu does not hold or claim); the snapshot shows them full."""
    return _taken(n, *readings_of(telemetry.get(n.node_id)), holds_by_node(holds).get(n.node_id, {}))


def _taken(n: NodeInfo, readings: Mapping[int, GpuReading], pids: frozenset[int],
           mine: Mapping[int, GpuHold]) -> set[int]:
    held = sum(1 for h in mine.values() if not h.claiming)
    others = taken_by_others(n, held, len(mine) - held)
    if not others:
        return set()
    unheld = [g for g in range(n.gpu_total) if g not in mine]
    return taken_indices([gpu_spec(readings.get(g), None, pids) for g in range(n.gpu_total)], unheld, others)


def node_spec(n: NodeInfo, tel: NodeTelemetry | None, mine: Mapping[int, GpuHold],
              busy: Mapping[int, float]) -> NodeSpec:
    """One node of ``build_snapshot``: ``tel`` its reading (or None), ``mine`` fastgpu's holds on it per GPU
    index, ``busy`` its GPUs with a known estimated end (GPU index -> seconds left)."""
    readings, pids = readings_of(tel)
    taken = _taken(n, readings, pids, mine)
    gpus = []
    for g in range(n.gpu_total):
        r = readings.get(g)
        if g in busy:
            spec = gpu_spec(r, GpuHold(), pids)  # as it will be once its running work is done
            ext = split_util(r, pids)[1] if r is not None else spec.util
            spec = dataclasses.replace(spec, busy_s=busy[g], util=ext)
        else:
            spec = gpu_spec(r, mine.get(g), pids)
        if g in taken:  # (a GPU being claimed shows free: the subtasks that chose it wait for it)
            spec = dataclasses.replace(spec, milli_used=GPU_MILLI)
        gpus.append(spec)
    return NodeSpec(
        name=n.node_id, cpu_milli=int(n.cpu_total * 1000), memory_mib=int(n.memory_bytes // (1 << 20)),
        gpus=tuple(gpus), cpu_used=int((n.cpu_total - n.cpu_available) * 1000), alive=n.alive)


def build_snapshot(nodes: list[NodeInfo], telemetry: Mapping[str, NodeTelemetry],
                   holds: Mapping[tuple[str, int], GpuHold],
                   busy: Mapping[tuple[str, int], float] | None = None) -> Snapshot:
    """The placement Snapshot of the live cluster (nodes in the given order; dead nodes kept, not alive).

    ``busy``: GPUs whose running work has a known estimated end, with the seconds left. Such a GPU is
    shown as it will be then (free, at its external load, ``busy_s`` = seconds left), so the policy's
    finish time (wait + compute at load) can prefer waiting for it over starting on a loaded GPU now.
    """
    mine = holds_by_node(holds)
    late = holds_by_node(busy or {})
    return Snapshot(tuple(node_spec(n, telemetry.get(n.node_id), mine.get(n.node_id, {}),
                                    late.get(n.node_id, {})) for n in nodes))
