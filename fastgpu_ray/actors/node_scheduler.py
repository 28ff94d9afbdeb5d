"""The node scheduler actor: one per GPU node and fastgpu session, on that node, async, ``num_cpus=0``.

``f.remote()`` routes a subtask to a node (``fastgpu_ray.core.routing``) and calls ``submit`` on that node's
scheduler; the ref the user holds is this call's return, so the result is stored in the object store of
the node whose GPU computed it (data plane: docs/design-runtime.md). Inside, ``DispatchCore`` queues by
priority, picks the GPU, packs, batches, holds GPU worker actors and retries, for this node only.

Recovery (Ray's, not ours): the actor is created with ``max_restarts=-1`` and every call with
``max_task_retries=-1``; it may run only on GPU nodes (``label_selector`` on the node id, home node first,
the session's other GPU nodes as fallback). When its node dies Ray restarts it on another GPU node and
re-runs the calls that had not returned; a finished result whose only copy was on the dead node is
recomputed the same way when it is read (lineage reconstruction). A restarted instance away from its home
node forwards every call to the scheduler of the node it now runs on (the result still lands on the node
that computes it), and counts each call as a retry of that subtask (``max_retries`` is the budget).
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import logging
import math
from typing import Any, Awaitable, Callable

import ray

from placement.cost import CostModel

from ..cluster_status import ClusterStatus, GpuStatus
from ..core import handoff
from ..core.arrivals import EXPLAIN_WAIT_S, Arrivals
from ..core.dispatch import DispatchCore, Outcome, Subtask
from ..core.records import Record
from ..core.wire import Call, FnBox, NodeReport, Payload, RouteInfo
from ..options import TaskOptions
from .deps import DependencyWaiter
from .monitor import NAMESPACE
from .ray_backend import RayBackend, kill_actors

log = logging.getLogger("fastgpu.node")

ROUND_GAP_S = 0.002  # between scheduling rounds: a flood of submissions is placed in batches
REPORT_WAIT_S = 0.2  # a report waits at most this long for the driver's calls sent before it (arrivals)
SHARE_REPORT_GAP_S = 0.05  # reports to the arbiter: at most this often (on change) ...
SHARE_FIRST_WAIT_S = 2.0  # a new scheduler claims no GPU until the arbiter's first answer, or this long
SHARE_HEARTBEAT_S = 1.0  # ... and at least this often (the arbiter drops schedulers that fall silent)
SCALING_BEATS = 5  # the autoscaler's idle timeout (which bounds how long idle GPUs are kept) is re-read every
#                    this many heartbeats
RERUN = "re-run: its node scheduler was restarted on {here} after node {home} died"


def scheduler_name(session: str, node: str) -> str:
    return f"fastgpu-node-{session}-{node}"


def placement_options(session: str, home: str, gpu_nodes: list[str]) -> dict:
    """Actor options: on ``home``; restarted (after ``home`` dies) only on one of ``gpu_nodes``."""
    others = [n for n in gpu_nodes if n != home]
    opts = dict(name=scheduler_name(session, home), namespace=NAMESPACE, get_if_exists=True,
                label_selector={"ray.io/node-id": home})
    if others:
        opts["fallback_strategy"] = [{"label_selector": {"ray.io/node-id": "in(" + ",".join(others) + ")"}}]
    return opts


async def report_shares(changed: asyncio.Event, state: Callable[[], dict], share: Callable[[], Any],
                        send: Callable[[dict], Awaitable[bool]], on_beat: Callable[[int], Awaitable[None]]) -> None:
    """A node scheduler's share reports, for ever: each time ``changed`` is set (at most every
    ``SHARE_REPORT_GAP_S``) and at least every ``SHARE_HEARTBEAT_S``, ``send(state())`` if ``_due``
    (``send`` returns whether the arbiter got it); ``on_beat(n)`` on the n-th heartbeat. The heartbeat goes
    by the clock, not by a second without changes: a busy node changes more often than that, and the
    arbiter drops a scheduler it has not heard from for a while."""
    loop = asyncio.get_running_loop()
    last, sent_at, beats = None, -math.inf, 0
    while True:
        try:
            await asyncio.wait_for(changed.wait(), SHARE_HEARTBEAT_S)
        except asyncio.TimeoutError:
            pass
        changed.clear()
        beat = loop.time() - sent_at >= SHARE_HEARTBEAT_S
        if beat:
            beats += 1
            await on_beat(beats)
        now = state()
        if not _due(now, last, share(), beat):
            continue
        if await send(now):
            last, sent_at = now, loop.time()
        else:
            last = None
        await asyncio.sleep(SHARE_REPORT_GAP_S)


def _due(state: dict, last: dict | None, share, beat: bool) -> bool:
    """Whether a share report goes to the arbiter now: on a heartbeat (``beat``: at least a second since the
    last one, changes or not), when none went yet, or when what changes its decisions changed. ``running``
    never does (it is for ``fastgpu status``, sent with the next report), and ``queued`` only ranks jobs
    against each other, so a job alone on the cluster sends a changed backlog with its heartbeat, not
    twenty times a second (the arbiter would recompute every share for each)."""
    if beat or last is None:
        return True
    skip = ("running",) if share is not None and share.jobs > 1 else ("running", "queued")
    return any(state.get(k) != last.get(k) for k in state.keys() | last.keys() if k not in skip)


@ray.remote(num_cpus=0, max_concurrency=100_000, max_restarts=-1, max_task_retries=-1)
class NodeScheduler:
    def __init__(self, session: str, home: str, policy: str, idle_timeout_s: float, emulated_memory_mib: int,
                 force_emulation: bool, job_weight: float, slots: tuple[int, int], gpu_nodes: list[str]) -> None:
        from .metrics import RayMetrics

        logging.basicConfig(level=logging.INFO)
        ctx = ray.get_runtime_context()
        self.session, self.home, self.here = session, home, ctx.get_node_id()
        self.restarted = bool(ctx.was_current_actor_reconstructed)
        self.args = (policy, idle_timeout_s, emulated_memory_mib, force_emulation, job_weight, slots, gpu_nodes)
        self.job_weight = job_weight
        self.ray_job = ctx.get_job_id()
        self._changed = asyncio.Event()
        self._share_task = None
        self.delegate = None
        self.backend = RayBackend(emulated_memory_mib, force_emulation, node=self.here)
        self.metrics = RayMetrics(session)
        self.core = DispatchCore(self.backend, policy=policy, idle_timeout_s=idle_timeout_s, metrics=self.metrics,
                                 round_gap_s=ROUND_GAP_S, max_slots=slots[0], slot_context_mib=slots[1])
        self.deps = DependencyWaiter()
        self._started = False
        self._up = asyncio.Event()  # set once the core has started
        self._inflight = 0  # submit calls that have not returned (queued, waiting for inputs, running)
        self._arriving: set[str] = set()  # subtasks whose submit call is here but not yet recorded (startup)
        self._arrivals = Arrivals()  # the driver's calls that arrived (``Session.sent`` counts them as sent)
        self._last_busy = self.core.clock()  # when it last had a call in flight or a GPU worker
        self._retiring = False  # retire() said it may go: it takes no warm worker any more (they would outlive it)

    # ------------------------------------------------------------------------------------ lifecycle
    async def ready(self, warm: tuple = ()) -> str:
        """Start (once) and return this node's id. ``warm``: GPU workers the session's lobby started on this
        node beside this scheduler, for subtasks waiting for it (``DispatchCore.adopt``)."""
        if self.here != self.home:  # restarted away from home: the scheduler of this node does the work
            kill_actors(warm)
            if self.delegate is None:
                self.delegate = start_scheduler(self.session, self.here, self.args[:-1], self.args[-1])
                await self.delegate.ready.remote()
            return self.here
        if self._started:
            await self._up.wait()
        else:
            self._started = True
            # Claim nothing until the arbiter has answered (it does within milliseconds): a new job would
            # otherwise take every free GPU and hand most back at once. Without an answer, go on alone.
            self.core.share_expected_until = self.core.clock() + SHARE_FIRST_WAIT_S
            # The first exchange with the arbiter (a new process's first calls each way: a GCS lookup,
            # connections; up to a second on a busy head) overlaps the core's start.
            self._changed.set()
            self._share_task = asyncio.ensure_future(self._share_loop())
            try:
                await self.core.start()
                self.core.on_change = self._changed.set
                self._changed.set()
            finally:  # (calls that wait for the start go on, also after a failed one, as the first call does)
                self._up.set()
        if warm and (self._retiring or not self.core.adopt(self.here, list(warm))):
            kill_actors(warm)  # (retiring: it is about to be killed, and they would outlive it holding GPUs)
        return self.here

    def _rerun(self) -> str | None:
        return RERUN.format(here=self.here[:12], home=self.home[:12]) if self.restarted else None

    @contextlib.contextmanager
    def _counted(self, sids: tuple[str, ...] = ()):
        """Count a call in flight. Entered first, before any await: a retire() called after it sees it, and
        an explain() of its ``sids`` that overtakes it while this scheduler starts waits for their records."""
        self._inflight += 1
        self._arriving.update(sids)
        try:
            yield
        finally:
            self._inflight -= 1
            self._arriving.difference_update(sids)
            self._last_busy = self.core.clock()

    async def submit(self, call: Call):
        if call.counted:
            self._arrivals.arrived()
        with self._counted((call.sid,)):
            return await self._submit_one(call.sid, call.opts, call.fn, call.payload, call.info)

    async def _submit_one(self, sid: str, opts: TaskOptions, fn: FnBox, payload: Payload, info: RouteInfo):
        await self.ready()
        if self.delegate is not None:
            got = await asyncio.gather(self.delegate.rerun.remote(sid, opts, fn, payload, info, self._rerun()),
                                       return_exceptions=True)
            return got[0]  # a RayTaskError value is stored as this call's error, as the delegate's was
        out = await self._submit(sid, opts, fn, payload, info, self._rerun())
        return out.value  # an error value is a RayTaskError: Ray raises it from ray.get

    async def submit_many(self, sids: list[str], opts: TaskOptions, fn: FnBox, payloads: list[Payload],
                          info: RouteInfo):
        self._arrivals.arrived()  # (only the driver sends chunks)
        with self._counted(tuple(sids)):
            return await self._submit_many(sids, opts, fn, payloads, info)

    async def _submit_many(self, sids: list[str], opts: TaskOptions, fn: FnBox, payloads: list[Payload],
                           info: RouteInfo):
        await self.ready()
        if self.delegate is not None:
            return tuple(await asyncio.gather(*(self.delegate.rerun.remote(s, opts, fn, p, info, self._rerun())
                                                for s, p in zip(sids, payloads)), return_exceptions=True))
        if any(p.has_refs for p in payloads):  # (a chunk the user sized, with inputs)
            outs = await asyncio.gather(*(self._submit(s, opts, fn, p, info, self._rerun())
                                          for s, p in zip(sids, payloads)))
        else:  # a map chunk: queued at once, one await for all
            sts = [self._subtask(s, opts, fn, p, info) for s, p in zip(sids, payloads)]
            outs = await self.core.submit_all(sts, node_choice=info.node_choice, history=info.history,
                                              rerun=self._rerun())
        return tuple(o.value for o in outs)

    async def rerun(self, sid: str, opts: TaskOptions, fn: FnBox, payload: Payload, info: RouteInfo,
                    why: str | None):
        """A call forwarded by a restarted scheduler (``why`` says which node died)."""
        with self._counted():
            await self.ready()
            return (await self._submit(sid, opts, fn, payload, info, why)).value

    def retire(self, idle_s: float) -> bool:
        """Whether this scheduler may go: its job has had nothing on this node (no call in flight, no GPU
        worker held or starting) for ``idle_s``. Decides only (at once, no await): the caller kills the
        actor, with its monitor, and tells the arbiter. On an autoscaling cluster the driver retires idle
        schedulers so that the node can be removed (Ray counts a node with any actor on it as busy); it
        starts a new one when it routes work here again."""
        now = self.core.clock()
        busy = self._inflight or (self.delegate is None and (
            self.core.pool.workers or any(self.core.pool.claiming.values()) or self.core.queue))
        if busy:
            self._last_busy = now
            return False
        self._retiring = now - self._last_busy >= idle_s
        return self._retiring

    def _subtask(self, sid, opts, fn: FnBox, payload, info: RouteInfo) -> Subtask:
        """The core's subtask for one call (and what the driver learned of its function)."""
        if info.learned:  # what the driver learned from other nodes: a prior until this node has learned more
            self.core.durations.adopt(info.learned)
            for key in info.learned:
                self.core.relearn(key)
        return Subtask(sid, opts, fn.key, fn.ref, payload,
                       input_bytes=info.input_bytes if payload.has_refs else len(payload.blob))

    async def _submit(self, sid, opts, fn: FnBox, payload, info: RouteInfo, rerun):
        # Queued only once its inputs are here: waiting for a producer must not hold a GPU
        # (fastgpu_ray.actors.deps).
        refs = payload.all_refs
        st = self._subtask(sid, opts, fn, payload, info)
        return await self.core.submit(st, node_choice=info.node_choice, history=info.history, rerun=rerun,
                                      inputs_ready=self.deps.ready(refs) if refs else None)

    # ---------------------------------------------------------------------------- fair share (jobs)
    async def _share_loop(self) -> None:
        """Report this job's state on this node to the cluster's arbiter: on change (at most every
        ``SHARE_REPORT_GAP_S``) and every ``SHARE_HEARTBEAT_S``."""
        from .arbiter import get_arbiter

        arbiter, handle = None, None

        async def send(state: dict) -> bool:
            nonlocal arbiter, handle
            try:
                first = arbiter is None
                if first:
                    arbiter = get_arbiter()
                    handle = ray.get_runtime_context().current_actor
                known = await arbiter.report.remote(self.session, self.here, handle if first else None, state)
                if not known:  # the arbiter restarted: it needs this scheduler's handle again
                    await arbiter.report.remote(self.session, self.here, handle, state)
                return True
            except Exception:  # no arbiter now (it restarts): hold what Ray gives, retry on the next beat
                log.warning("fastgpu arbiter unreachable; retrying", exc_info=True)
                arbiter = None
                return False

        async def on_beat(beats: int) -> None:
            if arbiter is not None and beats % SCALING_BEATS == 1:
                await self._idle_bound(arbiter)

        await report_shares(
            self._changed,
            lambda: dict(self.core.share_state(), weight=self.job_weight, ray_job=self.ray_job, label=self.session),
            lambda: self.core.share, send, on_beat)

    async def _idle_bound(self, arbiter) -> None:
        """On an autoscaling cluster, keep an idle GPU at most ``Scaling.hold_idle_s`` (a fifth of the
        autoscaler's idle timeout), however long ``idle_timeout_s`` is: idle GPUs must not keep nodes up."""
        try:
            sc = await arbiter.scaling.remote()
        except Exception:
            return
        own = self.args[1]
        self.core.idle_timeout_s = min(own, sc.hold_idle_s()) if sc.autoscaler else own

    async def set_share(self, share) -> None:
        """The arbiter's ``Share`` for this job on this node."""
        if self.delegate is not None:
            return
        grow = self.core.share is None or share.cap > self.core.share.cap or share.handing_over
        self.core.set_share(share)
        if grow:  # GPUs may have come free: see Ray's view now, not at the next refresh
            await self.core.reread_nodes()

    def ended(self) -> list[str]:
        return [] if self.delegate is not None else self.core.ended()

    async def shutdown(self) -> int:
        if self.delegate is not None or self.here != self.home:
            return 0
        handles = list(self.backend.created.values())  # held workers and those still starting
        if self._share_task is not None:
            self._share_task.cancel()
        await self.core.shutdown()
        self.backend.kill_all()
        await asyncio.gather(*(self.backend.wait_dead(h) for h in handles), return_exceptions=True)
        for m in self.backend.monitors.values():
            try:
                ray.kill(m, no_restart=True)
            except Exception:
                pass
        try:  # the other jobs get these GPUs now, not when this scheduler's reports go stale
            from .arbiter import get_arbiter

            await get_arbiter().leave.remote(self.session, self.here)
        except Exception:
            pass
        return len(handles)

    # ---------------------------------------------------------------------------------- inspection
    async def report(self, sent: int = 0):
        """This node's ``NodeReport`` for the driver, once the ``sent`` calls the driver had sent here before
        asking have arrived (``fastgpu_ray.core.arrivals``: Ray may run the report first); None when forwarding."""
        if self.delegate is not None or not self._started:
            return None
        await self._arrivals.until(sent, REPORT_WAIT_S)
        live = self.core.snapshot()
        spec = live.nodes[0] if live.nodes else None
        return NodeReport(self.core.projected_spec(self.here), spec, self.core.durations.summary(),
                          self.core.queue_length(), self.core.projected_own(self.here, self.core.clock()),
                          handoff.largest_input(self.core, len(spec.gpus) if spec else 0))

    async def hand_off(self, node: str, target, there: list[tuple[float, float]], bandwidth: float) -> int:
        """Hand queued subtasks that would finish sooner on ``node`` (its GPUs: (seconds until free,
        outside load) each), their inputs moved at ``bandwidth`` bytes/s, to its scheduler ``target``
        (``fastgpu_ray.core.handoff``); returns how many. Each one's result comes back to this call's subtask
        (the user's ref)."""
        if self.delegate is not None or not self._started or not self.core.queue:
            return 0
        back = [x[2] for x in heapq.nlargest(handoff.scan(len(there)), self.core.queue)]
        try:
            unmoved = await asyncio.to_thread(bytes_not_on, back, node)
        except Exception:  # cannot see where the inputs are: hand nothing over
            log.debug("locating inputs for a hand-off failed", exc_info=True)
            return 0
        cost = CostModel(link_bandwidth=bandwidth)
        picked = handoff.pick(self.core, there, lambda st: cost.transfer_s(unmoved.get(st.id, math.inf)), cost)
        for st, here, there in picked:
            self.core.handed_off(st, node, here, there)
            asyncio.ensure_future(self._forward(st, node, target))
        return len(picked)

    async def _forward(self, st: Subtask, node: str, target) -> None:
        learned = self.core.durations.entry(st.duration_key)
        info = RouteInfo(None, (f"handed over by node {self.here[:12]} (its queue was longer than moving the "
                                f"inputs here)",), {st.duration_key: learned} if learned else None, st.input_bytes)
        try:
            value = await target.submit.remote(Call(st.id, st.opts, FnBox(st.fn_key, st.fn_ref), st.payload, info))
            out = Outcome(True, value)
        except ray.exceptions.RayActorError as e:  # the other node's scheduler died: run it here after all
            self.core.take_back(st, f"node {node[:12]} was lost before it returned ({type(e).__name__}): "
                                    "queued here again")
            return
        except Exception as e:  # the subtask's own error, raised there: its result here too
            out = Outcome(False, e)
        try:  # explain(ref) asks this node: tell it where and how it ran there
            self.core.ran_elsewhere(st, await target.explain.remote(st.id))
        except Exception:
            pass
        self.core.finish_elsewhere(st, out)

    async def room(self) -> tuple[str, float]:
        """(this node, GPUs' worth of work it could start now): the lobby hands waiting subtasks to nodes
        with room (``DispatchCore.room``)."""
        await self.ready()
        if self.delegate is not None:
            return await self.delegate.room.remote()
        return self.here, self.core.room()

    async def explain(self, sid: str, sent: int = 0) -> Record | None:
        """``sid``'s record, once the ``sent`` calls the driver had sent here before asking have arrived (Ray may
        run this call before them: ``fastgpu_ray.core.arrivals``)."""
        await self.ready()
        await self._arrivals.until(sent, EXPLAIN_WAIT_S)
        if self.delegate is not None:
            return await self.delegate.explain.remote(sid)
        rec = self.core.explain(sid)
        while rec is None and sid in self._arriving:  # its submit arrived first but is still behind ready()
            await asyncio.sleep(0.01)
            rec = self.core.explain(sid)
        return dataclasses.replace(rec, history=list(rec.history)) if rec else None

    async def refresh(self) -> None:
        if self.delegate is None:
            await self.core.refresh()

    def status(self) -> ClusterStatus | None:
        if self.delegate is not None:
            return None
        core = self.core
        rows = []
        for node in core.snapshot().nodes:
            if not node.alive:
                continue
            tel = core.telemetry.get(node.name)
            readings = {r.index: r for r in tel.gpus} if tel else {}
            for i, g in enumerate(node.gpus):
                r = readings.get(i)
                h = core.reservations.holds.get((node.name, i))
                rows.append(GpuStatus(
                    node=node.name, gpu=i, model=g.model, emulated=g.emulated, util=g.util,
                    memory_used_mib=r.memory_used_mib if r else None, memory_total_mib=g.memory_mib,
                    memory_reserved_mib=g.memory_reserved_mib, external_processes=g.external_processes,
                    fastgpu_running=h.running if h else 0, held=(node.name, i) in core.pool.workers,
                    temperature_c=r.temperature_c if r else None, power_w=r.power_w if r else None))
        c = self.metrics.counts
        return ClusterStatus(tuple(rows), core.queue_length(), 1, c["placed"], c["finished"], c["failed"])

    async def set_emulated(self, index: int, kw: dict) -> None:
        node = next((n for n in self.core.nodes if n.node_id == self.here), None)
        if node is None:
            await self.core.refresh()
            node = next((n for n in self.core.nodes if n.node_id == self.here), None)
        if node is None or not node.alive:
            raise ValueError(f"node {self.here!r} is not alive")
        await self.backend.set_emulated(node, index, **kw)
        await self.core.refresh()

    def workers(self) -> list[tuple[str, int, int]]:
        """(node, GPU index, pid) of every GPU worker this scheduler holds now."""
        if self.delegate is not None:
            return []
        return [(w.node_id, w.gpu_index, w.pid) for w in self.core.pool.workers.values()]

    def processes(self) -> list[tuple[str, tuple[int, ...], int, bool]]:
        """(node, GPUs, pid, is the GPU's lease) of every process that runs this scheduler's subtasks."""
        if self.delegate is not None:
            return []
        return [(self.here, g, pid, lease) for g, pid, lease in self.backend.processes()]


