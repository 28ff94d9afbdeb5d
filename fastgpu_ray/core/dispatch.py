"""A node's scheduling core, without Ray: queue -> place on a live snapshot -> run on a GPU worker -> retry.

``DispatchCore`` runs inside a node scheduler actor (``fastgpu_ray.actors.node_scheduler``) on an asyncio loop; all
Ray calls go through a small ``Backend`` (``fastgpu_ray.actors.ray_backend``), so unit tests drive it with a fake.
It composes four objects, one per job: the queue (``placement.queue.ShapeQueue``, plus the subtasks waiting
for their inputs), the GPU workers it holds (``worker_pool.WorkerPool``), what runs on their GPUs
(``reservations.Reservations``: shares, memory, estimated ends) and the explain records
(``records.RecordBook``); the core decides, they keep the books.

Contract:
* ``submit(subtask)`` enqueues and resolves to the subtask's ``Outcome`` (value or error), exactly once.
* The queue is ordered by priority (higher first), then age; among the queued subtasks of the highest
  priority present, the one with the shortest estimated run goes first (best match; waiting ages a
  subtask); the queue discipline is ``placement.queue``, shared with the dynamic trace replay. A
  subtask that fits nowhere now waits; one that no GPU could ever hold
  (``Unplaced.never``) fails at once with placement's reason (names the largest GPU).
* Durations are estimated (``placement.durations``: declared ``work_s``, else learned from this node's
  finished subtasks and the driver's, else unknown) and every running subtask has an estimated end, so
  waiting for a busy GPU is priced against starting on a loaded one.
* Placement uses ``placement.Scheduler`` with the configured policy on ``telemetry.build_snapshot``.
  Choosing a GPU fastgpu does not hold yet claims that node's available GPUs (one worker per GPU);
  the subtask is placed again once the workers exist.
* Small subtasks with the same shape are sent to one worker in one call (a batch); the batch shares one
  placement decision.
* Subtasks packed on one GPU run in separate processes (the backend's slots, ``fastgpu_ray.core.slots``): at
  most ``max_slots`` calls at once per GPU, and each packed subtask that declares memory also reserves
  ``slot_context_mib`` for its process's CUDA context.
* A worker or node that dies: its subtasks are re-placed (``retries`` + 1, up to ``max_retries``), its GPU
  reservations are dropped. A GPU out-of-memory error: re-placed asking for more free memory than the GPU
  it failed on had. Any other error is the subtask's result.
"""
from __future__ import annotations

import asyncio
import dataclasses
import heapq
import math
import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Protocol

from placement import GPU_MILLI, ClusterState, Demand, Explanation, NodeSpec, Scheduler, Snapshot, registry
from placement.cost import CostModel, slowdown
from placement.queue import Holds, Scan, ShapeQueue, best_first
from placement.durations import DurationModel, Estimate, duration_key, with_elapsed

from ..options import TaskOptions
from .demand import build_demand
from .records import KEEP_RECORDS, Record, RecordBook
from .reservations import Reservations
from .share_book import Share
from .live_state import LiveState
from .telemetry import NodeInfo, NodeTelemetry, build_snapshot, gpu_spec, readings_of, split_util, taken_on
from .worker_pool import WorkerInfo, WorkerPool

log = logging.getLogger("fastgpu.dispatch")

MAX_BATCH = 32
BATCH_MAX_WORK_S = 0.05  # subtasks declaring more work than this are not batched (they benefit from placement)
RELEASE_FOR_OTHERS_S = 0.5  # an idle worker is given back this soon when other Ray work waits for a GPU
CLAIM_S = 1.0  # a GPU no one holds: about this long until a claimed worker process runs (with a warm pool)
CLAIM_BACKOFF_S = 1.0  # a claim that got nothing (Ray's view was stale) is not tried again sooner
ABOVE_CAP_GRACE_S = 1.0  # a worker that comes up above the job's (shrunk) cap may start one batch this long
FULL_ROUND_S = 1.0  # a queue whose rounds are skipped (nothing can start) is still placed this often
OOM_MARGIN_MIB = 256  # a subtask over its declaration is retried asking for its peak use plus this (or twice)
MAX_SLOTS = 8  # default cap of calls (slot processes) running at once on one GPU
SLOT_CONTEXT_MIB = 512  # default GPU memory a slot process's CUDA context takes (outside any declaration)
_COST = CostModel()  # run-time pricing only (``compute_s``); transfers are priced by the session's model


class WorkerLost(Exception):
    """The worker (or its node) died during a call; the batch did not produce results."""


class SlotLost(Exception):
    """A slot process (not the GPU's lease) died during a call: the batch is retried, the GPU kept."""


class BatchRejected(Exception):
    """The worker call failed before running anything (e.g. an argument's producer failed)."""

    def __init__(self, error: Any) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class Outcome:
    ok: bool
    value: Any = None  # the result, or the error object to hand to the caller
    oom: bool = False


class Backend(Protocol):
    def nodes(self) -> list[NodeInfo]: ...
    async def read(self, node: NodeInfo) -> NodeTelemetry | None: ...
    async def claim(self, node: NodeInfo, count: int, ready: Callable[[WorkerInfo], None]) -> None: ...
    async def run(self, worker: WorkerInfo, batch: list["Subtask"]) -> list[Outcome]: ...
    async def release(self, worker: WorkerInfo) -> None: ...
    def fail(self, message: str, exc: BaseException) -> Any: ...


@dataclass
class Subtask:
    id: str
    opts: TaskOptions
    fn_key: str
    fn_ref: Any  # forwarded to a worker that has not loaded fn_key yet
    payload: Any  # opaque to the core: what the worker needs to run it
    seq: int = 0
    enqueued: float = 0.0
    retries: int = 0
    min_memory_mib: int = 0
    fair_wait_noted: bool = False  # its history says it waited for fair share (said once)
    placed_once: bool = False  # a round placed it since it was last queued (new heads always get a round)
    future: asyncio.Future | None = None
    record: Record | None = None
    # Bytes of its arguments (refs included) where known: before it runs, as the sender saw them (None: a
    # ref of unknown size); once it ran, as the worker measured them. Learned run times scale with them.
    input_bytes: int | None = None

    def demand(self, context_mib: int = 0, transfer: Any = None) -> Demand:
        return build_demand(self.id, self.opts, min_gpu_memory_mib=self.min_memory_mib,
                            payload=self.payload, context_mib=context_mib,
                            transfer=transfer)

    @property
    def duration_key(self) -> str:
        return duration_key(self.fn_key, self.opts.gpu_count, self.opts.gpu_milli, self.opts.work_s)

    def fit_key(self) -> tuple:
        """What decides where it fits (equal keys fit alike): the queue groups subtasks by it, so a round
        passes over every subtask of a shape that fits nowhere now at once (``placement.queue``)."""
        o = self.opts
        return (o.gpu_count, o.gpu_milli, o.gpu_util, o.gpu_memory_mib, self.min_memory_mib, o.gpu_types, o.num_cpus)

    def batch_key(self) -> tuple:
        return (self.fn_key, self.opts.priority) + self.fit_key()


