"""The driver's fastgpu session: ``init`` / ``shutdown``, the node schedulers, and routing to them.

A session starts one node scheduler actor per GPU node (``fastgpu_ray.node_scheduler``) and routes each
subtask to one of them (``fastgpu_ray.routing.Router``, fed with the schedulers' reports). No single
process carries every call or result: the driver talks to each node directly, and each result is the
return value of its node's scheduler, stored on that node.
"""
from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import ray

from placement import Snapshot, registry

from .demand import build_demand
from .errors import NotInitializedError
from .gpu_sources import DEFAULT_EMULATED_MEMORY_MIB
from .options import TaskOptions, is_number, parse_memory_mib
from .routing import Route, Router
from .wire import Payload, RouteInfo

log = logging.getLogger("fastgpu.session")

REPORT_PERIOD_S = 0.5  # the node schedulers' reports are re-read at most this often (on submit)
NODES_PERIOD_S = 2.0  # Ray's node list (new or dead GPU nodes) is re-read at most this often
REPORT_TIMEOUT_S = 2.0
KEEP_REFS = 100_000  # ref -> subtask entries kept for explain (bounded; the oldest are forgotten)


@dataclass
class Session:
    id: str
    started_ray: bool
    policy: str
    scheduler_args: tuple  # (policy, idle_timeout_s, emulated memory MiB, force emulation, job weight)
    router: Router
    schedulers: dict = field(default_factory=dict)  # node id -> NodeScheduler handle (home node)
    live: dict = field(default_factory=dict)  # node id -> its live NodeSpec (last report)
    refs: OrderedDict = field(default_factory=OrderedDict)  # ref hex -> (subtask id, node)
    fn_refs: dict = field(default_factory=dict)  # function key -> ObjectRef of its cloudpickle
    gpu_nodes: list = field(default_factory=list)
    never: int = 0  # subtasks failed at submit: no GPU could ever hold them (counted as failed in status)
    _reported: float = 0.0
    _synced: float = 0.0
    _asked: dict = field(default_factory=dict)  # report call -> node, not collected yet

    # ------------------------------------------------------------------------------ node schedulers
    def sync_nodes(self) -> None:
        """Start a scheduler on every live GPU node that has none; forget nodes that died."""
        from transfer import ray_hooks, runtime_hooks

        from .node_scheduler import NodeScheduler, placement_options

        self._synced = time.monotonic()
        alive = sorted(ray_hooks.gpu_node_ids())
        for node in set(self.gpu_nodes) - set(alive):
            self.router.forget_node(node)
            self.live.pop(node, None)
            runtime_hooks.runtime().node_lost(node)  # what was moving to it is gone with it
        self.gpu_nodes = alive
        new = [n for n in alive if n not in self.schedulers]
        arbiter = None
        if new and not self.schedulers:  # first start: the cluster's arbiter boots alongside the schedulers
            from .arbiter import get_arbiter

            arbiter = get_arbiter()
        for node in new:
            self.schedulers[node] = NodeScheduler.options(**placement_options(self.id, node, alive)).remote(
                self.id, node, *self.scheduler_args, alive)
        if new:
            ray.get([self.schedulers[n].ready.remote() for n in new])
        if arbiter is not None:  # so the first claims need not wait for it (they wait <= 2 s for its answer)
            try:
                ray.get(arbiter.version.remote(), timeout=30)
            except Exception as e:
                log.warning("fastgpu's GPU arbiter did not start (%s): this job will not share GPUs fairly", e)

    def refresh(self, force: bool = False) -> None:
        """Take the node schedulers' reports that have arrived, and ask again about every
        ``REPORT_PERIOD_S``. Never blocks the submitting caller (a busy scheduler answers late; its last
        report stands meanwhile), except ``force=True``, which waits up to ``REPORT_TIMEOUT_S``."""
        now = time.monotonic()
        if force or now - self._synced > NODES_PERIOD_S:
            self.sync_nodes()
        if self._asked and (force or now - self._reported >= REPORT_PERIOD_S / 10):
            self._collect(REPORT_TIMEOUT_S if force else 0)
        if (force or now - self._reported >= REPORT_PERIOD_S) and not self._asked:
            nodes = [n for n in self.gpu_nodes if n in self.schedulers]
            self.router.asking()
            self._asked = {self.schedulers[n].report.remote(): n for n in nodes}
            self._reported = now
            if force:
                self._collect(REPORT_TIMEOUT_S)

    def _collect(self, timeout_s: float) -> None:
        calls = list(self._asked)
        ready, _ = ray.wait(calls, num_returns=len(calls), timeout=timeout_s)
        if timeout_s == 0 and len(ready) < len(calls) and time.monotonic() - self._reported < REPORT_TIMEOUT_S:
            return  # not all in yet: keep the old view a little longer
        specs = {n: spec for n, spec in self.router.specs.items() if n in self.gpu_nodes}
        for call in ready:
            node = self._asked[call]
            try:
                rep = ray.get(call)
            except Exception:
                continue
            if rep is not None and rep[0] is not None:
                specs[node] = rep[0]
                self.live[node] = rep[1]
        self._asked = {}
        self.router.update(specs.values())

    # ------------------------------------------------------------------------------------- routing
    def route(self, sid: str, opts: TaskOptions, payload: Payload | None, count: int = 1,
              explain: bool = True) -> tuple[Route, RouteInfo]:
        """Choose the node for one subtask (``count`` > 1: a chunk of a map sharing one choice)."""
        from transfer.runtime_hooks import has_inputs, runtime

        self.refresh()
        d = build_demand(sid, opts)
        est = None
        if payload is not None and has_inputs(payload):
            est = runtime().inputs(payload)
            if est is not None:
                d = dataclasses.replace(d, **est.demand_fields())
                d = self.router.with_inputs(d, [(o.key, o.size) for o in est.objects], est.unknown)
        r = self.router.choose(d, count, explain=explain and len(self.router.specs) <= 64)
        history: tuple[str, ...] = ()
        if r.node is not None and d.input_total:
            history = (f"transfer to {r.node[:12]}: " + _transfer_line(d, est, r.node),)
            if est is not None and est.total:
                runtime().placed([payload], r.node)  # dedup + prefetch to the chosen node
        return r, RouteInfo(r.explanation, history)

    def remember(self, refs: list, sids: list[str], node: str, fn_key: str) -> None:
        hexes = [r.hex() for r in refs]
        for h, sid in zip(hexes, sids):
            self.refs[h] = (sid, node)
        while len(self.refs) > KEEP_REFS:
            self.refs.popitem(last=False)
        self.router.produced_by(hexes, node, fn_key)

    def scheduler_of(self, ref_hex: str):
        hit = self.refs.get(ref_hex)
        if hit is None:
            return None, None
        return hit[0], self.schedulers.get(hit[1])

    def workers(self) -> list[tuple[str, int, int]]:
        """(node, GPU index, pid) of every GPU worker the session's schedulers hold now."""
        out: list = []
        for part in ray.get([h.workers.remote() for h in self.schedulers.values()]):
            out.extend(part)
        return out