def start_scheduler(session: str, node: str, args: tuple, gpu_nodes: list[str]):
    """The session's scheduler on ``node`` (the named one already there, if any), not waited for: calls
    queue at it until it is up. ``args``: the session's scheduler arguments (``Session.scheduler_args``)."""
    return NodeScheduler.options(**placement_options(session, node, gpu_nodes)).remote(session, node, *args,
                                                                                      gpu_nodes)


def find_scheduler(session: str, node: str):
    """The session's scheduler on ``node`` if one is registered under its name, else None."""
    try:
        return ray.get_actor(scheduler_name(session, node), namespace=NAMESPACE)
    except ValueError:
        return None


def bytes_not_on(subtasks: list[Subtask], node: str) -> dict[str, float]:
    """Per subtask id: bytes of its inputs that are not on ``node`` (ObjectRefs located with Ray; the
    pickled arguments travel with the call). An input whose location is unknown counts as infinite."""
    refs = [r for st in subtasks for r in st.payload.all_refs]
    locs = ray.experimental.get_object_locations(refs) if refs else {}
    out = {}
    for st in subtasks:
        total = float(len(st.payload.blob))
        for r in st.payload.all_refs:
            loc = locs.get(r) or {}
            size = loc.get("object_size")
            if size is None or not loc.get("node_ids"):
                total = math.inf
                break
            if node not in loc["node_ids"]:
                total += size
        out[st.id] = total
    return out
