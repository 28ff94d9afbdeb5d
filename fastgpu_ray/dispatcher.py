"""The dispatcher actor: one per fastgpu session, on the driver's node, async, ``num_cpus=0``.

``.remote()`` on a fastgpu task calls ``submit`` here; the caller's ObjectRef is this call's return ref,
so the subtask can wait in fastgpu's queue and be re-placed on retries while the user already holds its
ref. ObjectRef arguments arrive wrapped (inside ``Payload.refs``) so Ray does not resolve them here.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import ray

from .dispatch import DispatchCore, Record, Subtask
from .options import TaskOptions
from .ray_backend import RayBackend
from .cluster_status import ClusterStatus, GpuStatus

log = logging.getLogger("fastgpu.dispatcher")


@dataclass
class Payload:
    """What the worker needs for one call: cloudpickled (args, kwargs) and the top-level ObjectRefs."""

    blob: bytes
    refs: list
    # Refs inside by-value containers (lists, dicts): not resolved by Ray, but their bytes still have to
    # reach the worker, so the transfer cost counts them.
    nested_refs: list = field(default_factory=list)


@dataclass
class FnBox:
    """Keeps the function's ObjectRef wrapped so Ray does not resolve it in the dispatcher."""

    key: str
    ref: Any


@ray.remote(num_cpus=0, max_concurrency=100_000, max_restarts=0)
class Dispatcher:
    def __init__(self, session: str, policy: str, idle_timeout_s: float, emulated_memory_mib: int,
                 force_emulation: bool) -> None:
        from .metrics import RayMetrics

        logging.basicConfig(level=logging.INFO)
        self.session = session
        self.backend = RayBackend(emulated_memory_mib, force_emulation)
        self.metrics = RayMetrics(session)
        self.core = DispatchCore(self.backend, policy=policy, idle_timeout_s=idle_timeout_s, metrics=self.metrics)
        self._started = False

    async def ready(self) -> str:
        if not self._started:
            self._started = True
            await self.core.start()
        return self.session

    async def submit(self, sid: str, opts: TaskOptions, fn: FnBox, payload: Payload):
        out = await self.core.submit(Subtask(sid, opts, fn.key, fn.ref, payload))
        return out.value  # an error value is a RayTaskError: Ray raises it from ray.get

    async def submit_many(self, sids: list[str], opts: TaskOptions, fn: FnBox, payloads: list[Payload]):
        import asyncio
        outs = await asyncio.gather(*(self.core.submit(Subtask(s, opts, fn.key, fn.ref, p))
                                      for s, p in zip(sids, payloads)))
        return tuple(o.value for o in outs)

    def explain(self, sid: str) -> Record | None:
        rec = self.core.explain(sid)
        return dataclasses.replace(rec, history=list(rec.history)) if rec else None

    def snapshot(self):
        return self.core.snapshot()

    async def refresh(self) -> None:
        await self.core.refresh()

    def status(self) -> ClusterStatus:
        core = self.core
        snap = core.snapshot()
        rows = []
        for node in snap.nodes:
            if not node.alive:
                continue
            tel = core.telemetry.get(node.name)
            readings = {r.index: r for r in tel.gpus} if tel else {}
            for i, g in enumerate(node.gpus):
                r = readings.get(i)
                h = core.holds.get((node.name, i))
                rows.append(GpuStatus(
                    node=node.name, gpu=i, model=g.model, emulated=g.emulated, util=g.util,
                    memory_used_mib=r.memory_used_mib if r else None, memory_total_mib=g.memory_mib,
                    memory_reserved_mib=g.memory_reserved_mib, external_processes=g.external_processes,
                    fastgpu_running=h.running if h else 0, held=(node.name, i) in core.workers,
                    temperature_c=r.temperature_c if r else None, power_w=r.power_w if r else None))
        c = self.metrics.counts
        return ClusterStatus(tuple(rows), core.queue_length(), sum(n.alive for n in snap.nodes),
                             c["placed"], c["finished"], c["failed"])

    async def set_emulated(self, node_id: str, index: int, kw: dict) -> None:
        node = next((n for n in self.core.nodes if n.node_id == node_id), None)
        if node is None:
            await self.core.refresh()
            node = next((n for n in self.core.nodes if n.node_id == node_id), None)
        if node is None or not node.alive:
            raise ValueError(f"no live node {node_id!r} in the cluster")
        await self.backend.set_emulated(node, index, **kw)
        await self.core.refresh()

    def workers(self) -> list[tuple[str, int, int]]:
        """(node, GPU index, pid) of every GPU worker fastgpu holds now."""
        return [(w.node_id, w.gpu_index, w.pid) for w in self.core.workers.values()]

    def worker_handle(self, node_id: str, gpu: int):
        w = self.core.workers.get((node_id, gpu))
        return [w.handle] if w else []

    async def shutdown(self) -> int:
        import asyncio
        handles = list(self.backend.created.values())  # held workers and those still starting
        await self.core.shutdown()
        self.backend.kill_all()
        await asyncio.gather(*(self.backend.wait_dead(h) for h in handles), return_exceptions=True)
        for m in self.backend.monitors.values():
            try:
                ray.kill(m, no_restart=True)
            except Exception:
                pass
        return len(handles)
