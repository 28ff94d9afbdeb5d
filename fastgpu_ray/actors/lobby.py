"""The session's lobby: subtasks that wait for a node, handed to the first node with room for them.

A subtask goes to the lobby when no live node can take it now and the cluster can grow
(``fastgpu_ray.core.routing``: at zero GPU nodes, a subtask larger than every live node but not than a node
type the autoscaler can launch, or a backlog beyond the busy GPUs). The lobby is one actor per session on
the driver's node, ``num_cpus=0``. It reports the GPUs its subtasks need to the arbiter, which asks Ray's
autoscaler for them (``Arbiter.wait_for_node``); as nodes come up it starts the session's scheduler there
(the same named actor the driver would start), with GPU workers for the waiting subtasks beside it (the
scheduler takes them as its claim: ``_warm_workers``), and hands each subtask, in priority order, to a node whose
scheduler has room for it (``NodeScheduler.room``), live before or launched for it: late binding, so a
backlog spreads over every node that arrives instead of piling on the first.

Early workers: for waiting subtasks that take one whole GPU (no memory share, no GPU type, no ObjectRef
arguments), the lobby also asks Ray for GPU workers placed nowhere in particular (pending actors, which
Ray's autoscaler counts as demand too). Ray starts each on the first node with a free GPU as soon as that
node registers, as it would a Ray task, while the session's scheduler there still has to be started
after the lobby sees the node. Until that scheduler is up, an early worker runs waiting subtasks itself,
one at a time, the first such subtask in priority order (``_run_early``; explain says so; a waiting
subtask that cannot run early may be passed over by one early run); then the scheduler takes it
(``NodeScheduler.ready``). One that lands on a node that was already up runs nothing itself. A subtask
that failed there for a reason a scheduler handles (out of GPU memory, the worker lost) waits again, for
a scheduler, at the cost of one of its ``max_retries``. Cancelling a subtask that runs on an early worker
does not stop the run. Measured in docs/BENCHMARKS.md (issue 10).

Cost, stated: the ref the user holds is the lobby's call, so the result of a subtask that waited here is
copied once from the node that computed it to the driver's node (a subtask routed to a live node at
submit has no such copy). Subtasks whose node types are unknown wait at most ``wait_s``, then fail with
``NeverFitsError`` saying so.
"""
from __future__ import annotations

import asyncio
import dataclasses
import heapq
import itertools
import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from ..core.arrivals import EXPLAIN_WAIT_S, Arrivals
from ..core.dispatch import gpu_fraction
from ..core.records import Record
from ..core.wire import Call, FnBox, Payload, RouteInfo
from ..errors import NeverFitsError, RetriesExhaustedError
from ..options import TaskOptions

log = logging.getLogger("fastgpu.lobby")

LOOP_S = 0.1  # waiting subtasks are matched to nodes' room this often
NODES_S = 0.1  # new GPU nodes are looked for this often while subtasks wait (a ray.nodes() call)
KEEP = 100_000  # handed subtasks remembered for explain (the oldest are forgotten)
REPORT_S = 1.0  # the arbiter hears the waiting GPUs on change and at least this often (soft state)
EARLY_MAX = 16  # early workers (module doc) pending at once
# A node's scheduler is created this long after the node is seen while early workers are pending: two
# process starts at once on a booting node slowed both (node up to first subtask 0.54-0.95 s, 0.48-0.55 s
# with the delay; the scheduler is not needed before the early workers' GPUs are busy).
SCHEDULER_DEFER_S = 0.5


@dataclass(order=True)
class _Entry:
    rank: tuple
    sid: str = field(compare=False)
    opts: TaskOptions = field(compare=False)
    fn: FnBox = field(compare=False)
    payload: Payload = field(compare=False)
    info: RouteInfo = field(compare=False)
    wait: str = field(compare=False)
    deadline: float | None = field(compare=False)
    submitted: float = field(compare=False)
    future: Any = field(compare=False, default=None)
    early: bool = field(compare=False, default=True)  # may run on an early worker (module doc)

    @property
    def gpus(self) -> float:
        return gpu_fraction(self)

    @property
    def takes_early(self) -> bool:
        """Whether an early worker may run it: one whole GPU of any type, no ObjectRef arguments (an
        input still being produced must not be waited for on a held GPU)."""
        o, p = self.opts, self.payload
        return (self.early and o.num_gpus == 1 and not o.gpu_memory_mib and not o.gpu_types
                and not p.has_refs)


