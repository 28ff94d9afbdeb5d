"""The dispatcher's window on Ray: nodes and resources, monitors, GPU worker actors, worker calls."""
from __future__ import annotations

import asyncio
import logging
import time

import ray
from ray.exceptions import (ActorDiedError, ActorUnavailableError, GetTimeoutError, NodeDiedError,
                            ObjectLostError, OwnerDiedError, RayActorError, RayTaskError, WorkerCrashedError)
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..core.dispatch import BatchRejected, Outcome, SlotLost, WorkerLost
from ..core.slots import Slot, SlotPool
from ..core.telemetry import NodeInfo, NodeTelemetry, node_infos
from ..core.worker_pool import WorkerInfo
from .monitor import NAMESPACE, MonitorActor, NodeMonitor, monitor_name
from .worker import GpuWorker, Item, SlotWorker

log = logging.getLogger("fastgpu.ray")

CLAIM_TIMEOUT_S = 60.0  # a worker process may take a while to start on a loaded machine
SLOT_START_TIMEOUT_S = 30.0  # a slot process not up by then: the call runs as a thread in the lease
READ_TIMEOUT_S = 5.0
MONITOR_DEFER_S = 3.0  # the own node's monitor starts at the first claim, or this long after the first reading
_INPUT_LOST = (ObjectLostError, OwnerDiedError)
_LOST = (ActorDiedError, ActorUnavailableError, RayActorError, NodeDiedError, WorkerCrashedError) + _INPUT_LOST


def start_gpu_workers(node_id: str | None, count: int) -> list:
    """``count`` GPU workers (leases) started on ``node_id``, not waited for. ``node_id`` None: on whichever
    node Ray first finds a free GPU (pending until then: demand Ray's autoscaler sees)."""
    if node_id is None:
        return [GpuWorker.remote(None, None, NAMESPACE) for _ in range(count)]
    return [GpuWorker.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote(
        node_id, monitor_name(node_id), NAMESPACE) for _ in range(count)]


def call_args(batch, gpus: tuple[int, ...], loaded) -> tuple[list[str], list[Item], list]:
    """The arguments of one ``run_batch`` call running ``batch`` (``Subtask``s) on ``gpus``: the keys of the
    functions the process has not ``loaded`` yet, one ``Item`` per subtask, then the flat list (those
    functions' refs, then every subtask's top-level refs, which Ray resolves in the worker)."""
    fns = {st.fn_key: st.fn_ref for st in batch if st.fn_key not in loaded}
    keys = list(fns)
    items, flat = [], [fns[k] for k in keys]
    for st in batch:
        p = st.payload
        items.append(Item(st.id, st.fn_key, p.blob, len(p.refs), st.opts.work_s, st.opts.gpu_util, gpus,
                          max(st.opts.gpu_memory_mib, st.min_memory_mib)))
        flat.extend(p.refs)
    return keys, items, flat


def kill_actors(handles) -> None:
    """Kill each actor for good (no restart); one already gone is no error."""
    for h in handles:
        try:
            ray.kill(h, no_restart=True)
        except Exception:
            pass