def _transfer_line(d, est, node: str) -> str:
    """The transfer term as explain shows it: finished inputs (bytes local, to move, from which nodes),
    then inputs still being produced (estimated bytes, on their producer's node)."""
    from transfer.runtime_hooks import runtime

    done = est.for_node(node, runtime().cost()).describe() if est is not None and est.total else ""
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
         link_bandwidth: str | float | None = None, job_weight: float = 1.0, **ray_init_kwargs: Any) -> str:
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
    """
    global _session
    if _session is not None:
        return _session.id
    registry.policy_class(policy)  # unknown policy -> ValueError naming the valid ones
    weight = _check_weight(job_weight)
    mem = parse_memory_mib(emulated_gpu_memory, "emulated_gpu_memory")
    env = None
    if link_bandwidth is not None:
        from transfer import ENV_VAR, parse_bandwidth

        env = {ENV_VAR: repr(parse_bandwidth(link_bandwidth))}  # validated here: a typo fails at init
    started = False
    if not ray.is_initialized():
        ray.init(address=address, **ray_init_kwargs)
        started = True
    from transfer import runtime_hooks

    runtime_hooks.reset(environ=env)  # the transfer model lives in the driver, which routes
    s = Session(uuid.uuid4().hex[:8], started, policy, (policy, idle_timeout_s, mem, bool(emulate), weight),
                Router(policy, cost=lambda: runtime_hooks.runtime().cost()))
    try:
        s.refresh(force=True)
    except BaseException:
        _stop(s)
        raise
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
        for h in s.schedulers.values():
            try:
                ray.kill(h, no_restart=True)
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