@dataclass(frozen=True)
class _Ran:
    """What an early worker gave for a subtask (``Lobby._run_early``): its result (a RayTaskError value
    for its own error) and its record."""

    value: Any
    record: Record | None


def lobby_name(session: str) -> str:
    return f"fastgpu-lobby-{session}"


@ray.remote(num_cpus=0, max_concurrency=100_000)
class Lobby:
    def __init__(self, session: str, scheduler_args: tuple) -> None:
        logging.basicConfig(level=logging.INFO)
        self.session, self.args = session, scheduler_args
        self.heap: list[_Entry] = []
        self.where: OrderedDict[str, tuple[str, Any]] = OrderedDict()  # sid -> (node, scheduler) it went to
        self.waiting: dict[str, _Entry] = {}
        self.scheds: dict[str, Any] = {}  # node -> its scheduler (ready)
        self._starting: set[str] = set()  # nodes whose scheduler is being started
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._task = None
        self._nodes_at = -1e9
        self._reported: tuple = ()
        self._reported_at = -1e9
        self.handed = 0
        self._warmed = 0.0  # GPUs of warm workers started for waiting subtasks not yet handed out
        self._pending: dict[bytes, Any] = {}  # early workers (module doc) Ray has not started yet
        self._alive: set[str] = set()  # the GPU nodes up at the last look
        self.ran: OrderedDict[str, Record] = OrderedDict()  # subtasks an early worker ran (for explain)
        self._arrivals = Arrivals()  # the driver's calls that arrived (``Session.sent`` counts them as sent)
        self._arbiter = None

    # ------------------------------------------------------------------------------------ the calls
    async def submit(self, sid: str, opts: TaskOptions, fn: FnBox, payload: Payload, info: RouteInfo, wait: str,
                     wait_s: float | None):
        self._arrivals.arrived()  # (before any await: an explain waiting for this call then finds it)
        return await self._submit(sid, opts, fn, payload, info, wait, wait_s)

    async def _submit(self, sid: str, opts: TaskOptions, fn: FnBox, payload: Payload, info: RouteInfo, wait: str,
                      wait_s: float | None):
        now = time.monotonic()
        e = _Entry((-opts.priority, next(self._seq)), sid, opts, fn, payload, info, wait,
                   None if wait_s is None else now + wait_s, now, asyncio.get_running_loop().create_future())
        while True:
            heapq.heappush(self.heap, e)
            self.waiting[sid] = e
            self._kick()
            try:
                node, handle = await e.future  # raises NeverFitsError when it waited past its deadline
            finally:  # (also when the call is cancelled: it waits no more)
                if self.waiting.get(sid) is e:
                    self._drop(e)
            if isinstance(handle, _Ran):
                return handle.value
            waited = time.monotonic() - now
            # (e.opts and e.info: an early run that failed took a retry and said so: _wait_again)
            sent = dataclasses.replace(e.info, history=tuple(e.info.history) + (
                f"waited {waited:.2f}s in the lobby ({wait}); handed to node {node[:12]}",))
            got = await asyncio.gather(handle.submit.remote(Call(sid, e.opts, fn, payload, sent)), return_exceptions=True)
            if not isinstance(got[0], RayActorError):
                return got[0]  # a RayTaskError value is stored as this call's error, as the node scheduler's was
            # That scheduler retired (idle) before the call reached it: wait again, for any node.
            if self.scheds.get(node) is handle:
                del self.scheds[node]
            self.where.pop(sid, None)
            e = dataclasses.replace(e, rank=(e.rank[0], next(self._seq)),
                                    future=asyncio.get_running_loop().create_future())

    async def submit_many(self, sids: list[str], opts: TaskOptions, fn: FnBox, payloads: list[Payload],
                          info: RouteInfo, wait: str, wait_s: float | None):
        waits = [asyncio.ensure_future(self._submit(s, opts, fn, p, info, wait, wait_s))
                 for s, p in zip(sids, payloads)]
        self._arrivals.arrived()  # (after: an explain woken by it runs after these have queued their subtasks)
        got = await asyncio.gather(*waits, return_exceptions=True)
        # An exception of one subtask is that return's error (Ray raises a RayTaskError value from get).
        return tuple(RayTaskError("fastgpu", str(g), g) if isinstance(g, Exception) and not isinstance(
            g, RayTaskError) else g for g in got)

    async def explain(self, sid: str, sent: int = 0) -> Record | None:
        """``sid``'s record, once the ``sent`` calls the driver had sent here before asking have arrived (Ray may
        run this call before them: ``fastgpu_ray.core.arrivals``)."""
        await self._arrivals.until(sent, EXPLAIN_WAIT_S)
        if sid in self.ran:
            return self.ran[sid]
        if sid in self.where:
            node, h = self.where[sid]
            try:
                return await h.explain.remote(sid)
            except RayActorError:  # that scheduler left (retired when idle, or its node was removed)
                return Record(sid, state="handed over", node=node, policy="lobby", history=[
                    f"waited in the lobby; handed to node {node[:12]}, whose scheduler has since left (idle, or "
                    "its node was removed) with its record of this subtask"])
        e = self.waiting.get(sid)
        if e is None:
            return None
        return Record(sid, state="waiting for a node", submitted=e.submitted,
                      queued_s=time.monotonic() - e.submitted, history=[e.wait], node_choice=e.info.node_choice)

    def ping(self) -> bool:
        return True

    def status(self) -> tuple[int, str]:
        """(subtasks waiting for a node, what the first of them waits for)."""
        first = min(self.waiting.values(), default=None)
        return len(self.waiting), (first.wait if first is not None else "")

    # ------------------------------------------------------------------------------------ matching
    def _kick(self) -> None:
        self._wake.set()
        if self._task is None:
            self._task = asyncio.ensure_future(self._loop())

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), LOOP_S if self.waiting else REPORT_S)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                self._expire()
                if self.waiting:
                    await self._nodes()
                self._prestart()  # (after _nodes: it tells early workers which nodes were up already)
                if self.waiting:
                    await self._hand_out()
                await self._report()
            except Exception:
                log.exception("lobby round failed")

    def _expire(self) -> None:
        now = time.monotonic()
        for e in [e for e in self.waiting.values() if e.deadline is not None and now > e.deadline]:
            self._drop(e)
            if not e.future.done():
                e.future.set_exception(NeverFitsError(
                    f"subtask {e.sid} waited {now - e.submitted:.0f}s for a GPU node and none came: {e.wait}. "
                    "The autoscaler's node types could not be read (set FASTGPU_AUTOSCALING_CONFIG to its "
                    "config file on the head node), or it cannot launch such a node; raise "
                    "fastgpu.init(scale_wait_s=...) to wait longer"))

    def _drop(self, e: _Entry) -> None:
        self.waiting.pop(e.sid, None)
        self.heap = [x for x in self.heap if x is not e]
        heapq.heapify(self.heap)
        self._settle()

    def _settle(self) -> None:
        """Nothing waits: no warm worker started for a waiting subtask is still owed one (those whose
        subtasks expired, were cancelled or ran early are idle on their node's scheduler, which hands them
        out or lets them go); new waiting subtasks must not count them."""
        if not self.waiting:
            self._warmed = 0.0

    async def _nodes(self) -> None:
        """Start (or find) the session's scheduler on every GPU node that came up."""
        if time.monotonic() - self._nodes_at < NODES_S:
            return
        self._nodes_at = time.monotonic()
        from transfer.ray_hooks import gpu_node_ids

        alive = sorted(await asyncio.to_thread(gpu_node_ids))
        self._alive = set(alive)
        for n in [n for n in self.scheds if n not in alive]:
            del self.scheds[n]
        for n in alive:
            if n not in self.scheds and n not in self._starting:
                self._starting.add(n)
                asyncio.ensure_future(self._start(n, alive))

    async def _start(self, node: str, alive: list[str]) -> None:
        from .node_scheduler import start_scheduler

        t0 = time.monotonic()
        warm: list = []
        try:
            if self._pending:  # early workers are coming: the node's first process starts go to them
                await asyncio.sleep(SCHEDULER_DEFER_S)
            # (in a thread: creating a named actor with get_if_exists waits for the GCS, ~0.3 s on a
            # busy head, and early workers coming up meanwhile must be answered)
            h = await asyncio.to_thread(start_scheduler, self.session, node, self.args, alive)
            warm = await self._warm_workers(node)
            await h.ready.remote(tuple(warm))
            self.scheds[node] = h
            log.info("node %s: the session's scheduler is up after %.2fs; %d subtask(s) wait", node[:12],
                     time.monotonic() - t0, len(self.waiting))
            self._kick()
        except Exception as e:
            log.info("no scheduler on node %s yet: %s", node[:12], e)
            if warm:  # no scheduler took them: they must not hold the node's GPUs
                from .ray_backend import kill_actors

                kill_actors(warm)
                self._warmed = max(0.0, self._warmed - len(warm))
        finally:
            self._starting.discard(node)

    async def _warm_workers(self, node: str) -> list:
        """GPU workers started on ``node`` beside its new scheduler, which takes them as its claim
        (``NodeScheduler.ready``): on a node just launched the first subtasks then wait for one process
        start, not two in a row. As many as the whole GPUs the waiting subtasks need beyond what earlier
        warm starts cover, at most the GPUs Ray shows free there."""
        from .ray_backend import available, start_gpu_workers

        need = math.ceil(sum(e.gpus for e in self.waiting.values()) - self._warmed - len(self._pending) - 1e-9)
        if need <= 0:
            return []
        k = min(need, int(await asyncio.to_thread(available, node, "GPU")))
        self._warmed += max(k, 0)
        return start_gpu_workers(node, k) if k > 0 else []

    # ------------------------------------------------------------------------------- early workers
    def _prestart(self) -> None:
        """Keep one pending early worker (module doc) per waiting subtask that takes one, at most
        ``EARLY_MAX``: more are asked for, the excess is killed (a pending actor is autoscaler demand).
        Each remembers the GPU nodes that were up when it was asked for: one that lands on such a node
        runs nothing itself (the node's scheduler, with its fair share, decides there)."""
        from .ray_backend import kill_actors, start_gpu_workers

        want = min(sum(1 for e in self.waiting.values() if e.takes_early), EARLY_MAX)
        if want > len(self._pending):
            for h in start_gpu_workers(None, want - len(self._pending)):
                self._pending[h._actor_id.binary()] = h
                asyncio.ensure_future(self._drive(h, frozenset(self._alive)))
        elif want < len(self._pending):
            extra = list(self._pending)[want:]
            kill_actors([self._pending.pop(k) for k in extra])  # (each one's _drive ends: info() fails)

    async def _drive(self, h, known: frozenset) -> None:
        """One early worker: once Ray started it, it runs waiting subtasks until its node's scheduler is up
        (none where it landed on a node in ``known``), then that scheduler takes it. Killed where nothing
        waits any more, and when anything here fails."""
        from .ray_backend import kill_actors

        try:
            node, gpus, _ = await h.info.remote()
        except Exception:  # killed while pending, or it could not start
            return
        finally:
            self._pending.pop(h._actor_id.binary(), None)
        loaded: set[str] = set()
        e = None
        try:
            while self.scheds.get(node) is None:
                e = None if node in known else self._pop_early()
                if e is None:
                    if not self.waiting:
                        kill_actors([h])
                        return
                    await asyncio.sleep(LOOP_S)
                elif not await self._run_early(h, node, tuple(gpus), e, loaded):
                    kill_actors([h])  # lost, or not answering: it must not keep the GPU
                    return
            await self.scheds[node].ready.remote((h,))  # adopted (or killed by it)
        except Exception:
            log.exception("early worker on node %s failed", node[:12])
            kill_actors([h])
            if e is not None and self.ran.get(e.sid) is not None and self.ran[e.sid].state == "running":
                self._wait_again(e, "the lobby's early run failed")

    def _pop_early(self) -> _Entry | None:
        """The first waiting subtask, in priority order, that an early worker may run; taken off the wait."""
        skipped, got = [], None
        while self.heap:
            e = heapq.heappop(self.heap)
            if self.waiting.get(e.sid) is not e or e.future.done():
                continue
            if e.takes_early:
                got = e
                break
            skipped.append(e)
        for e in skipped:
            heapq.heappush(self.heap, e)
        if got is not None:
            del self.waiting[got.sid]
            self._settle()
        return got

    async def _run_early(self, h, node: str, gpus: tuple[int, ...], e: _Entry, loaded: set[str]) -> bool:
        """Run ``e`` on early worker ``h`` and resolve its call; False if the worker was lost. A subtask
        that failed for a reason a scheduler handles (out of GPU memory, the worker lost) waits again,
        for a scheduler, at the cost of one of its retries (``_wait_again``)."""
        from ..core.dispatch import Subtask
        from .ray_backend import call_args

        st = Subtask(e.sid, e.opts, e.fn.key, e.fn.ref, e.payload)
        keys, items, flat = call_args([st], gpus, loaded)
        t0 = time.monotonic()
        rec = self.ran[e.sid] = Record(
            e.sid, state="running", node=node, gpus=gpus, policy="lobby", submitted=e.submitted,
            queued_s=t0 - e.submitted, node_choice=e.info.node_choice, history=list(e.info.history) + [
                f"waited {t0 - e.submitted:.2f}s in the lobby ({e.wait})",
                f"ran on an early GPU worker on node {node[:12]} GPU {list(gpus)} (Ray placed it there as the "
                "node came up, before the session's scheduler on it was)"])
        if len(self.ran) > KEEP:
            self.ran.popitem(last=False)
        try:
            res, _ = await h.run_batch.remote(keys, items, *flat)
        except Exception as err:  # the worker (or its node) died, or does not answer
            self._wait_again(e, f"its early worker on node {node[:12]} was lost ({type(err).__name__})")
            return False
        loaded.update(keys)
        r = res[0]
        if r[0] == "err" and r[2]:
            self._wait_again(e, f"out of GPU memory on node {node[:12]} GPU {list(gpus)}", r[1])
            return True
        rec.state, rec.run_s = ("finished" if r[0] == "ok" else "failed"), time.monotonic() - t0
        if r[0] != "ok":
            rec.error = str(r[1]).strip().splitlines()[-1][:500]
        self.handed += 1
        if not e.future.done():
            e.future.set_result((node, _Ran(r[1], rec)))
        return True

    def _wait_again(self, e: _Entry, why: str, error: Any = None) -> None:
        """``e`` failed on an early worker (``why``): it waits again, for a scheduler only, with one retry
        fewer; with none left it fails (``error``: its own error value, else ``RetriesExhaustedError``)."""
        self.ran.pop(e.sid, None)
        if e.future.done():
            return
        if e.opts.max_retries < 1:
            if error is not None:
                e.future.set_result((None, _Ran(error, None)))
            else:
                e.future.set_exception(RetriesExhaustedError(
                    f"subtask {e.sid}: {why}, and it has no retries left (max_retries={e.opts.max_retries})"))
            return
        e.opts = dataclasses.replace(e.opts, max_retries=e.opts.max_retries - 1)
        e.early, e.deadline = False, None  # (a node is up: no deadline for one)
        e.info = dataclasses.replace(e.info, history=tuple(e.info.history) + (f"{why}; waits again for a scheduler",))
        heapq.heappush(self.heap, e)
        self.waiting[e.sid] = e
        self._kick()

    async def _hand_out(self) -> None:
        if not self.scheds:
            return
        nodes = list(self.scheds.items())
        got = await asyncio.gather(*(asyncio.wait_for(h.room.remote(), 2.0) for _, h in nodes),
                                   return_exceptions=True)
        for (n, h), r in zip(nodes, got):
            if isinstance(r, RayActorError) and self.scheds.get(n) is h:
                del self.scheds[n]  # retired (idle): started again by ``_nodes`` if work waits for it
        room = {n: r[1] for (n, _), r in zip(nodes, got) if isinstance(r, tuple) and n in self.scheds}
        skipped = []
        try:
            while self.heap and any(r > 1e-9 for r in room.values()):
                e = heapq.heappop(self.heap)
                if self.waiting.get(e.sid) is not e or e.future.done():
                    continue
                need = e.gpus
                fits = [n for n, r in room.items() if r >= need - 1e-9]
                if not fits:
                    skipped.append(e)
                    continue
                node = max(fits, key=lambda n: room[n])
                room[node] -= need
                self._warmed = max(0.0, self._warmed - need)
                del self.waiting[e.sid]
                self.where[e.sid] = (node, self.scheds[node])
                if len(self.where) > KEEP:
                    self.where.popitem(last=False)
                self.handed += 1
                e.future.set_result((node, self.scheds[node]))
        finally:
            for e in skipped:
                heapq.heappush(self.heap, e)
            self._settle()

    async def _report(self) -> None:
        gpus = tuple(sorted(e.gpus for e in self.waiting.values()))
        now = time.monotonic()
        if gpus == self._reported and (not gpus or now - self._reported_at < REPORT_S):
            return
        from .arbiter import get_arbiter

        self._reported, self._reported_at = gpus, now
        try:
            if self._arbiter is None:
                self._arbiter = get_arbiter()
            await self._arbiter.wait_for_node.remote(self.session, list(gpus))
        except Exception as e:
            self._arbiter = None
            log.warning("could not tell the arbiter about %d subtask(s) waiting for a node: %s", len(gpus), e)
