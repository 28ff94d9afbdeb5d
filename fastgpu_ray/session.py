"""The driver's fastgpu session: ``init`` / ``shutdown``, the node schedulers, and routing to them.

A session starts one node scheduler actor per GPU node (``fastgpu_ray.actors.node_scheduler``) and routes each
subtask to one of them (``fastgpu_ray.core.routing.Router``, fed with the schedulers' reports). No single
process carries every call or result: the driver talks to each node directly, and each result is the
return value of its node's scheduler, stored on that node.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import math
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import ray

from placement import Snapshot, registry
from placement.durations import Estimate, duration_key

from .core import handoff
from .core.demand import build_demand
from .core.dispatch import MAX_SLOTS, SLOT_CONTEXT_MIB, check_slots
from .core.routing import Route, Router
from .core.wire import Payload, RouteInfo
from .errors import NotInitializedError
from .gpu_sources import DEFAULT_EMULATED_MEMORY_MIB
from .options import TaskOptions, is_number, parse_memory_mib

log = logging.getLogger("fastgpu.session")

REPORT_PERIOD_S = 0.5  # the node schedulers' reports are re-read at most this often (on submit)
NODES_PERIOD_S = 2.0  # Ray's node list (new or dead GPU nodes) is re-read at most this often
REPORT_TIMEOUT_S = 2.0
POLL_GAP_S = 0.005  # answers not in yet are looked for at most this often (not on every submit of a flood)
STALE_VIEW_S = 1.0  # a view older than this (a quiet session) is renewed before routing on it ...
STALE_WAIT_S = 0.25  # ... waiting at most this long for the reports (they take milliseconds when all is well)
RETIRE_S = 5.0  # autoscaling clusters: a node scheduler with nothing of its job on its node this long retires
#                (or sooner: ``Scaling.hold_idle_s``, a fifth of the autoscaler's idle timeout)
KEEP_REFS = 100_000  # ref -> subtask entries kept for explain (bounded; the oldest are forgotten)
LOBBY = "lobby"  # the "node" of a subtask that went to the session's lobby to wait for a node
COLD_DATA_WORK_S = 0.001  # routing price of unknown work that has inputs (delay scheduling, in route())
BALANCE_PERIOD_S = 0.25  # how often the driver looks for idle GPUs next to queues elsewhere (hand-offs)


@dataclass
class Session:
    id: str
    started_ray: bool
    policy: str
    scheduler_args: tuple  # (policy, idle_timeout_s, emulated memory MiB, force emulation, job weight,
    #                        (max slots per GPU, slot context MiB))
    router: Router
    transfer: Any  # the session's transfer model (transfer.runtime_hooks.RuntimeTransfer): routing's data
    schedulers: dict = field(default_factory=dict)  # node id -> NodeScheduler handle (home node)
    live: dict = field(default_factory=dict)  # node id -> its live NodeSpec (last report)
    refs: OrderedDict = field(default_factory=OrderedDict)  # ref hex -> (subtask id, node)
    fn_refs: dict = field(default_factory=dict)  # function key -> ObjectRef of its cloudpickle
    gpu_nodes: list = field(default_factory=list)
    never: int = 0  # subtasks failed at submit: no GPU could ever hold them (counted as failed in status)
    lobby: Any = None  # the lobby actor (subtasks waiting for a node), started on first use
    arbiter: Any = None
    _scaling_call: Any = None
    retired: dict = field(default_factory=dict)  # node -> None: GPU nodes whose idle scheduler retired
    lock: Any = field(default_factory=threading.RLock)  # routing vs retiring (the housekeeping thread)
    closed: Any = field(default_factory=threading.Event)
    housekeeper: Any = None  # the housekeeping thread
    _reported: float = 0.0
    _synced: float = 0.0
    _asked: dict = field(default_factory=dict)  # node -> its report call's future (holds the ref), not collected yet
    _polled: float = 0.0  # when the answers to ``_asked`` were last looked for
    queued: dict = field(default_factory=dict)  # node id -> subtasks queued there (last report)
    own: dict = field(default_factory=dict)  # node id -> NodeReport.own (other jobs share the cluster)
    handoff_bytes: dict = field(default_factory=dict)  # node id -> NodeReport.handoff_bytes (last report)
    _routed_to: dict = field(default_factory=dict)  # node -> when a subtask was last routed there
    _heard: dict = field(default_factory=dict)  # node -> when its last report that arrived was asked for
    sent: dict = field(default_factory=dict)  # node or LOBBY -> calls sent there (report, explain wait for them)
    _handing: dict = field(default_factory=dict)  # node -> (its hand_off call in flight, the receiver)
    _fed: dict = field(default_factory=dict)  # node -> when a hand-off to it last returned

    # ------------------------------------------------------------------------------ node schedulers
    def sync_nodes(self, wait: bool = True) -> None:
        """Start a scheduler on every live GPU node that has none; forget nodes that died. ``wait``: until
        the new schedulers are up (calls to one not up yet queue in Ray)."""
        from transfer import ray_hooks

        from .actors.node_scheduler import start_scheduler

        self._synced = time.monotonic()
        alive = sorted(ray_hooks.gpu_node_ids())
        for node in set(self.gpu_nodes) - set(alive):
            self.router.forget_node(node)
            self.live.pop(node, None)
            self.transfer.node_lost(node)  # what was moving to it is gone with it
        self.gpu_nodes = alive
        for node in [n for n in self.retired if n not in alive]:
            del self.retired[node]
        self._adopt_restarted()
        new = [n for n in alive if n not in self.schedulers and n not in self.retired]
        arbiter = None
        if self.arbiter is None:  # first start: the cluster's arbiter boots alongside the schedulers
            from .actors.arbiter import get_arbiter

            arbiter = self.arbiter = get_arbiter()
        for node in new:
            self.schedulers[node] = start_scheduler(self.id, node, self.scheduler_args, alive)
        if new:
            calls = [self.schedulers[n].ready.remote() for n in new]
            if wait:
                ray.get(calls)
        if arbiter is not None:  # so the first claims need not wait for it (they wait <= 2 s for its answer)
            try:
                self.router.scaling = ray.get(arbiter.scaling.remote(), timeout=30)
            except Exception as e:
                log.warning("fastgpu's GPU arbiter did not start (%s): this job will not share GPUs fairly, "
                            "nor ask the autoscaler for nodes", e)
        self._read_scaling()

    def _read_scaling(self) -> None:
        """Take the arbiter's last reading of the autoscaler if it came, and ask again (never blocks)."""
        if self._scaling_call is not None:
            ready, _ = ray.wait([self._scaling_call], timeout=0)
            if not ready:
                return
            try:
                self.router.scaling = ray.get(self._scaling_call)
            except Exception:
                pass
        self._scaling_call = self.arbiter.scaling.remote() if self.arbiter is not None else None

    def _adopt_restarted(self) -> None:
        """Retired nodes whose scheduler the lobby started again (it hands waiting work to any node):
        take that scheduler back, so that its reports reach the router and it can retire again."""
        from .actors.node_scheduler import find_scheduler

        for node in list(self.retired):
            h = find_scheduler(self.id, node)
            if h is not None:
                del self.retired[node]
                self.schedulers[node] = h

    def scheduler(self, node: str):
        """The node's scheduler; one that retired (idle, autoscaling cluster) is started again, without
        waiting for it: calls queue at the new actor until it is up."""
        h = self.schedulers.get(node)
        if h is None:
            from .actors.node_scheduler import start_scheduler

            self.retired.pop(node, None)
            h = self.schedulers[node] = start_scheduler(self.id, node, self.scheduler_args, self.gpu_nodes)
        return h

    def housekeep(self) -> None:
        """Autoscaling clusters only: retire the node schedulers whose job has had nothing on their node
        for ``RETIRE_S`` (their GPUs were already given back), so that the autoscaler may remove the node
        (Ray counts a node with any actor on it as busy). Holds the routing lock while it does: a node is
        never chosen for a subtask while its scheduler goes."""
        if not self.router.scaling.autoscaler:
            return
        if time.monotonic() - self._synced > NODES_PERIOD_S:
            with self.lock:  # new nodes, and the schedulers the lobby started while the driver was idle
                if self.closed.is_set():
                    return
                self.sync_nodes(wait=False)
        if self.lobby is not None and ray.get(self.lobby.status.remote(), timeout=5.0)[0]:
            return  # subtasks wait for nodes: the lobby is about to hand them to these schedulers
        for node, h in list(self.schedulers.items()):
            with self.lock:
                if self.closed.is_set() or self.schedulers.get(node) is not h:
                    continue
                try:  # (decides at once: the routing lock is held)
                    if not ray.get(h.retire.remote(min(RETIRE_S, self.router.scaling.hold_idle_s())), timeout=2.0):
                        continue
                except Exception:
                    continue
                self._retire(node, h)

    def _retire(self, node: str, h) -> None:
        from .actors.node_scheduler import find_scheduler

        if self.arbiter is not None:  # first, so that the arbiter sends the killed scheduler no new share
            ray.wait([self.arbiter.leave.remote(self.id, node)], timeout=1.0)
        ray.kill(h, no_restart=True)  # its monitor actor (owned by it) goes with it
        deadline = time.monotonic() + 2.0
        while find_scheduler(self.id, node) is not None and time.monotonic() < deadline:
            time.sleep(0.02)  # its name must be free before a new one may take it
        del self.schedulers[node]
        self.sent.pop(node, None)  # (a new scheduler there counts from 0)
        self.retired[node] = None
        if self.live.get(node) is not None:  # idle now: not as busy as its last projected report
            self.router.set_spec(self.live[node])
        self.transfer.node_idle(node)
        log.info("node %s: nothing of this job there; its scheduler retired (the autoscaler may remove "
                 "the node)", node[:12])

    def balance(self) -> None:
        """Delay scheduling across nodes (``fastgpu_ray.core.handoff``): where a node's report shows a GPU free
        now and another node has a queue, ask the node with the longest wait to hand over what finishes
        sooner on the free node (its GPUs taking them one after another), inputs moved. With other jobs on
        the cluster, a node's GPUs are those this job holds there (``NodeReport.own``): its queue moves
        between its own GPUs, the arbiter moves GPUs between jobs. One request per node at a time; each
        node takes part in one hand-off per report."""
        from placement import GPU_MILLI

        with self.lock:
            # (a node that has not answered since work was routed to it may have a queue: keep asking)
            unheard = any(self._heard.get(n, -1.0) < at for n, at in self._routed_to.items() if n in self.schedulers)
            if self.closed.is_set() or not (any(self.queued.values()) or unheard or self._asked):
                return  # nothing queued anywhere as last reported: no reports asked
            self.refresh()
            for node, (call, recv) in list(self._handing.items()):
                if ray.wait([call], timeout=0)[0] or node not in self.router.specs:
                    del self._handing[node]
                    self._fed[recv] = time.monotonic()
                    if log.isEnabledFor(logging.DEBUG):
                        with contextlib.suppress(Exception):
                            log.debug("node %s handed %d subtask(s) to node %s", node[:12], ray.get(call), recv[:12])
            # A node takes part in one hand-off at a time, and receives again only once a report shows what
            # it received (a stale report would show its GPUs free still: everything would go there).
            view_at = self.router.asked_at or 0.0  # when the reports in use were asked for
            engaged = ({n for n, at in self._fed.items() if at >= view_at} | set(self._handing)
                       | {recv for _, recv in self._handing.values()})
            # A node's GPUs for this job: every free one (alone on the cluster), else those it holds there
            gpus = {n: ([(g.busy_s, g.util or 0.0) for g in spec.gpus if g.milli_free >= GPU_MILLI]
                        if self.own.get(n) is None else self.own[n])
                    for n, spec in self.router.specs.items() if n in self.schedulers and n not in engaged}
            wait = {n: min((b for b, _ in g), default=math.inf) for n, g in gpus.items()
                    if g or self.own.get(n) is not None}  # (sharing: a node where it holds none gives)
            if not any(self.queued.get(n) for n in wait):
                return
            cost = self.transfer.cost()
            for donor, recv in handoff.pairs(wait, self.queued, self.own, self.handoff_bytes, cost.transfer_s):
                log.debug("asking node %s (wait %.2fs) to hand work to node %s (wait %.2fs)", donor[:12],
                          wait[donor], recv[:12], wait[recv])
                call = self.schedulers[donor].hand_off.remote(recv, self.schedulers[recv], gpus[recv],
                                                                 cost.link_bandwidth)
                self._handing[donor] = (call, recv)

    def start_housekeeping(self) -> None:
        def loop() -> None:
            beats = 0
            while not self.closed.wait(BALANCE_PERIOD_S):
                if not ray.is_initialized():  # ray.shutdown() without fastgpu.shutdown(): nothing to balance
                    return
                beats += 1
                try:
                    self.balance()
                except Exception:
                    if not ray.is_initialized():
                        return
                    log.warning("fastgpu balancing (handing queued work to idle nodes) failed; retrying",
                                exc_info=True)
                if beats % round(1.0 / BALANCE_PERIOD_S):
                    continue
                try:
                    self.housekeep()
                except Exception:
                    log.warning("fastgpu housekeeping (retiring idle node schedulers) failed; retrying",
                                exc_info=True)

        self.housekeeper = threading.Thread(target=loop, daemon=True, name=f"fastgpu-housekeeping-{self.id}")
        self.housekeeper.start()

    def to_lobby(self):
        """The session's lobby (``fastgpu_ray.actors.lobby``), started on first use, on the driver's node."""
        if self.lobby is None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            from .actors.lobby import Lobby, lobby_name
            from .actors.monitor import NAMESPACE

            here = ray.get_runtime_context().get_node_id()
            self.lobby = Lobby.options(name=lobby_name(self.id), namespace=NAMESPACE, get_if_exists=True,
                                       scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True)).remote(
                self.id, self.scheduler_args)
        return self.lobby

    def refresh(self, force: bool = False) -> None:
        """Take the node schedulers' reports that have arrived, and ask again about every
        ``REPORT_PERIOD_S``. Never blocks the submitting caller (a busy scheduler answers late; its last
        report stands meanwhile), except ``force=True``, which waits up to ``REPORT_TIMEOUT_S`` for fresh
        reports, and a view older than ``STALE_VIEW_S`` (the session was quiet: its last reports may show
        work long done, and a burst routed on them would avoid nodes that are idle now), which waits up to
        ``STALE_WAIT_S``."""
        with self.lock:
            self._refresh(force)

    def _refresh(self, force: bool) -> None:
        now = time.monotonic()
        if force or now - self._synced > NODES_PERIOD_S:
            self.sync_nodes()
        stale = now - self._reported > STALE_VIEW_S
        if stale:
            self._asked = {}  # answers to an old question are old too
        if self._asked and (force or (now - self._reported >= REPORT_PERIOD_S / 10
                                      and now - self._polled >= POLL_GAP_S)):
            self._collect(REPORT_TIMEOUT_S if force else 0)
        if (force or now - self._reported >= REPORT_PERIOD_S) and not self._asked:
            nodes = [n for n in self.gpu_nodes if n in self.schedulers]
            self.router.asking()
            # (each answer completes a future: looking for answers is a flag test, where ray.wait on
            # the calls cost ~1 ms of driver CPU each time, up to 200 times a second in a flood)
            self._asked = {n: self.schedulers[n].report.remote(self.sent.get(n, 0)).future() for n in nodes}
            self._reported = now
            if force or stale:
                self._collect(REPORT_TIMEOUT_S if force else STALE_WAIT_S)

    def _collect(self, timeout_s: float) -> None:
        self._polled = time.monotonic()
        if timeout_s > 0:
            concurrent.futures.wait(self._asked.values(), timeout=timeout_s)
        ready = [(node, f) for node, f in self._asked.items() if f.done()]
        if timeout_s == 0 and len(ready) < len(self._asked) and time.monotonic() - self._reported < REPORT_TIMEOUT_S:
            return  # not all in yet: keep the old view a little longer
        specs = {n: spec for n, spec in self.router.specs.items() if n in self.gpu_nodes}
        fresh = []
        for node, fut in ready:
            try:
                rep = fut.result()
            except Exception:
                continue
            if rep is not None and rep.projected is not None:
                specs[node] = rep.projected
                fresh.append(node)
                self.live[node] = rep.live
                self.queued[node] = rep.queued
                self.own[node] = rep.own
                self.handoff_bytes[node] = rep.handoff_bytes
                self._heard[node] = self._reported
                self.router.durations.adopt(rep.learned)
        self._asked = {}
        self.router.update(specs.values(), asked_at=self._reported, fresh=fresh)

    # ------------------------------------------------------------------------------------- routing
    def estimate(self, fn_key: str, opts: TaskOptions) -> tuple[str, Estimate]:
        """(duration key, estimated run time) of ``fn_key``'s subtasks as the driver knows it now."""
        key = duration_key(fn_key, opts.gpu_count, opts.gpu_milli, opts.work_s)
        return key, self.router.durations.estimate(key, opts.work_s)

    def route(self, sid: str, opts: TaskOptions, payload: Payload | None, count: int = 1,
              explain: bool = True, fn_key: str = "") -> tuple[Route, RouteInfo]:
        """Choose the node for one subtask (``count`` > 1: a chunk of a map sharing one choice), priced
        with its function's estimated run time (``fn_key``)."""
        from transfer.runtime_hooks import has_inputs

        self.refresh()
        d = build_demand(sid, opts, context_mib=self.slot_context_mib)
        key, work = self.estimate(fn_key, opts)
        if work.known:
            d = dataclasses.replace(d, work_s=work.seconds, work_tail_s=work.tail_s)
        est = None
        if payload is not None and has_inputs(payload):
            est = self.transfer.inputs(payload)
            if est is not None:
                d = dataclasses.replace(d, **est.demand_fields())
                d = self.router.with_inputs(d, [(o.key, o.size) for o in est.objects], est.unknown)
                if not work.known and d.input_total:
                    # Delay scheduling for a function never run: its data's node first (priced as if it
                    # took COLD_DATA_WORK_S, so a queue there looks short); if that queue turns out longer
                    # than moving the data, the node hands the subtask on (balance, fastgpu_ray.core.handoff).
                    d = dataclasses.replace(d, work_s=COLD_DATA_WORK_S)
        r = self.router.choose(d, count, explain=explain and len(self.router.specs) <= 64)
        if r.node is not None:
            self._routed_to[r.node] = time.monotonic()
        history: tuple[str, ...] = ()
        if r.node is not None and d.input_total:
            history = (f"transfer to {r.node[:12]}: " + _transfer_line(d, est, r.node, self.transfer.cost()),)
            if est is not None and est.total:
                self.transfer.placed([payload], r.node)  # dedup + prefetch to the chosen node
        learned = {key: self.router.durations.entry(key)} if work.source == "learned" else None
        return r, RouteInfo(r.explanation, history, learned, _input_bytes(payload, est))

    def remember(self, refs: list, sids: list[str], node: str, fn_key: str) -> None:
        """The refs of one call, sent to ``node`` (``LOBBY``: to wait for a node; no producer node yet)."""
        self.sent[node] = self.sent.get(node, 0) + 1
        hexes = [r.hex() for r in refs]
        for h, sid in zip(hexes, sids):
            self.refs[h] = (sid, node)
        while len(self.refs) > KEEP_REFS:
            self.refs.popitem(last=False)
        if node != LOBBY:
            self.router.produced_by(hexes, node, fn_key)

    @property
    def slot_context_mib(self) -> int:
        """GPU memory each slot process's CUDA context is charged (``init(slot_context_memory=)``)."""
        return self.scheduler_args[5][1]

    def owns(self, ref) -> bool:
        """Whether ``ref`` is the ref of one of this session's subtasks (among the last ``KEEP_REFS``)."""
        return ref.hex() in self.refs

    def scheduler_of(self, ref_hex: str):
        hit = self.refs.get(ref_hex)
        if hit is None:
            return None, None
        return hit[0], (self.lobby if hit[1] == LOBBY else self.schedulers.get(hit[1]))

    def workers(self) -> list[tuple[str, int, int]]:
        """(node, GPU index, pid) of every GPU worker (lease) the session's schedulers hold now."""
        return self._gather("workers")

    def processes(self) -> list[tuple[str, tuple[int, ...], int, bool]]:
        """(node, GPUs, pid, is the lease) of every process running the session's subtasks: each held
        GPU's lease and the slot processes started beside it (``fastgpu_ray.core.slots``)."""
        return self._gather("processes")

    def _gather(self, method: str) -> list:
        out: list = []
        with self.lock:
            calls = [getattr(h, method).remote() for h in self.schedulers.values()]
        for part in ray.get(calls):
            out.extend(part)
        return out