def available(node_id: str, resource: str) -> float:
    """How much of ``resource`` (``"GPU"``, ``"CPU"``) Ray shows available on ``node_id`` now."""
    return float(ray._private.state.available_resources_per_node().get(node_id, {}).get(resource, 0.0))


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
        self._local_since: dict[str, float] = {}  # own node -> its first reading (``read``)
        self._local: dict[str, NodeMonitor] = {}
        self.slots = SlotPool(self._start_slot, self._kill_slot, self._cpus_free)
        self.running_in: dict[str, Slot] = {}  # subtask id -> the process running it

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
        """The node's monitor's reading. This scheduler's own node is read in this process (NVML, or the
        emulation's defaults: what a new monitor reports) until its monitor actor is started, at the first
        claim of GPU workers (after them: on a node just launched, Ray's prestarted worker processes go to
        the GPU workers, not to the monitor) or ``MONITOR_DEFER_S`` after the first reading; a monitor that
        already runs (another job's) is asked from the first reading, so emulated load set on it is seen."""
        try:
            if node.node_id == self.node and node.node_id not in self.monitors:
                first = self._local_since.get(node.node_id)
                if first is None:
                    self._local_since[node.node_id] = time.monotonic()
                    if not self._running_monitor(node):  # (one that runs, another job's, is asked)
                        return self._local_reading(node)
                elif time.monotonic() - first < MONITOR_DEFER_S:
                    return self._local_reading(node)
            return await asyncio.wait_for(_await(self.monitor(node).read.remote()), READ_TIMEOUT_S)
        except (asyncio.TimeoutError, GetTimeoutError):
            return None
        except _LOST:
            self.monitors.pop(node.node_id, None)
            return None

    def _running_monitor(self, node: NodeInfo) -> bool:
        """Whether ``node``'s monitor actor runs already (then it is this backend's monitor of the node)."""
        try:
            self.monitors[node.node_id] = ray.get_actor(monitor_name(node.node_id), namespace=NAMESPACE)
            return True
        except ValueError:
            return False

    def _local_reading(self, node: NodeInfo) -> NodeTelemetry:
        m = self._local.get(node.node_id)
        if m is None:
            m = self._local[node.node_id] = NodeMonitor(node.node_id, node.gpu_total, self.emulated_memory_mib,
                                                        self.force_emulation, poll=False)
        return m.read(fresh=True)

    async def claim(self, node: NodeInfo, count: int, ready, started: list | None = None) -> None:
        """Start ``count`` GPU workers on ``node`` (``started``: workers someone else started there for this
        scheduler: ``start_gpu_workers``); ``ready(worker)`` as each comes up. Workers not up within
        ``CLAIM_TIMEOUT_S`` are killed (Ray had no GPU for them after all, or the node died)."""
        handles = list(started) if started is not None else start_gpu_workers(node.node_id, count)
        self.monitor(node)  # after the workers (read): before they register their pids with it (_pids)
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
            self._pids(nid, pid)
            self.slots.add_lease(nid, w.gpu_index, h, pid)
            ready(w)

        await asyncio.gather(*(start(h) for h in handles))

    async def run(self, worker: WorkerInfo, batch) -> list[Outcome]:
        """Run ``batch`` in a slot of its GPUs (``slots.SlotPool``): the lease process if it is free, else a
        slot process of their own. Each process is sent the functions it has not loaded yet."""
        first = batch[0]
        gpus = tuple(first.record.gpus) or (worker.gpu_index,)
        try:
            slot, note = await self.slots.acquire(worker.node_id, gpus, first.opts.num_cpus, first.fn_key)
        except KeyError as e:  # the lease went back to Ray meanwhile
            raise WorkerLost(str(e)) from e
        if all(st.future is not None and st.future.done() for st in batch):  # cancelled while it started
            self.slots.release(slot)
            raise SlotLost("cancelled before its slot process was ready")
        if note or not slot.lease:
            line = note or f"ran in a slot process of its own (pid {slot.pid}, GPU {list(gpus)})"
            for st in batch:
                st.record.history.append(line)
        for st in batch:
            self.running_in[st.id] = slot
        keys, items, flat = call_args(batch, gpus, slot.fns)
        try:
            res, times = await slot.handle.run_batch.remote(keys, items, *flat)
            slot.fns.update(keys)
            for st, (cpu_s, wall_s, sharing, nbytes) in zip(batch, times):
                self.slots.observe(st.fn_key, cpu_s, wall_s, sharing)
                st.input_bytes = nbytes  # measured: what its learned run time is observed against
        except _LOST as e:
            if not slot.lease:
                if not isinstance(e, _INPUT_LOST):  # an argument lost is not the process's fault
                    self.slots.lost(slot)
                raise SlotLost(f"slot process {slot.pid} {type(e).__name__}") from e
            raise WorkerLost(type(e).__name__) from e
        except RayTaskError as e:
            raise BatchRejected(e) from e
        finally:
            self.slots.release(slot)
            for st in batch:
                self.running_in.pop(st.id, None)
        return [Outcome(True, r[1]) if r[0] == "ok" else Outcome(False, r[1], bool(r[2])) for r in res]

    async def _start_slot(self, node: str, gpus: tuple[int, ...], cpus: float) -> Slot | None:
        h = SlotWorker.options(num_cpus=cpus, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
                               ).remote(node, monitor_name(node), NAMESPACE, gpus)
        key = h._actor_id.binary()
        self.created[key] = h
        try:
            _, _, pid = await asyncio.wait_for(_await(h.info.remote()), SLOT_START_TIMEOUT_S)
        except Exception:
            log.warning("slot process for GPU %s on %s did not start", list(gpus), node[:12])
            self._kill(h)
            return None
        if key not in self.created:  # killed (shutdown) as it came up
            return None
        self._pids(node, pid)
        return Slot(h, node, gpus, cpus, pid)

    def _kill_slot(self, s: Slot) -> None:
        self._kill(s.handle)
        if s.pid:
            self._pids(s.node, s.pid, False)

    def _pids(self, node: str, pid: int, add: bool = True) -> None:
        """Tell ``node``'s monitor that ``pid`` is (or no longer is) one of fastgpu's processes."""
        m = self.monitors.get(node)
        if m is not None:
            m.register_pids.remote([pid], add)

    async def _cpus_free(self, node: str) -> float:
        return await asyncio.to_thread(available, node, "CPU")

    def stop(self, sid: str) -> bool:
        """Stop subtask ``sid`` by killing the slot process running it, where that process runs it alone
        (not the lease: that is the GPU's hold, and may run threads beside it). Its call then fails
        (``SlotLost``) and the dispatcher sees it cancelled."""
        s = self.running_in.get(sid)
        if s is None or s.lease or sum(1 for x in self.running_in.values() if x is s) != 1:
            return False
        self.slots.lost(s)
        return True

    def trim_slots(self) -> None:
        self.slots.trim()

    def processes(self) -> list[tuple[tuple[int, ...], int, bool]]:
        return self.slots.processes()

    def _kill(self, handle) -> None:
        self.created.pop(handle._actor_id.binary(), None)
        kill_actors([handle])

    def kill_all(self) -> list:
        """Kill every worker and slot process this backend created (also those still starting)."""
        self.slots.kill_all()
        hs = list(self.created.values())
        for h in hs:
            self._kill(h)
        return hs

    async def release(self, worker: WorkerInfo) -> None:
        self.slots.remove_lease(worker.node_id, worker.gpu_index)
        self._kill(worker.handle)
        self._pids(worker.node_id, worker.pid, False)

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