class Metrics(Protocol):
    def queued(self, n: int) -> None: ...
    def placed(self, n: int, latency_s: float) -> None: ...
    def finished(self, ok: bool, n: int = 1) -> None: ...
    def gpu_util(self, node: str, gpu: int, util: float) -> None: ...


class NoMetrics:
    def queued(self, n): pass
    def placed(self, n, latency_s): pass
    def finished(self, ok, n=1): pass
    def gpu_util(self, node, gpu, util): pass


class DispatchCore:
    def __init__(self, backend: Backend, *, policy: str = registry.DEFAULT_POLICY, idle_timeout_s: float = 60.0,
                 telemetry_period_s: float = 1.0, max_batch: int = MAX_BATCH, metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.monotonic, keep_records: int = KEEP_RECORDS,
                 round_gap_s: float = 0.0, max_slots: int = MAX_SLOTS, slot_context_mib: int = SLOT_CONTEXT_MIB,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep, transfer: Any = None) -> None:
        """``clock`` and ``sleep``: the core's time (every wait it makes goes through ``sleep``: a replay can
        drive it on a clock of its own). ``transfer``: the transfer model (``transfer.runtime_hooks.
        RuntimeTransfer``) that locates subtasks' inputs for placement, passed in as the backend is; None
        (node schedulers: the driver chose the node by data already) prices no data."""
        registry.policy_class(policy)  # unknown names fail here, at init
        check_slots(max_slots, slot_context_mib)
        self.max_slots = max_slots
        self.slot_context_mib = slot_context_mib
        self.backend = backend
        self.transfer = transfer
        self.policy = policy
        self.idle_timeout_s = idle_timeout_s
        self.period = telemetry_period_s
        self.max_batch = max_batch
        self.metrics = metrics or NoMetrics()
        self.clock = clock
        self.sleep = sleep
        self.round_gap_s = round_gap_s
        self.nodes: list[NodeInfo] = []
        self.telemetry: dict[str, NodeTelemetry] = {}
        # The core's four jobs, each an object of its own: the queue (below), the GPU workers it holds
        # (``pool``), what runs on their GPUs (``reservations``) and the explain records (``records``).
        self.pool = WorkerPool()
        self.reservations = Reservations(max_slots)
        self.live = LiveState()  # the placement state, kept between rounds
        self.records = RecordBook(keep_records)
        self.queue = ShapeQueue(Subtask.fit_key)  # entries (-priority, seq, subtask)
        self._purge = False  # a queued subtask was cancelled since the last round
        self._full_at = -math.inf  # when a round last placed the queue (skipped ones do not)
        self.waiting: dict[str, Subtask] = {}  # subtasks waiting for their inputs (not queued yet)
        self.gpu_demand = 0.0  # GPUs Ray has requests for that it cannot place now (all jobs, ours too)
        # Fair share between jobs (fastgpu_ray.actors.arbiter): None = no arbiter, hold what Ray gives. A core
        # serving one node gets one Share for it; ``on_change`` is called when what it would report changes.
        self.share: Share | None = None
        self.share_expected_until = 0.0  # before this (clock), with no share yet, claim nothing: wait for it
        self.durations = DurationModel()  # learned run times (placement.durations)
        self.on_change: Callable[[], None] = lambda: None
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._inflight: set[asyncio.Task] = set()
        self._closed = False

    # ------------------------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Read Ray's nodes and their telemetry, then run the scheduling and refresh loops. Ray's pending GPU
        demand (which only bounds how long idle GPUs are kept) is first read by the refresh loop: a scheduler
        on a node just launched places its first subtasks without waiting for that GCS query."""
        await self.refresh(pending_demand=False)
        self._tasks = [asyncio.ensure_future(self._schedule_loop()), asyncio.ensure_future(self._refresh_loop())]

    async def shutdown(self) -> int:
        """Fail queued subtasks, release every worker; returns how many GPUs were held."""
        self._closed = True
        for t in self._tasks:
            t.cancel()
        while self.queue:
            _, _, st = self.queue.pop()
            self._resolve(st, Outcome(False, self.backend.fail("fastgpu was shut down", RuntimeError(
                "fastgpu.shutdown() was called while this subtask was queued"))))
        held = list(self.pool.workers.values())
        for w in held:
            self.pool.remove(w)
            self.reservations.close((w.node_id, w.gpu_index))
        await asyncio.gather(*(self.backend.release(w) for w in held), return_exceptions=True)
        return len(held)

    # --------------------------------------------------------------------------------------- submit
    async def submit(self, st: Subtask, *, node_choice: Explanation | None = None, history: tuple = (),
                     rerun: str | None = None, inputs_ready: Any = None) -> Outcome:
        """Queue ``st``; resolves to its outcome. ``rerun``: why this call is a re-execution (its scheduler
        restarted after a node died): it counts against the subtask's ``max_retries``. ``inputs_ready``:
        an awaitable that the subtask waits for (state "waiting for inputs", explainable) before it is
        queued, so waiting for a producer holds no GPU."""
        now = self.clock()
        early = self._admit(st, node_choice, history, rerun)
        if early is not None:
            if hasattr(inputs_ready, "close"):
                inputs_ready.close()  # never awaited: nothing to wait for
            return early
        try:
            if inputs_ready is not None:
                st.record.state = "waiting for inputs"
                self.waiting[st.id] = st
                try:
                    await inputs_ready
                finally:
                    self.waiting.pop(st.id, None)
                if self.clock() - now > 0.01:
                    st.record.history.append(f"inputs on this node after {self.clock() - now:.3f}s")
                st.enqueued = self.clock()
            self._enqueue(st)
            return await st.future
        except asyncio.CancelledError:  # ray.cancel(ref) / fastgpu.cancel: drop it, stop it if it runs
            self.cancel(st)
            raise

    async def submit_all(self, subtasks: list[Subtask], *, node_choice: Explanation | None = None,
                         history: tuple = (), rerun: str | None = None) -> list[Outcome]:
        """``submit`` for subtasks that take no ObjectRef (a map chunk), each queued at once: no asyncio task
        per subtask (a chunk of 64 made 64 of them). Cancelled, it cancels those not finished."""
        early = [self._admit(st, node_choice, history, rerun) for st in subtasks]
        waits = []
        for st, out in zip(subtasks, early):
            if out is None:
                self._enqueue(st)
                waits.append(st.future)
        try:
            await asyncio.gather(*waits)
        except asyncio.CancelledError:
            for st, out in zip(subtasks, early):
                if out is None and st.future.cancelled():
                    self.cancel(st)
            raise
        return [out if out is not None else st.future.result() for st, out in zip(subtasks, early)]

    def _admit(self, st: Subtask, node_choice: Explanation | None, history: tuple,
               rerun: str | None) -> Outcome | None:
        """What ``submit`` does before queueing: the subtask's future and record. Returns the subtask's
        outcome when it ends here (shut down; a re-run with no retries left), else None."""
        if self._closed:
            return Outcome(False, self.backend.fail("fastgpu is shut down", RuntimeError("fastgpu is shut down")))
        st.future = asyncio.get_running_loop().create_future()
        now = self.clock()
        st.enqueued = now
        st.record = Record(st.id, submitted=now, policy=self.policy, node_choice=node_choice,
                           history=list(history))
        prev = self.records.get(st.id)
        if prev is not None and prev.state == "handed off":
            # Back here: handed back by the node it was handed to, or forwarded by that node's scheduler
            # restarted here after the node died. This record replaces the one explain(ref) reads here,
            # so it keeps that one's story.
            st.record.node_choice = prev.node_choice
            st.record.history[:0] = prev.history
        self.records.add(st.record)
        if rerun is not None:
            if st.opts.max_retries < 1:
                msg = f"subtask {st.id} gave up after 0 retries: {rerun}"
                st.record.error = msg
                st.record.state = "failed"
                return Outcome(False, self.backend.fail(msg, _exhausted(msg)))
            st.retries = st.record.retries = 1
            st.record.history.append(rerun)
        return None

    def cancel(self, st: Subtask) -> None:
        """Cancel ``st``: a queued subtask is dropped (the next round skips it); a running one is stopped
        by releasing its worker when it runs alone there (its GPU comes back at once); a running one that
        shares its worker call (a batch) or its worker (packed by memory) finishes and its result is
        dropped, since stopping it would stop its neighbours."""
        if st.future is not None and not st.future.done():
            st.future.cancel()
        rec = st.record
        rec.history.append(f"cancelled while {rec.state}")
        was = rec.state
        rec.state = "cancelled"
        if was == "queued":  # (the next round takes it off: a shape set aside is not popped to find it)
            self._purge = True
        if was != "running" or rec.node is None:
            return
        key = (rec.node, rec.gpus[0]) if rec.gpus else None
        w = self.pool.get(key) if key else None
        if w is not None and self.reservations.running(key) == 1 and rec.batch_size == 1:
            self._drop_worker(w)  # the call fails with WorkerLost; _retry sees the cancelled future
            return
        stop = getattr(self.backend, "stop", None)  # packed beside others: its own process can go alone
        if stop is not None and rec.batch_size == 1 and stop(st.id):
            rec.history.append("stopped: the slot process it ran in was killed (its neighbours run on)")

    def _enqueue(self, st: Subtask) -> None:
        if self._closed:  # a retry racing shutdown(): fail it, never queue into a stopped loop
            self._resolve(st, Outcome(False, self.backend.fail("fastgpu was shut down", RuntimeError(
                f"fastgpu.shutdown() was called before subtask {st.id} could be placed again"))))
            return
        st.seq = next(self._seq)
        st.placed_once = False
        st.record.state = "queued"
        self.queue.push((-st.opts.priority, st.seq, st))
        self._wake.set()  # (the queue-depth gauge is set once per round: a Ray metric per submit is costly)

    def handed_off(self, st: Subtask, node: str, here_s: float, there_s: float) -> None:
        """``st`` (taken off the queue by ``fastgpu_ray.core.handoff.pick``) runs on ``node`` instead."""
        rec = st.record
        rec.state, rec.node = "handed off", node
        waited = self.clock() - st.enqueued
        rec.queued_s += waited
        rec.history.append(f"handed to node {node[:12]} after {waited:.3f}s queued: estimated "
                           f"to finish there in {there_s:.2f}s (inputs moved), here in {here_s:.2f}s")

    def ran_elsewhere(self, st: Subtask, there: Record | None) -> None:
        """Copy where and how a handed-off subtask ran (the other node's record) into its record here."""
        if there is None:
            return
        rec = st.record
        rec.gpus, rec.run_s, rec.explanation, rec.estimate = there.gpus, there.run_s, there.explanation, there.estimate
        rec.emulated, rec.retries = there.emulated, rec.retries + there.retries
        rec.history += [f"on {rec.node[:12] if rec.node else 'the other node'}: {h}" for h in there.history]
        if there.node:  # handed on from there: where it finally ran (that node's record says so)
            rec.node = there.node

    def finish_elsewhere(self, st: Subtask, out: Outcome) -> None:
        """The outcome of a subtask handed to another node (that node counted it)."""
        self._resolve(st, out, count=False)

    def take_back(self, st: Subtask, why: str) -> None:
        """A handed-off subtask the other node could not run: queued here again."""
        st.record.history.append(why)
        self._enqueue(st)

    def _resolve(self, st: Subtask, out: Outcome, count: bool = True) -> None:
        rec = st.record
        if st.future is not None and st.future.cancelled():
            return
        rec.state = "finished" if out.ok else "failed"
        if not out.ok and rec.error is None:
            rec.error = _short(out.value)
        if count:
            self.metrics.finished(out.ok)
        if st.future is not None and not st.future.done():
            st.future.set_result(out)

    # ------------------------------------------------------------------------------------- telemetry
    async def refresh(self, pending_demand: bool = True) -> None:
        """Re-read Ray's nodes and every node's monitor (and Ray's pending GPU demand); notice dead nodes and
        workers."""
        await self.reread_nodes()
        alive = {n.node_id for n in self.nodes if n.alive}
        for key, w in list(self.pool.workers.items()):
            if key[0] not in alive:
                self._drop_worker(w)
        asked = [n for n in self.nodes if n.alive and n.gpu_total]
        reads = await asyncio.gather(*(self.backend.read(n) for n in asked), return_exceptions=True)
        tel = {}
        for n, r in zip(asked, reads):
            if isinstance(r, NodeTelemetry):
                tel[r.node_id] = r
                for g in r.gpus:
                    self.metrics.gpu_util(r.node_id, g.index, g.util)
            elif n.node_id in self.telemetry:
                # A failed read keeps the last one: without a reading a GPU's memory would look untracked
                # (unlimited) and memory-packed subtasks could pile onto it.
                tel[n.node_id] = self.telemetry[n.node_id]
        self.telemetry = tel
        demand = getattr(self.backend, "pending_gpu_demand", None)
        if demand is not None and pending_demand:
            try:
                self.gpu_demand = await demand()
            except Exception:  # a GCS hiccup: keep the last answer
                log.debug("reading Ray's pending GPU demand failed", exc_info=True)
        self._release_idle()

    async def reread_nodes(self) -> None:
        """Ray's node list (and available resources) now, not as of the last refresh; the next round
        places on it."""
        self.nodes = sorted(await asyncio.to_thread(self.backend.nodes), key=lambda n: n.node_id)
        self._wake.set()

    async def _refresh_loop(self) -> None:
        while True:
            await self.sleep(self.period)
            try:
                await self.refresh()
            except Exception:  # a transient GCS/monitor error must not stop the loop
                log.exception("telemetry refresh failed")
            trim = getattr(self.backend, "trim_slots", None)
            if trim is not None:
                trim()
            self._wake.set()

    def snapshot(self) -> Snapshot:
        """The live cluster (GPUs Ray shows taken by others are full). A node whose GPUs are being claimed
        keeps showing them free, so the subtasks that chose it keep choosing it (and wait) instead of
        claiming more nodes. Reports, status and ``cluster_snapshot`` (training) get this plain view;
        placement (``placement_state``) sees only what the job's fair share lets it claim."""
        return build_snapshot(self.nodes, self.telemetry, self._holds())

    def busy_until(self, now: float) -> dict[tuple[str, int], float]:
        """GPUs whose running work has known estimated ends and that have no room now, with the seconds
        until they take new work: placement sees such a GPU as it will be then (``busy_s``), so a subtask
        may choose to wait for it instead of starting on a loaded GPU. A GPU held whole frees when all its
        work ends; a GPU at its call cap, or packed by memory too full for the smallest queued memory
        demand, frees a slot at its earliest end."""
        need = None
        busy = {}
        for key, ends in self.reservations.ends.items():
            h = self.reservations.holds.get(key)
            if h is None or not ends:
                continue
            whole = h.milli_used >= GPU_MILLI
            if not (whole or h.at_cap) and need is None:  # (a scan of the queue: only where it can matter)
                need = min((st.opts.gpu_memory_mib + self.slot_context_mib for _, _, st in self.queue
                            if st.opts.gpu_memory_mib), default=0)
            if not (whole or h.at_cap or (need and self._free_memory(key[0], (key[1],)) < need)):
                continue
            lefts = self.reservations.lefts(key, now)
            busy[key] = max(lefts) if whole else min(lefts)
        return busy

    def placement_state(self) -> ClusterState:
        """What a round places on: the live cluster within the job's fair share (``_within_share``), GPUs
        with known estimated ends as ``busy_until`` shows them. Kept between rounds (``LiveState``): only
        the nodes whose inputs changed are rebuilt."""
        return self.live.state(self._within_share(), self.telemetry, self._holds(), self.busy_until(self.clock()),
                               self.max_slots)

    def projected_spec(self, node: str) -> NodeSpec | None:
        """``node`` as a new arrival would find it once the work ahead of it is done: every GPU free (at its
        outside load; GPUs other Ray work holds stay full), ``busy_s`` = estimated seconds of work ahead
        on it: its running work's estimated end, then this node's queue played out over its GPUs
        (``play_queue``: estimated durations at the GPU's load). What the driver's ``Router`` chooses nodes
        with."""
        n = next((x for x in self.nodes if x.node_id == node), None)
        if n is None or not n.alive or not n.gpu_total:
            return None
        now = self.clock()
        if self.share is not None and self.share.others_held:  # other jobs' GPUs: ours in turn (fair share)
            n = dataclasses.replace(n, gpu_available=n.gpu_available + self.share.others_held)
        holds = self._holds()
        # The queue is played out only over the GPUs it can run on: a GPU other Ray work holds stays full
        # and takes none of it.
        taken = taken_on(n, self.telemetry, holds)
        usable = [g for g in range(n.gpu_total) if g not in taken]
        free = [(self.free_in(node, g, now), self.external_util(node, g)) for g in usable]
        _, until = self.play_queue(free, self.queued())
        busy = {(node, g): t for g, t in zip(usable, until)}
        return build_snapshot([n], self.telemetry, holds, busy).nodes[0]

    # -------------------------------------------------------------------------- fair share (jobs)
    def _holds(self) -> dict:
        """Every GPU this core holds (its reservations), and those being claimed (shown as held)."""
        holds = self.reservations.holds
        return {**self.pool.claim_holds(self.nodes, holds), **holds} if self.pool.claiming else holds

    def _within_share(self, nodes: list[NodeInfo] | None = None) -> list[NodeInfo]:
        """``nodes`` as this job may use them: of the GPUs it does not hold, only as many look available
        as its share lets it claim (GPUs other jobs are handing over count: a claim waits for them)."""
        nodes = self.nodes if nodes is None else nodes
        if self.share is None:
            if self.clock() < self.share_expected_until:  # the arbiter's first word is on its way
                return [dataclasses.replace(n, gpu_available=0.0) for n in nodes]
            return nodes
        out = []
        for n in nodes:
            held = self.pool.held(n.node_id)
            room = max(0, self.share.cap - held - self.pool.claiming.get(n.node_id, 0))
            out.append(dataclasses.replace(n, gpu_available=min(n.gpu_available + self.share.handing_over, room)))
        return out

    def set_share(self, share: Share | None) -> None:
        """The arbiter's word for this job on this node: give back idle workers above the cap at once."""
        self.share = share
        self._enforce_share()
        self._wake.set()

    def _enforce_share(self) -> None:
        if self.share is None:
            return
        for n in self.nodes:
            excess = self.pool.held(n.node_id) - self.share.cap
            if excess <= 0:
                continue
            now = self.clock()
            idle = sorted((w for key, w in self.pool.workers.items()
                           if key[0] == n.node_id and key in self.reservations.holds
                           and self.reservations.running(key) == 0 and w.grace_until <= now),
                          key=lambda w: w.idle_since)
            for w in idle[:excess]:  # running work is never preempted: a busy worker goes when it is done
                log.info("giving GPU %d on %s to another job (fair share: cap %d)", w.gpu_index,
                         w.node_id[:12], self.share.cap)
                self._drop_worker(w)

    def share_state(self) -> dict:
        """What this core reports to the arbiter: GPUs held (workers up) and being claimed (workers starting
        or waiting for a GPU; those beyond the cap are cancelled), running and queued subtasks, and ``want``
        = GPUs it could use now: GPUs running its work + its queued work in GPUs, at most the node's GPUs."""
        gpus = sum(n.gpu_total for n in self.nodes if n.alive)
        busy = self._busy_gpus()
        queued = 0.0
        for _, _, st in self.queue:  # stops once the node's GPUs are covered (a backlog is not summed)
            queued += gpu_fraction(st)
            if busy + queued >= gpus:
                break
        return dict(gpu_total=gpus, held=len(self.pool.workers), claiming=sum(self.pool.claiming.values()),
                    want=min(gpus, busy + math.ceil(queued - 1e-9)),
                    running=sum(h.running for h in self.reservations.holds.values()), queued=len(self.queue))

    def _busy_gpus(self) -> int:
        """GPUs whose worker is running this core's work."""
        return sum(1 for key, h in self.reservations.holds.items() if h.running > 0 and key in self.pool.workers)

    def room(self) -> float:
        """GPUs' worth of work this core could start now without queueing it: its node's GPUs (at most its
        fair-share cap) less the GPUs running its work and its queued work (the lobby hands subtasks
        waiting for a node to a core with room)."""
        gpus = sum(n.gpu_total for n in self.nodes if n.alive)
        if self.share is not None:
            gpus = min(gpus, self.share.cap)
        busy = self._busy_gpus()
        return gpus - busy - sum(gpu_fraction(st) for _, _, st in self.queue)

    def _idle_worker(self, node: str, d: Demand, chosen: int) -> WorkerInfo | None:
        """A worker of ours on ``node`` with nothing running whose GPU takes ``d`` now and is not more
        loaded from outside than the ``chosen`` GPU (placement may have chosen it to avoid that load)."""
        load = self.external_util(node, chosen) + 0.1
        for (nd, g), w in self.pool.workers.items():
            h = self.reservations.holds.get((nd, g))
            if (nd == node and w.alive and h is not None and h.running == 0 and self.fits_now(node, (g,), d)
                    and self.external_util(node, g) <= load):
                return w
        return None

    def demand(self, st: Subtask) -> Demand:
        """``st``'s placement demand; one that declares memory (it packs) also asks for its slot process's
        CUDA context (``slot_context_mib``)."""
        return st.demand(self.slot_context_mib, self.transfer)

    def estimate(self, st: Subtask) -> Estimate:
        """``st``'s work on an idle GPU: learned (here or by the driver), else declared, else unknown, raised
        to how long its function's oldest running subtask has run (``placement.durations.with_elapsed``)."""
        est = self.durations.estimate(st.duration_key, st.opts.work_s, st.input_bytes)
        if not est.known:
            runs = self.reservations.started(st.duration_key)
            if runs:  # (on an idle GPU: the elapsed time over its GPU's slowdown, as ``observe`` divides)
                now = self.clock()
                est = with_elapsed(est, max((now - t0) / load for t0, load in runs.values()))
        return est

    def relearn(self, duration_key: str) -> None:
        """Once ``duration_key``'s run time is known (learned here, or from the driver), its calls that
        started on a guess get estimated ends from it (``Reservations.relearn``)."""
        if duration_key in self.reservations.guessed:
            est = self.durations.estimate(duration_key)
            if est.source == "learned":
                self.reservations.relearn(duration_key, est.seconds)

    def _tiny(self, st: Subtask) -> bool:
        """Whether ``st`` is small enough to share a worker call with others (a batch): its estimated work
        (declared or learned) is at most ``BATCH_MAX_WORK_S``. Unknown work is not batched (a 1 s subtask
        batched with 31 others would hold one GPU for 32 s)."""
        est = self.estimate(st)
        return not est.guessed and est.seconds <= BATCH_MAX_WORK_S

    def fits_now(self, node: str, gpus: tuple[int, ...], d: Demand) -> bool:
        """Whether ``d`` fits the chosen GPUs as they are (not as they will be after running work)."""
        if not all(self.reservations.fits((node, g), d.gpu_share) for g in gpus):
            return False
        return not d.gpu_memory_mib or self._free_memory(node, gpus) >= d.gpu_memory_mib

    def can_start_now(self, d: Demand) -> bool:
        """Whether some node has ``d.num_gpus`` GPUs that take ``d`` now: held ones with room for it, or
        ones Ray shows available (a claim would start their workers). When none does, every queued
        subtask of ``d``'s shape waits, and a round need not place the rest of them one by one (a
        backlog would otherwise cost one placement per queued subtask on every round)."""
        need = max(d.num_gpus, 1)
        for n in self.nodes:
            if not n.alive or n.gpu_total < need:
                continue
            held = [g for g in range(n.gpu_total) if (n.node_id, g) in self.reservations.holds]
            free = sum(1 for g in held if self.fits_now(n.node_id, (g,), d)) + max(0, self._claimable(n))
            if free >= need:
                return True
        return False

    # ------------------------------------------------------------------------------------ scheduling
    async def _schedule_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                self.schedule_round()
            except Exception:
                log.exception("scheduling round failed")
            # Let submissions and completions in between rounds; under a flood of submissions, a short
            # gap lets them gather, so a round places (and batches) many instead of one each.
            await self.sleep(self.round_gap_s)

    def schedule_round(self) -> int:
        """Place as much of the queue as fits now; returns the number of subtasks started."""
        self._enforce_share()
        if self._purge:  # cancelled while queued: one pass, however many were cancelled
            self._purge = False
            self.queue.remove(lambda x: x[2].future is not None and x[2].future.done())
        if not self.queue:
            return 0
        heads = self.queue.shape_heads()
        if (all(st.placed_once for st in heads) and self.clock() - self._full_at < FULL_ROUND_S
                and not any(d is None or self.can_start_now(d) for d in (_safe_demand(self, st) for st in heads))):
            # Every shape's head was placed since it was queued and no GPU takes any queued shape now (none
            # can be claimed either): a round would rebuild the state and place each head only to learn
            # that again. Most rounds of a busy node are these; the next completion, arrival or new worker
            # wakes the loop again. (A head never placed gets its round: placement may find it can never
            # fit, which fails it at once, and it gets its explanation. And a full round still comes every
            # FULL_ROUND_S, for what changes without a wake-up: a GPU's memory shrinking under a head.)
            for st in heads:
                self._note_fair_wait(st)
            self.metrics.queued(len(self.queue))
            self.on_change()
            return 0
        self._full_at = self.clock()
        t0 = time.perf_counter()
        state = self.placement_state()
        pol = registry.create(self.policy)
        pol.prepare(state, [d for _, _, st in self.queue.head(16) if (d := _safe_demand(self, st))])
        sched = Scheduler(state, pol)
        slots = max(1, len(self.pool.workers))
        now = self.clock()
        scan = Scan(self.queue, best_first(self.queue, now, lambda st: self.estimate(st).seconds,
                                           lambda st: st.duration_key, lambda st: st.enqueued,
                                           pinned=lambda st: st.opts.gpu_count > 1))
        holds = Holds()  # (this round's state only: the next round rebuilds it and the waiting one holds again)
        started = 0
        try:
            for item in scan:
                st = item[2]
                if st.future is not None and st.future.done():
                    continue
                try:
                    est = self.estimate(st)
                    d = self.demand(st)
                    if est.known:  # (unknown work is priced by placement itself; a "running" lower bound is passed)
                        d = dataclasses.replace(d, work_s=est.seconds, work_tail_s=est.tail_s)
                    dec = sched.place(d, explain=True)
                    st.placed_once = True
                except Exception as e:  # this subtask fails alone, with the reason; the round goes on
                    log.exception("placing subtask %s failed", st.id)
                    self._resolve(st, Outcome(False, self.backend.fail(
                        f"fastgpu could not place subtask {st.id}: {type(e).__name__}: {e}", e)))
                    continue
                if dec.unplaced is not None:
                    st.record.explanation = dec.explanation
                    if dec.unplaced.never:
                        st.record.history.append("never fits: " + dec.unplaced.reason)
                        self._resolve(st, Outcome(False, self.backend.fail(dec.unplaced.reason,
                                                                           _never(dec.unplaced.reason))))
                    else:
                        scan.did_not_fit(item)
                        holds.did_not_fit(state, st.id, d)
                        self._note_fair_wait(st)
                    continue
                try:  # transfer (issue 4): explain line, dedup, prefetch; advisory, never loses the subtask
                    transfer_after_place(self, state, pol, st, d, dec)
                except Exception:
                    log.exception("transfer hook failed for subtask %s", st.id)
                node, gpus = state.names[dec.node], dec.gpus
                workers = [self.pool.get((node, g)) for g in gpus]
                if not all(w is not None and w.alive for w in workers):
                    spare = self._idle_worker(node, d, gpus[0]) if len(gpus) == 1 else None
                    if spare is None:
                        scan.keep(item, miss=False)  # stays bound in this round's state: no second claim
                        self._claim(node)
                        continue
                    # A worker of ours sits idle on this node: run there now rather than wait for a worker to
                    # start on the chosen GPU (a process start; under fair share the GPU may not even come).
                    st.record.history.append(f"chosen GPU {list(gpus)} has no worker yet: ran on idle GPU "
                                             f"{spare.gpu_index} of the same node")
                    gpus, workers = (spare.gpu_index,), [spare]
                if not self.fits_now(node, gpus, d):  # it chose to wait for a busy GPU (earliest finish)
                    st.record.explanation = dec.explanation
                    scan.keep(item)
                    self._note_fair_wait(st)
                    state.queue_behind(dec.node, gpus, d)
                    holds.did_not_fit(state, st.id, d, dec.node)  # (a multi-GPU one: what frees there waits for it)
                    if not self.can_start_now(d):  # no GPU takes this shape now: the rest of it waits too
                        scan.fail_shape(item)
                    continue
                batch = [st]
                if st.opts.batch and self._tiny(st) and not d.input_total:  # data: placed alone
                    size = min(self.max_batch, max(1, (len(self.queue) + len(scan.front) + 1) // (2 * slots)))
                    key = st.batch_key()
                    while (len(batch) < size and (nxt := scan.head()) is not None and nxt.batch_key() == key
                           and not has_inputs(nxt.payload)):  # followers with data: alone too
                        batch.append(scan.pop()[2])
                self._start(batch, node, gpus, d, dec.explanation, workers, est)
                started += len(batch)
                if est.seconds > BATCH_MAX_WORK_S and (scan.front or self.queue.peek() is not None):
                    # The next subtask must see this GPU as busy until an estimated end (so it can weigh
                    # waiting for it against a loaded GPU); this round's state only knows it is taken.
                    self._wake.set()
                    break
        finally:  # whatever happened, what this round took off the queue goes back
            scan.close()
        if started:
            self.metrics.placed(started, time.perf_counter() - t0)
        self.metrics.queued(len(self.queue))
        self.on_change()
        return started

    def _note_fair_wait(self, st: Subtask) -> None:
        """Say once in the subtask's history that it waits because its job is at its fair share here."""
        sh = self.share
        if sh is None or st.fair_wait_noted or sh.jobs < 2 or not self.nodes:
            return
        node = self.nodes[0].node_id
        if self.pool.held(node) + self.pool.claiming.get(node, 0) < sh.cap or sh.cap >= self.nodes[0].gpu_total:
            return
        st.fair_wait_noted = True
        st.record.history.append(f"waiting for fair share: its job may hold {sh.cap} GPU(s) on this node now "
                                 f"(its share of the cluster: {sh.share:g} GPU(s), {sh.jobs} jobs with work)")

    def _start(self, batch: list[Subtask], node: str, gpus: tuple[int, ...], d: Demand,
               expl: Explanation | None, workers: list[WorkerInfo], est: Estimate) -> None:
        now = self.clock()
        for w in workers:
            w.grace_until = 0.0
        emulated = any(r.emulated for r in self.telemetry.get(node, NodeTelemetry(node, False, ())).gpus)
        for st in batch:
            rec = st.record
            rec.state, rec.node, rec.gpus, rec.explanation = "running", node, gpus, expl
            rec.queued_s += now - st.enqueued
            rec.batch_size = len(batch)
            rec.emulated = emulated
            rec.estimate = est.describe()
            rec.history.append(f"placed on {node[:12]} GPU {list(gpus)} after {now - st.enqueued:.3f}s queued"
                               + (f" (batch of {len(batch)})" if len(batch) > 1 else ""))
        free_mib = self._free_memory(node, gpus)  # before this reservation: an OOM retry asks for more
        load = slowdown(self.external_util(node, gpus[0])) if gpus else 1.0  # (the first GPU runs it)
        work = est.seconds * len(batch)  # a batch holds one key (batch_key has the function and options)
        # (a batch runs its subtasks one after another: it reserves one subtask's share)
        self.reservations.reserve(node, gpus, d, id(batch), len(batch), batch[0].opts.gpu_util, batch[0].duration_key,
                                  now, load, [work * slowdown(self.external_util(node, g)) for g in gpus],
                                  guess=est.seconds if est.guessed else None)
        task = asyncio.ensure_future(self._execute(batch, node, gpus, d, workers, free_mib, load))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    def queued(self) -> list[Subtask]:
        """The work queued here, in queue order, then the work whose inputs are still coming (it is queued
        soon)."""
        # (entries are (rank, unique seq, subtask): tuples compare in C and never reach the subtask)
        return [st for _, _, st in sorted(self.queue)] + list(self.waiting.values())

    def play_queue(self, free: list[tuple[float, float]], subtasks: list[Subtask],
                   cost: CostModel = _COST) -> tuple[list[tuple[float, int]], list[float]]:
        """Play ``subtasks`` (in queue order) out over GPUs given as (seconds until free, outside load): each
        starts on the GPU(s) free first, as many as it asks for, which stay busy for its estimated run at
        their load times its share of a GPU (packed work shares one). Returns each subtask's estimated
        (start, GPU) (``(inf, -1)`` where there is no GPU) and each GPU's seconds until free once all have
        started. One queued subtask on a node with an idle GPU delays a new arrival by nothing, not by its
        run over the node's GPU count."""
        until = [t for t, _ in free]
        heap = [(t, i) for i, t in enumerate(until)]
        heapq.heapify(heap)
        starts = []
        runs: dict = {}  # (function, options) -> (GPUs it takes, each GPU's run time for one such subtask):
        #                  a queue of thousands holds a few kinds, and the driver asks for this twice a second
        if not until:
            return [(math.inf, -1)] * len(subtasks), until
        for st in subtasks:
            # (the subtasks of one submit call share one options object; a learned run time may scale with
            # input bytes: sizes within ~19 % of each other share one estimate)
            nb = st.input_bytes
            kind = (st.fn_key, id(st.opts), round(4 * math.log2(nb)) if nb else None)
            got = runs.get(kind)
            if got is None:
                est = self.estimate(st)
                share = gpu_fraction(st) / max(st.opts.gpu_count, 1)
                got = runs[kind] = (min(max(st.opts.gpu_count, 1), len(until)),
                                    [cost.compute_s(est.seconds, util) * share for _, util in free])
            k, run = got
            if k == 1:
                t, i = heapq.heappop(heap)
                pick = [i]
            else:  # (rare: take the k GPUs free first and rebuild the heap)
                pick = sorted(range(len(until)), key=until.__getitem__)[:k]
                t = max(until[i] for i in pick)
            for i in pick:
                until[i] = t + run[i]
            if k == 1:
                heapq.heappush(heap, (until[pick[0]], pick[0]))
            else:
                heap = [(u, i) for i, u in enumerate(until)]
                heapq.heapify(heap)
            starts.append((t, pick[0]))
        return starts, until

    def own_slots(self, node: str, now: float) -> list[tuple[int | None, float, float]] | None:
        """With other jobs on the cluster (fair share), the GPUs of ``node`` this job may run on: (GPU, est.
        seconds until free, outside load) of its live workers within its cap (those above it are going
        back), plus (None, ``CLAIM_S``, 0) for each GPU no one holds (work queued for it claims it). None
        with no other job: every GPU of the node is this job's to claim."""
        if self.share is None or self.share.jobs <= 1:
            return None
        mine = sorted(g for (nd, g), w in self.pool.workers.items() if nd == node and w.alive)[:self.share.cap]
        n = self._live_node(node)
        unheld = 0 if n is None else max(0, int(n.gpu_available + 1e-9) - self.pool.claiming.get(node, 0))
        return ([(g, self.free_in(node, g, now), self.external_util(node, g)) for g in mine]
                + [(None, CLAIM_S, 0.0)] * unheld)

    def projected_own(self, node: str, now: float) -> list[tuple[float, float]] | None:
        """``own_slots`` as a new arrival finds them (for the driver's report): each GPU's running work,
        then this node's queue played out over them (``play_queue``, as ``projected_spec`` does)."""
        own = self.own_slots(node, now)
        if not own:
            return own
        _, until = self.play_queue([(busy, util) for _, busy, util in own], self.queued())
        return [(t, util) for t, (_, _, util) in zip(until, own)]

    def _live_node(self, node: str) -> NodeInfo | None:
        return next((x for x in self.nodes if x.node_id == node and x.alive), None)

    def free_in(self, node: str, gpu: int, now: float) -> float:
        """Estimated seconds until all the work running on ``gpu`` of ``node`` is done."""
        return self.reservations.free_in((node, gpu), now)

    def external_util(self, node: str, gpu: int) -> float:
        tel = self.telemetry.get(node)
        r = next((x for x in tel.gpus if x.index == gpu), None) if tel else None
        if r is None:
            return 0.0
        return split_util(r, tel.fastgpu_pids)[1]

    def _free_memory(self, node: str, gpus: tuple[int, ...]) -> int:
        """The least free memory (MiB) among ``gpus`` of ``node``, as the snapshot shows it (0: unknown node)."""
        n = next((x for x in self.nodes if x.node_id == node), None)
        if n is None:
            return 0
        readings, pids = readings_of(self.telemetry.get(node))
        holds = self._holds()
        return min((gpu_spec(readings.get(g), holds.get((node, g)), pids).memory_free_mib
                    for g in gpus if g < n.gpu_total), default=0)

    async def _execute(self, batch, node, gpus, d, workers: list[WorkerInfo], free_mib: int,
                       load: float = 1.0) -> None:
        """Run ``batch`` on ``workers``; ``load``: the GPU's slowdown from outside load when it started (a
        finished run teaches its duration divided by it)."""
        worker = workers[0]  # a multi-GPU subtask runs in its first GPU's worker; the others are held
        t0 = self.clock()
        try:
            outs = await self.backend.run(worker, batch)
        except WorkerLost as e:
            self._unreserve(node, gpus, d, batch, workers)
            self._drop_worker(worker)
            for st in batch:
                self._retry(st, f"worker {node[:12]} GPU {list(gpus)} lost: {e}")
            return
        except SlotLost as e:  # only that process died: the GPU stays held, the next call gets a new slot
            self._unreserve(node, gpus, d, batch, workers)
            for st in batch:
                self._retry(st, f"{e} on {node[:12]} GPU {list(gpus)}; retried")
            return
        except BatchRejected as e:
            self._unreserve(node, gpus, d, batch, workers)
            if len(batch) > 1:  # one subtask's argument failed: run them one by one (nothing ran yet)
                for st in batch:
                    st.record.history.append("batch rejected before running; placed again alone")
                    st.opts = _no_batch(st.opts)
                    self._enqueue(st)
            else:
                self._resolve(batch[0], Outcome(False, e.error))
            return
        except Exception as e:  # a bug on our side: fail the batch with the reason rather than hang
            log.exception("worker call failed")
            self._unreserve(node, gpus, d, batch, workers)
            for st in batch:
                self._resolve(st, Outcome(False, self.backend.fail(f"fastgpu worker call failed: {e!r}", e)))
            return
        self._unreserve(node, gpus, d, batch, workers)
        dt = self.clock() - t0
        for st, out in zip(batch, outs):
            if out.ok:  # (a failed run teaches nothing: a function that keeps failing poisons no estimate)
                self.durations.observe(st.duration_key, dt / len(batch), load, st.input_bytes)
        self.relearn(batch[0].duration_key)
        for st, out in zip(batch, outs):
            st.record.run_s += dt / len(batch)
            if not out.ok and out.oom:
                cause = getattr(out.value, "cause", None) or out.value
                if getattr(cause, "capped", False):  # over its own declaration, capped by its slot
                    had = max(st.opts.gpu_memory_mib, st.min_memory_mib)
                    need = max(2 * had, (getattr(cause, "used_mib", None) or 0) + OOM_MARGIN_MIB)
                    st.min_memory_mib = need
                    self._retry(st, f"went over its {had} MiB of GPU memory on {node[:12]} GPU {list(gpus)} "
                                    f"(its slot caps torch there); asking for {need} MiB", out.value)
                    continue
                st.min_memory_mib = max(st.min_memory_mib, free_mib + 1)
                self._retry(st, f"out of GPU memory on {node[:12]} GPU {list(gpus)} ({free_mib} MiB free); "
                                f"asking for more than {free_mib} MiB", out.value)
            else:
                self._resolve(st, out)

    def _retry(self, st: Subtask, why: str, error: Any = None) -> None:
        if st.future is not None and st.future.cancelled():
            return  # cancelled: its worker was released on purpose
        st.record.history.append(why)
        if st.retries >= st.opts.max_retries:
            msg = f"subtask {st.id} gave up after {st.retries} retries: {why}"
            err = error if error is not None else self.backend.fail(msg, _exhausted(msg))
            st.record.error = msg
            self._resolve(st, Outcome(False, err))
            return
        st.retries += 1
        st.record.retries = st.retries
        st.enqueued = self.clock()
        self._enqueue(st)

    def _unreserve(self, node, gpus, d: Demand, batch, workers: list[WorkerInfo]) -> None:
        mine = {(node, g): w for g, w in zip(gpus, workers)}
        idle = self.reservations.release(node, gpus, d, id(batch), len(batch), batch[0].opts.gpu_util,
                                         batch[0].duration_key,
                                         lambda key: key in mine and self.pool.get(key) is mine[key])
        now = self.clock()
        for key in idle:
            mine[key].idle_since = now
        self._wake.set()
        self.on_change()

    # ------------------------------------------------------------------------------ workers (GPUs)
    def _claimable(self, n: NodeInfo) -> int:
        """GPUs of ``n`` that fastgpu does not hold and Ray shows available (within the job's fair share):
        what a claim can get."""
        n = self._within_share([n])[0]
        held, claiming = self.pool.held(n.node_id), self.pool.claiming.get(n.node_id, 0)
        return n.gpu_total - held - claiming - taken_count(n, held, claiming)

    def _claim(self, node_id: str) -> None:
        """Start workers for every GPU of ``node_id`` a claim can get now (claims may overlap: one started
        while another's workers are still starting takes only what is left)."""
        if self._closed:
            return
        n = self._live_node(node_id)
        if n is None:
            return
        count = self._claimable(n)
        if count <= 0:
            return
        self.pool.count_claim(node_id, count)
        task = asyncio.ensure_future(self._do_claim(n, count))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    def adopt(self, node_id: str, started: list) -> bool:
        """Take GPU workers that were started on ``node_id`` for this core (by the session's lobby, beside
        this scheduler's own start, so the first subtasks on a node just launched wait for one process start,
        not two in a row) as a claim in progress; as with any claim, one that comes up above the job's fair
        share runs one batch, then goes back. Returns False (nothing taken: the caller kills them) when the
        core is shut down or does not know the node."""
        n = next((x for x in self.nodes if x.node_id == node_id), None)
        if n is None or self._closed or not started:
            return False
        self.pool.count_claim(node_id, len(started))
        task = asyncio.ensure_future(self._do_claim(n, len(started), started))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        return True

    async def _do_claim(self, n: NodeInfo, count: int, started: list | None = None) -> None:
        got: list[WorkerInfo] = []
        left = [count]  # GPUs of this claim still counted in ``self.pool.claiming``

        def settle(k: int) -> None:
            k = min(k, left[0])
            left[0] -= k
            self.pool.count_claim(n.node_id, -k)

        def ready(w: WorkerInfo) -> None:
            """A worker is up: use it at once (its siblings may still be starting)."""
            got.append(w)
            settle(1)
            key = (w.node_id, w.gpu_index)
            if self._closed or self.pool.live(key):
                if not self._closed:  # Ray never gives one GPU twice; never keep two workers for one
                    log.error("GPU %s already held; releasing the new worker", key)
                asyncio.ensure_future(self.backend.release(w))
                return
            if self.share is not None and self.pool.held(w.node_id) >= self.share.cap:
                # The share shrank while it started: its process start is paid, so it runs one batch (as
                # if it had been running when the cap shrank: no preemption), then goes back.
                w.grace_until = self.clock() + ABOVE_CAP_GRACE_S
            w.idle_since = self.clock()
            self.pool.add(w)
            self.reservations.open(key)
            self._wake.set()
            self.on_change()

        try:  # Ray's view of available GPUs right now, not as of the last refresh
            fresh = {x.node_id: x for x in await asyncio.to_thread(self.backend.nodes)}
            n = fresh.get(n.node_id, n)
            if started is None:  # (workers already started hold their GPUs, or wait for them, in Ray)
                settle(count)  # what this claim may get, not counting itself
                count = min(count, self._claimable(n)) if n.alive else 0
                if count > 0:
                    self.pool.count_claim(n.node_id, count)
                    left[0] = count
            t0 = self.clock()
            if started is not None:
                await self.backend.claim(n, count, ready, started=started)
            elif count > 0:
                await self.backend.claim(n, count, ready)
            log.info("claimed %d of %d GPU(s) on %s in %.1fs", len(got), count, n.node_id[:12], self.clock() - t0)
        except Exception:
            log.exception("claiming GPUs on %s failed", n.node_id)
        try:
            await self.reread_nodes()
        finally:
            if not got:  # nothing to claim after all (Ray's view was stale): back off before trying again
                await self.sleep(CLAIM_BACKOFF_S)
            settle(left[0])
            self._wake.set()

    def _drop_worker(self, w: WorkerInfo) -> None:
        if self.pool.remove(w):  # (marks it dead either way: its late completions touch nothing)
            self.reservations.close((w.node_id, w.gpu_index))
            asyncio.ensure_future(self.backend.release(w))
            self.on_change()

    def _release_idle(self) -> None:
        """Give back workers idle with nothing queued: after ``idle_timeout_s``, or after
        ``RELEASE_FOR_OTHERS_S`` when Ray shows GPU demand it cannot place (beyond this core's own claims):
        plain Ray work waits for a GPU, so none is kept idle for later. (Ray lists only requests without
        a node constraint: another fastgpu session's node-pinned claims are not seen this way.)"""
        now = self.clock()
        others = self.gpu_demand - sum(self.pool.claiming.values()) > 0
        for key, w in list(self.pool.workers.items()):
            h = self.reservations.holds.get(key)
            idle = now - w.idle_since
            if (h is not None and h.running == 0 and not self.queue
                    and (idle > self.idle_timeout_s or (others and idle > RELEASE_FOR_OTHERS_S))):
                self._drop_worker(w)

    # ---------------------------------------------------------------------------------- inspection
    def explain(self, sid: str) -> Record | None:
        return self.records.get(sid)

    def ended(self) -> list[str]:
        """Ids of the subtasks whose records say they ended (finished, failed or cancelled)."""
        return self.records.ended()

    def queue_length(self) -> int:
        return len(self.queue)


def check_slots(max_slots: Any, context_mib: Any) -> None:
    """Bad slot settings fail at init with the reason."""
    if isinstance(max_slots, bool) or not isinstance(max_slots, int) or max_slots < 1:
        raise ValueError(f"max_slots_per_gpu={max_slots!r}: must be a whole number >= 1 (how many subtasks, "
                         f"each in its own process, may run on one GPU at once; default {MAX_SLOTS})")
    if isinstance(context_mib, bool) or not isinstance(context_mib, int) or context_mib < 0:
        raise ValueError(f"slot_context_memory={context_mib!r}: must be a memory size >= 0 (GPU memory each "
                         f"slot process's CUDA context takes; default {SLOT_CONTEXT_MIB} MiB)")


def gpu_fraction(st: Subtask) -> float:
    """GPUs' worth of a subtask: its share, or for a memory-packed one its memory over a 16 GiB GPU."""
    o = st.opts
    share = min(1.0, o.gpu_memory_mib / 16384) if o.gpu_milli <= 1 and o.gpu_memory_mib else o.gpu_milli / GPU_MILLI
    return max(share, 0.05) * max(o.gpu_count, 1)


def _safe_demand(core: DispatchCore, st: Subtask) -> Demand | None:
    """The subtask's demand, or None if it cannot be built (the placement loop then fails it alone)."""
    try:
        return core.demand(st)
    except Exception:
        return None


def has_inputs(payload: Any) -> bool:
    from transfer.runtime_hooks import has_inputs as check
    return check(payload)


def transfer_after_place(core, state, pol, st, d, dec) -> None:
    from transfer.runtime_hooks import after_place  # issue 4's hook; imports Ray's side lazily
    after_place(core, state, pol, st, d, dec)


def taken_count(n: NodeInfo, held: int, claiming: int = 0) -> int:
    from .telemetry import taken_by_others
    return taken_by_others(n, held, claiming)


def _no_batch(o: TaskOptions) -> TaskOptions:
    import dataclasses
    return dataclasses.replace(o, batch=False)


def _never(reason: str) -> BaseException:
    from ..errors import NeverFitsError
    return NeverFitsError(reason)


def _exhausted(msg: str) -> BaseException:
    from ..errors import RetriesExhaustedError
    return RetriesExhaustedError(msg)


def _short(err: Any) -> str:
    text = str(getattr(err, "cause", None) or err)
    return text if len(text) < 500 else text[:500] + "..."