def _input_bytes(payload: Payload | None, est) -> int | None:
    """The bytes of ``payload``'s arguments, refs included (``RouteInfo.input_bytes``), or None where a
    ref's size is not known yet (its producer runs) or refs were not located. Refs under the inline
    threshold are not located and count nothing: too small to change a run time."""
    if payload is None:
        return None
    if payload.has_refs and (est is None or est.unknown):
        return None
    objs = () if est is None else est.objects
    return len(payload.blob) + sum(o.size for o in objs if not o.by_value)


def _transfer_line(d, est, node: str, cost) -> str:
    """The transfer term as explain shows it: finished inputs (bytes local, to move, from which nodes),
    then inputs still being produced (estimated bytes, on their producer's node)."""
    done = est.for_node(node, cost).describe() if est is not None and est.total else ""
    pending = d.input_total - (est.total if est is not None else 0)
    if pending <= 0:
        return done
    here = d.input_bytes.get(node, 0) - (est.local_bytes(node) if est is not None else 0)
    more = (f"~{pending / 2**20:.1f} MiB still being produced, ~{max(here, 0) / 2**20:.1f} MiB of it on this "
            "node (sizes learned per producer function)")
    return f"{done}; {more}" if done else more


_session: Session | None = None


def init(address: str | None = None, *, policy: str = registry.DEFAULT_POLICY, emulate: bool | None = None,
         emulated_gpu_memory: Any = DEFAULT_EMULATED_MEMORY_MIB * (1 << 20), idle_timeout_s: float = 60.0,
         link_bandwidth: str | float | None = None, job_weight: float = 1.0, scale_wait_s: float = 600.0,
         max_slots_per_gpu: int = MAX_SLOTS, slot_context_memory: Any = SLOT_CONTEXT_MIB * (1 << 20),
         **ray_init_kwargs: Any) -> str:
    """Start fastgpu on a Ray cluster; returns the session id.

    ``address``: as ``ray.init`` (None: connect to the running cluster if there is one, else start an
    embedded local Ray). If Ray is already initialised in this process, that connection is used.
    ``policy``: a placement policy name (``placement.names()``). ``emulate``: True forces emulated GPUs,
    None (default) uses NVML where it works. ``emulated_gpu_memory``: memory of each emulated GPU
    ("16GiB"; per GPU with ``fastgpu.set_emulated_gpu``). ``idle_timeout_s``: a GPU worker idle that long
    gives its GPU back to Ray. ``link_bandwidth``: the network bandwidth between nodes that the transfer
    cost uses ("1Gbit", "125MB/s", or bytes/s); default: ``FASTGPU_LINK_BANDWIDTH`` or a measurement.
    ``job_weight``: this driver's weight in the fair share of GPUs between the jobs (drivers) on the
    cluster (default 1; a job of weight 2 gets twice the GPUs of a job of weight 1 while both have work).
    ``scale_wait_s``: on an autoscaling cluster whose node types fastgpu cannot read, how long a subtask
    that no live node can take waits for the autoscaler to add one before it fails (where the types are
    known, it waits as long as a node that can hold it may still be launched).
    ``max_slots_per_gpu``: how many subtasks may run on one GPU at once, each in a process of its own
    (packed by ``gpu_memory`` or a share; default 8). ``slot_context_memory``: GPU memory each such
    process's CUDA context takes, added to what a packed subtask declares (default 512 MiB).
    """
    global _session
    if _session is not None:
        if ray.is_initialized():
            return _session.id
        _session.closed.set()  # Ray was shut down under it (ray.shutdown() alone): start a new one
        _session = None
    registry.policy_class(policy)  # unknown policy -> ValueError naming the valid ones
    weight = _check_weight(job_weight)
    if not is_number(scale_wait_s) or scale_wait_s <= 0:
        raise ValueError(f"scale_wait_s={scale_wait_s!r}: must be a positive number of seconds (how long a "
                         "subtask waits for the autoscaler when its node types are unknown; default 600)")
    mem = parse_memory_mib(emulated_gpu_memory, "emulated_gpu_memory")
    slots = (max_slots_per_gpu, parse_memory_mib(slot_context_memory, "slot_context_memory"))
    check_slots(*slots)
    env = None
    if link_bandwidth is not None:
        from transfer import ENV_VAR, parse_bandwidth

        env = {ENV_VAR: repr(parse_bandwidth(link_bandwidth))}  # validated here: a typo fails at init
    started = False
    if not ray.is_initialized():
        ray.init(address=address, **ray_init_kwargs)
        started = True
    from transfer.runtime_hooks import RuntimeTransfer

    transfer = RuntimeTransfer(environ=env)  # the session's transfer model, in the driver, which routes
    s = Session(uuid.uuid4().hex[:8], started, policy, (policy, idle_timeout_s, mem, bool(emulate), weight, slots),
                Router(policy, cost=transfer.cost, scale_wait_s=float(scale_wait_s), max_side_by_side=slots[0]),
                transfer=transfer)
    try:
        s.refresh(force=True)
    except BaseException:
        _stop(s)
        raise
    if s.router.scaling.autoscaler:  # the lobby is ready before the first subtask waits in it for a node
        ray.get(s.to_lobby().ping.remote(), timeout=60)
    s.start_housekeeping()
    _session = s
    return s.id


