"""The dispatcher's window on Ray: nodes and resources, monitors, GPU worker actors, worker calls."""
from __future__ import annotations

import asyncio
import logging

import ray
from ray.exceptions import (ActorDiedError, ActorUnavailableError, GetTimeoutError, NodeDiedError,
                            ObjectLostError, OwnerDiedError, RayActorError, RayTaskError, WorkerCrashedError)
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from .dispatch import BatchRejected, Outcome, WorkerInfo, WorkerLost
from .monitor import NAMESPACE, MonitorActor, NodeMonitor, monitor_name
from .telemetry import NodeInfo, NodeTelemetry, node_infos
from .worker import GpuWorker, Item

log = logging.getLogger("fastgpu.ray")

CLAIM_TIMEOUT_S = 60.0  # a worker process may take a while to start on a loaded machine
READ_TIMEOUT_S = 5.0
FIRST_READ_WAIT_S = 0.3  # a node's first reading: waits this long for a monitor actor still starting ...
_LOST = (ActorDiedError, ActorUnavailableError, RayActorError, NodeDiedError, WorkerCrashedError,
         ObjectLostError, OwnerDiedError)


def ray_nodes() -> list[NodeInfo]:
    return node_infos(ray.nodes(), ray._private.state.available_resources_per_node())


class RayBackend:
    """``node``: the one node this backend's scheduler serves (``nodes()`` returns only it)."""

    def __init__(self, emulated_memory_mib: int, force_emulation: bool, node: str | None = None) -> None:
        self.emulated_memory_mib = emulated_memory_mib
        self.force_emulation = force_emulation
        self.node = node
        self.monitors: dict[str, object] = {}
        self.created: dict[bytes, object] = {}  # every worker handle not yet released, started or not
        self._read_once: set[str] = set()

    def nodes(self) -> list[NodeInfo]:
        nodes = ray_nodes()
        return [n for n in nodes if n.node_id == self.node] if self.node else nodes

    def monitor(self, node: NodeInfo):
        m = self.monitors.get(node.node_id)
        if m is None:
            m = MonitorActor.options(
                name=monitor_name(node.node_id), namespace=NAMESPACE, get_if_exists=True, lifetime=None,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False),
            ).remote(node.node_id, node.gpu_total, self.emulated_memory_mib, self.force_emulation)
            self.monitors[node.node_id] = m
        return m

    async def read(self, node: NodeInfo) -> NodeTelemetry | None:
        """The node's monitor's reading. The first one of this scheduler's own node, if its monitor actor
        is still starting (seconds on a node just launched), is read in this process instead (NVML or the
        emulation's defaults, as a new monitor would report them), so the first placement does not wait
        for a second process start."""
        first = node.node_id == self.node and node.node_id not in self._read_once
        try:
            call = self.monitor(node).read.remote()
            if first:
                self._read_once.add(node.node_id)
                try:
                    return await asyncio.wait_for(asyncio.shield(_await(call)), FIRST_READ_WAIT_S)
                except (asyncio.TimeoutError, GetTimeoutError):
                    return NodeMonitor(node.node_id, node.gpu_total, self.emulated_memory_mib, self.force_emulation,
                                       poll=False).read()
            return await asyncio.wait_for(call, READ_TIMEOUT_S)
        except (asyncio.TimeoutError, GetTimeoutError):
            return None
        except _LOST:
            self.monitors.pop(node.node_id, None)
            return None

    async def claim(self, node: NodeInfo, count: int, ready) -> None:
        """Start ``count`` GPU workers on ``node``; ``ready(worker)`` as each comes up. Workers not up
        within ``CLAIM_TIMEOUT_S`` are killed (Ray had no GPU for them after all, or the node died)."""
        mon = self.monitor(node)
        handles = [GpuWorker.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False),
        ).remote(node.node_id, monitor_name(node.node_id), NAMESPACE) for _ in range(count)]
        for h in handles:
            self.created[h._actor_id.binary()] = h

        async def start(h):
            try:
                nid, gpus, pid = await asyncio.wait_for(_await(h.info.remote()), CLAIM_TIMEOUT_S)
            except Exception:
                self._kill(h)
                return
            if h._actor_id.binary() not in self.created:  # killed (shutdown) as it came up
                self._kill(h)
                return
            w = WorkerInfo(h, nid, int(gpus[0]), pid)
            mon.register_pids.remote([pid])
            ready(w)

        await asyncio.gather(*(start(h) for h in handles))

    async def run(self, worker: WorkerInfo, batch, new_fns: dict) -> list[Outcome]:
        keys = list(new_fns)
        items, flat = [], [new_fns[k] for k in keys]
        for st in batch:
            p = st.payload
            items.append(Item(st.id, st.fn_key, p.blob, len(p.refs), st.opts.work_s, st.opts.gpu_util,
                              tuple(st.record.gpus)))
            flat.extend(p.refs)
        try:
            res = await worker.handle.run_batch.remote(keys, items, *flat)
        except _LOST as e:
            raise WorkerLost(type(e).__name__) from e
        except RayTaskError as e:
            raise BatchRejected(e) from e
        return [Outcome(True, r[1]) if r[0] == "ok" else Outcome(False, r[1], bool(r[2])) for r in res]

    def _kill(self, handle) -> None:
        self.created.pop(handle._actor_id.binary(), None)
        try:
            ray.kill(handle, no_restart=True)
        except Exception:
            pass

    def kill_all(self) -> list:
        """Kill every worker this backend created (also those whose claim is still starting)."""
        hs = list(self.created.values())
        for h in hs:
            self._kill(h)
        return hs

    async def release(self, worker: WorkerInfo) -> None:
        self._kill(worker.handle)
        m = self.monitors.get(worker.node_id)
        if m is not None:
            m.register_pids.remote([worker.pid], False)

    async def wait_dead(self, handle, timeout: float = 10.0) -> None:
        """Return once Ray reports the worker dead (so its GPU is back in Ray's pool)."""
        try:
            await asyncio.wait_for(handle.info.remote(), timeout)
        except Exception:
            pass

    async def pending_gpu_demand(self) -> float:
        """GPUs that tasks and actors (any job) ask Ray for and Ray cannot place now: the GCS's pending
        resource requests (the same ones Ray's autoscaler reads)."""
        return await asyncio.to_thread(_pending_gpus)

    def fail(self, message: str, exc: BaseException):
        return RayTaskError("fastgpu", message, exc)

    async def set_emulated(self, node: NodeInfo, index: int, **kw) -> None:
        await self.monitor(node).set_emulated.remote(index, **kw)


_gcs = None


def _pending_gpus() -> float:
    global _gcs
    from ray._raylet import GcsClient
    from ray.autoscaler.v2.sdk import get_cluster_resource_state

    if _gcs is None:
        _gcs = GcsClient(ray.get_runtime_context().gcs_address)
    state = get_cluster_resource_state(_gcs)
    return float(sum(r.request.resources_bundle.get("GPU", 0.0) * r.count for r in state.pending_resource_requests))


async def _await(ref):
    return await ref