def _check_weight(w: Any) -> float:
    if not is_number(w) or w <= 0:
        raise ValueError(f"job_weight={w!r}: must be a positive number (the job's weight in the fair share "
                         "of GPUs between jobs; default 1)")
    return float(w)


def shutdown(timeout_s: float = 30.0) -> None:
    """Release every GPU fastgpu holds (waits until Ray has them back), stop the node schedulers, and
    stop Ray if ``init`` started it."""
    global _session
    s = _session
    if s is None:
        return
    _session = None
    _stop(s, timeout_s)


# Refs of subtasks a shut-down session had not finished (hex -> session id): passing one to a new
# session's task fails at submit with the reason, instead of an opaque "actor died" in the worker.
_orphans: OrderedDict = OrderedDict()


def orphan_session(ref_hex: str) -> str | None:
    return _orphans.get(ref_hex)


def _note_orphans(s: Session) -> None:
    """Every ref of ``s`` whose subtask no scheduler reports ended (also calls still in flight)."""
    try:
        ended = set()
        for part in ray.get([h.ended.remote() for h in s.schedulers.values()], timeout=10):
            ended.update(part)
    except Exception:
        return
    for h, (sid, _) in s.refs.items():
        if sid not in ended:
            _orphans[h] = s.id
    while len(_orphans) > KEEP_REFS:
        _orphans.popitem(last=False)


def _stop(s: Session, timeout_s: float = 30.0) -> None:
    s.closed.set()  # (checked under the lock: no retirement starts after this)
    if s.housekeeper is not None:
        s.housekeeper.join(timeout=10.0)
    _note_orphans(s)
    try:
        before = ray.available_resources().get("GPU", 0.0)
        calls = [h.shutdown.remote() for h in s.schedulers.values()]
        ready, _ = ray.wait(calls, num_returns=len(calls), timeout=timeout_s)
        held = 0
        for c in ready:  # a scheduler whose node died with no GPU node to restart on does not answer
            try:
                held += ray.get(c) or 0
            except Exception:
                pass
        total = alive_gpu_total()
        target = min(total, before + held)
        deadline = time.monotonic() + min(timeout_s, 10.0)
        while ray.available_resources().get("GPU", 0.0) < target - 1e-6 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        for h in list(s.schedulers.values()) + ([s.lobby] if s.lobby is not None else []):
            try:
                ray.kill(h, no_restart=True)
            except Exception:
                pass
        if s.arbiter is not None:
            try:
                s.arbiter.leave.remote(s.id)  # also drops what its lobby asked the autoscaler for
            except Exception:
                pass
        if s.started_ray:
            ray.shutdown()


def alive_gpu_total() -> float:
    """GPUs of the live nodes (``ray.cluster_resources`` still counts a node that just died)."""
    return sum(n.get("Resources", {}).get("GPU", 0.0) for n in ray.nodes() if n.get("Alive"))


def cluster_snapshot() -> Snapshot:
    """The live GPU nodes as a placement Snapshot (needs ``fastgpu.init()``; readings are <= ~1 s old): the
    node schedulers' last reports, without the projection of queued work."""
    s = current()
    s.refresh(force=True)
    return Snapshot(tuple(s.live[n] for n in sorted(s.live) if s.live[n] is not None))


def current() -> Session:
    if _session is None:
        raise NotInitializedError("fastgpu is not initialised in this process: call fastgpu.init() first")
    return _session


def is_initialized() -> bool:
    return _session is not None
