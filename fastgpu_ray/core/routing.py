"""The global half of scheduling: which GPU node a subtask (or a chunk of a map) goes to. No Ray here.

The driver routes each subtask to one node's scheduler (``fastgpu_ray.actors.node_scheduler``) and the ref the
user holds is the return of that scheduler's call, so the result is stored on the node that computed it.
The choice is made with the configured placement policy on a projected view of the cluster:

* every node scheduler reports its node as it will be once its running and queued work is done
  (``DispatchCore.projected_spec``: each GPU free at its outside load, ``busy_s`` = estimated seconds of
  work ahead of a new arrival), refreshed about every half second, with the run times it has learned
  (``placement.durations``; merged into ``durations``, which price the subtasks routed here); a report
  is a projection from when it was asked for, so the view ages it: ``busy_s`` counts down by the time
  since then (a report taken while an earlier burst ran must not keep a node looking busy after the burst
  is done; the error is how late a scheduler answered, milliseconds when all is well);
* between reports, each routed subtask is queued behind the GPU the policy chose
  (``ClusterState.queue_behind``), so consecutive choices spread over the cluster;
* inputs that are finished objects are located by the transfer model (``transfer``); inputs that are
  refs of fastgpu subtasks still running or queued count as being on their producer's node, with the
  size of that function's last located output (``DEFAULT_OUTPUT_BYTES`` before one is known), so a
  consumer follows its producer when waiting there is cheaper than moving the data.

The node scheduler then chooses the GPU inside its node at run time (late binding within a node).

Bursts: placing one subtask costs about a millisecond of policy scoring, more than Ray takes to submit a
task. Once more subtasks were routed since the last report than 4 per GPU (a ``.remote()`` loop, not a
handful of calls), consecutive subtasks of one shape without inputs whose work is known to be small
(declared or learned) share a placement ``LEASE`` at a time (priced as ``LEASE`` subtasks there), as a
``map`` chunk does. Smaller bursts, and subtasks with inputs or other work (unknown too), are placed one by
one.

Autoscaling (``scaling``, read from the autoscaler by the arbiter): a subtask that no live node can hold
waits for a node to be launched (``Route.wait`` says of which type) when a node type the autoscaler can
launch could hold it, and fails at once only when none could. Where the cluster can still grow, a subtask
that would queue behind busy GPUs waits too, rather than being bound now to a live node: waiting subtasks
go to the session's lobby (``fastgpu_ray.actors.lobby``), which hands each to the first node that has room for
it, live now or launched for it.
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from placement import ClusterState, Demand, Explanation, NodeSpec, Scheduler, Snapshot, registry
from placement.cost import CostModel, slowdown
from placement.durations import UNKNOWN_WORK_S, DurationModel
from placement.state import MAX_SIDE_BY_SIDE

from .scaling import Scaling

LEASE = 8  # in a burst, this many consecutive small subtasks of one shape share one placement
LEASE_MAX_WORK_S = 0.05  # only subtasks whose known work (declared or learned) is at most this share placements
DEFAULT_OUTPUT_BYTES = 8 << 20  # a pending producer's output size before one of its function's is seen
KEEP_REFS = 100_000  # producer entries kept (ref hex -> node); older ones are forgotten (bounded memory)


@dataclass(frozen=True)
class Route:
    """Where one subtask (or chunk) goes: ``node``; or ``wait`` = what it waits for in the lobby (a node
    the autoscaler launches; ``wait_s``: for at most this long, None = as long as it takes); or
    ``never`` = why no GPU, live or launchable, can ever hold it."""

    node: str | None
    explanation: Explanation | None = None
    never: str | None = None
    wait: str | None = None
    wait_s: float | None = None


class Router:
    def __init__(self, policy: str, *, keep_refs: int = KEEP_REFS, cost: Callable[[], CostModel] = CostModel,
                 scale_wait_s: float = 600.0, clock: Callable[[], float] = time.monotonic,
                 max_side_by_side: int = MAX_SIDE_BY_SIDE) -> None:
        registry.policy_class(policy)
        self.policy = policy
        self.max_side_by_side = max_side_by_side  # the session's slot cap: packed subtasks per GPU at once
        self.clock = clock
        self.asked_at: float | None = None  # when the reports in ``specs`` were asked for (None: not aged)
        self.scaling = Scaling()  # what the autoscaler can launch (set by the session from the arbiter)
        self.scale_wait_s = scale_wait_s  # how long to wait for a node when the launchable types are unknown
        self.cost = cost  # the cost model at the session's link bandwidth (read on every rebuild)
        self.keep_refs = keep_refs
        self.specs: dict[str, NodeSpec] = {}
        self.produced: OrderedDict[str, tuple[str, str]] = OrderedDict()  # ref hex -> (node, fn key)
        self.sizes: dict[str, float] = {}  # fn key -> bytes of its last located output
        self.durations = DurationModel()  # run times the node schedulers learned (merged from their reports)
        self._state: ClusterState | None = None
        self._sched: Scheduler | None = None
        self._leases: dict[tuple, list] = {}  # shape key -> [route, subtasks left on it]
        self._routed = 0  # subtasks routed since the last report
        self._seq = 0  # choices made so far (each numbers its entries in ``_log``)
        self._log: list[tuple[int, str, tuple, Demand]] = []  # (choice, node, GPUs, demand) not in every report
        self._asking = 0  # the choices made before the reports in flight were asked for
        self._from: dict[str, tuple[int, float | None]] = {}  # node -> (choices its spec shows, when asked)

    # ------------------------------------------------------------------------------------- the view
    def asking(self) -> None:
        """Reports are being asked for now: choices made from here on are not in them (the node schedulers
        answer once the calls sent before the question have arrived: ``NodeScheduler.report``)."""
        self._asking = self._seq

    def update(self, specs: Iterable[NodeSpec], asked_at: float | None = None,
               fresh: Iterable[str] | None = None) -> None:
        """Replace the view with the node schedulers' reports (projected node specs), asked for at the last
        ``asking()`` (at ``asked_at`` on ``clock``: their ``busy_s`` count down from then; None: as given);
        the choices made since then are queued again on top (a report does not show them). ``fresh``: the
        nodes whose spec answers that question (None: all); the others keep the spec they last reported,
        aged from when that one was asked for, with every choice made for them since: a scheduler that
        answers late must not look as if the work routed to it meanwhile had vanished (it then looked the
        least busy, and a whole stage of consumers was routed away from its producers' nodes)."""
        specs = list(specs)
        fresh = None if fresh is None else set(fresh)
        for s in specs:
            if fresh is None or s.name in fresh or s.name not in self._from:
                self._from[s.name] = (self._asking, asked_at)
        self.specs = {s.name: s for s in specs}
        self._from = {n: v for n, v in self._from.items() if n in self.specs}
        self.asked_at = asked_at
        self._state = None
        self._leases.clear()
        self._routed = 0
        # (an entry its node's spec shows goes: a node that stops answering keeps only its own choices)
        self._log = [e for e in self._log if e[1] in self._from and e[0] > self._from[e[1]][0]]
        if self._log:
            st = self._scheduler(self._log[0][3]).state
            index = {n: i for i, n in enumerate(st.names)}
            for _, node, gpus, dw in self._log:
                i = index.get(node)
                if i is not None and all(g < st.gpu_count[i] for g in gpus):
                    st.add_wait(i, gpus, dw)

    def set_spec(self, spec: NodeSpec) -> None:
        """Replace one node's view (a node whose scheduler retired: as it was last seen, idle)."""
        self.specs[spec.name] = spec
        self._from[spec.name] = (self._seq, None)
        self._state = None

    def drop(self, node: str) -> None:
        self._from.pop(node, None)
        if self.specs.pop(node, None) is not None:
            self._state = None

    def _scheduler(self, d: Demand) -> Scheduler:
        if self._sched is None or self._state is None:
            now = self.clock()
            snap = Snapshot(tuple(aged(self.specs[n], self._age(n, now)) for n in sorted(self.specs)))
            self._state = ClusterState.from_snapshot(snap)
            self._state.max_side_by_side = self.max_side_by_side
            pol = registry.create(self.policy, cost=self.cost())
            pol.prepare(self._state, [d])
            self._sched = Scheduler(self._state, pol)
        return self._sched

    def _age(self, node: str, now: float) -> float:
        """Seconds since ``node``'s spec was asked for (0 where that is not known)."""
        at = self._from.get(node, (0, None))[1]
        return 0.0 if at is None else max(0.0, now - at)

    # ---------------------------------------------------------------------------------- the choice
    def choose(self, d: Demand, count: int = 1, explain: bool = False) -> Route:
        """The node for ``count`` subtasks of demand ``d`` (a map chunk shares one choice); the view
        counts them as queued there until the next report."""
        if not self.specs:
            if self.scaling.autoscaler:
                return self._wait_or_never(d, None, "the cluster has no live node with a GPU")
            return Route(None, never=_no_gpu_node(d, self.scaling))
        self._routed += count
        key = None
        # Work that is unknown is not leased: priced as LEASE times the assumed 0.5 s, a lease's finish on
        # every node is so long that a subtask's wait more or less ties (the policy's 5 %), and a node with
        # one usable GPU took leases as large as nodes with two (fastgpu demo: 12 subtasks on its GPU).
        if count == 1 and not d.input_total and 0 < d.work_s <= LEASE_MAX_WORK_S:
            key = (d.shape, d.gpu_types, d.priority, d.work_s)
            lease = self._leases.get(key)
            if lease is not None and lease[1] > 0:
                lease[1] -= 1
                return lease[0]
            gpus = sum(len(s.gpus) for s in self.specs.values())
            if self._routed > 4 * max(gpus, 1):
                count = LEASE
        route = self._choose(d, count, explain)
        if key is not None and count > 1 and route.node is not None:
            self._leases[key] = [route, count - 1]
        return route

    def _choose(self, d: Demand, count: int, explain: bool) -> Route:
        work = (d.work_s if d.work_s > 0 else UNKNOWN_WORK_S) * count
        dw = dataclasses.replace(d, work_s=work)
        sched = self._scheduler(dw)
        dec = sched.place(dw, explain=explain)
        st = sched.state
        if dec.unplaced is not None:
            if dec.unplaced.never:
                return self._wait_or_never(d, dec.explanation, dec.unplaced.reason, never_live=True)
            if self.scaling.can_grow(d.num_gpus):  # a live node can hold it later: no deadline
                return self._wait_for_room(d, dec.explanation, dec.unplaced.reason)
            node = self._least_busy(st, d)  # fits a node only later (held by others now): wait there
            if node is None:
                return Route(None, dec.explanation, never=dec.unplaced.reason)
            # Count it as queued there, so a burst routed while every GPU is taken spreads over the nodes
            # instead of piling on the one that looked least busy first.
            i = st.names.index(node)
            busy = np.nan_to_num(st.busy[i, :st.gpu_count[i]], nan=np.inf)
            gpus = tuple(int(g) for g in np.argsort(busy)[:max(d.num_gpus, 1)])
            self._queue(st, i, gpus, d, dw, count)
            return Route(node, dec.explanation)
        whole = d.gpu_milli >= 1000 and not d.gpu_memory_mib  # (a GPU share may fit beside running work)
        if whole and self.scaling.can_grow(d.num_gpus) and float(np.nanmax(st.busy[dec.node, list(dec.gpus)])) > 0:
            # Every GPU that could take it is busy and the cluster can grow: do not bind it to a live node's
            # queue now; the lobby hands it to whichever node has room first, live or launched for it.
            return self._wait_for_room(d, dec.explanation, "every GPU that could take it is busy")
        st.unbind(dec.node, dec.gpus, dw)
        self._queue(st, dec.node, dec.gpus, d, dw, count)
        return Route(st.names[dec.node], dec.explanation)

    def _queue(self, st: ClusterState, i: int, gpus: tuple[int, ...], d: Demand, dw: Demand, count: int) -> None:
        """Count ``count`` subtasks of ``d`` (``dw``: all of them as one demand on ``gpus``) as queued on node
        ``i`` in the view, and log it. A chunk or lease of one-GPU subtasks is spread over the node's GPUs
        as its scheduler will run it (each to the GPU free first), not piled on the GPU chosen for it: piled
        there, the node's other GPU looked as free as other nodes', and a burst of leases went 8/16/24 over
        three nodes."""
        self._seq += 1
        if count > 1 and d.num_gpus <= 1:
            one = dataclasses.replace(d, work_s=dw.work_s / count)
            fit = st.gpu_fit(one, i)  # (a GPU other Ray work holds shows full: it takes none of it)
            ok = [g for g in range(int(st.gpu_count[i])) if fit[g] and np.isfinite(st.busy[i, g])] or list(gpus)
            run = {g: one.work_s * slowdown(st.load[i, g]) for g in ok}
            step = {g: run[g] / st.side_by_side(i, g, one) for g in ok}  # how much later the next one starts
            ends = {g: float(st.busy[i, g]) for g in ok}
            n = dict.fromkeys(ok, 0)
            for _ in range(count):  # each where it would finish first (its wait, then its run at the load)
                g = min(ok, key=lambda x: (ends[x] + run[x], x))
                ends[g] += step[g]
                n[g] += 1
            for g, k in n.items():
                if k:
                    part = dataclasses.replace(d, work_s=one.work_s * k)
                    st.add_wait(i, (g,), part)
                    self._log.append((self._seq, st.names[i], (g,), part))
            return
        st.add_wait(i, gpus, dw)
        self._log.append((self._seq, st.names[i], gpus, dw))

    def _wait_for_room(self, d: Demand, expl: Explanation | None, why: str) -> Route:
        """A live node can hold ``d`` once its work ends, and the cluster can grow: wait in the lobby for
        whichever comes first (no deadline: a live node will take it)."""
        t = self.scaling.launch_for(d.num_gpus)
        return Route(None, expl, wait=f"{why}; waiting for room on a live node or for a new node"
                     + (f" of type {t.name}" if t is not None else ""))

    def _wait_or_never(self, d: Demand, expl: Explanation | None, why: str, never_live: bool = False) -> Route:
        """No live node takes ``d`` now (``why``): wait for the autoscaler if a node it can launch could
        hold ``d`` (or, where its node types are unknown, for at most ``scale_wait_s``); else fail.
        ``never_live``: no live node could hold it even empty, so node types with nodes up cannot either
        (the GPUs of a type are known only once one of its nodes is up: a type not seen yet may hold it)."""
        sc = self.scaling
        if sc.autoscaler and not sc.known:
            return Route(None, expl, wait=(f"{why}; waiting for the autoscaler to launch a node (fastgpu cannot "
                                           f"read its node types: fails after {self.scale_wait_s:g} s)"),
                         wait_s=self.scale_wait_s)
        t = sc.launch_for(d.num_gpus, unseen_only=never_live)
        if t is not None and t.gpus is None:
            return Route(None, expl, wait=(f"{why}; waiting for a node of type {t.name}, whose GPUs its config "
                                           f"does not declare (fails after {self.scale_wait_s:g} s)"),
                         wait_s=self.scale_wait_s)
        if t is not None:  # (whether it has room now is not asked: the autoscaler's counts lag)
            coming = sc.launching.get(t.name, 0)
            return Route(None, expl, wait=(f"{why}; waiting for a node of type {t.name} ({t.gpus} GPU(s)) "
                                           + (f"that the autoscaler is launching ({coming} launching)" if coming
                                              else "to be launched by the autoscaler")))
        if not sc.autoscaler:
            return Route(None, expl, never=why)
        return Route(None, expl, never=f"{why.rstrip('.')}. {_launchable(sc)}")

    @staticmethod
    def _least_busy(st: ClusterState, d: Demand) -> str | None:
        ok = [i for i in range(len(st.names)) if st.alive[i] and st.gpu_count[i] >= max(d.num_gpus, 1)]
        if not ok:
            return None
        busy = [float(np.nansum(np.where(st.busy[i] >= 0, st.busy[i], 0.0))) for i in ok]
        return st.names[ok[int(np.argmin(busy))]]

    # ----------------------------------------------------------------------------- producers (data)
    def produced_by(self, ref_hexes: Iterable[str], node: str, fn_key: str) -> None:
        """These refs are results of subtasks routed to ``node`` (they will be stored there)."""
        for h in ref_hexes:
            self.produced[h] = (node, fn_key)
        while len(self.produced) > self.keep_refs:
            self.produced.popitem(last=False)

    def producer(self, ref_hex: str) -> str | None:
        p = self.produced.get(ref_hex)
        return p[0] if p else None

    def forget_node(self, node: str) -> None:
        """``node`` died: its results are recomputed elsewhere; stop pointing consumers at it."""
        for h in [h for h, (n, _) in self.produced.items() if n == node]:
            del self.produced[h]
        self.drop(node)

    def with_inputs(self, d: Demand, located: Iterable[tuple[str, int]], pending: Iterable[str]) -> Demand:
        """``d`` plus its pending inputs: ``located`` = (ref hex, size) of inputs whose size is known
        (teaches each producer function's output size), ``pending`` = hexes of inputs not produced yet,
        counted on their producer's node."""
        for h, size in located:
            p = self.produced.get(h)
            if p is not None:
                self.sizes[p[1]] = float(size)
        extra: dict[str, int] = {}
        for h in pending:
            p = self.produced.get(h)
            if p is None:
                continue
            extra[p[0]] = extra.get(p[0], 0) + int(self.sizes.get(p[1], DEFAULT_OUTPUT_BYTES))
        if not extra:
            return d
        ib = dict(d.input_bytes)
        for n, b in extra.items():
            ib[n] = ib.get(n, 0) + b
        return dataclasses.replace(d, input_bytes=ib, input_total=d.input_total + sum(extra.values()))


def aged(spec: NodeSpec, age_s: float) -> NodeSpec:
    """``spec`` (a report's projection) ``age_s`` seconds later: each GPU's known ``busy_s`` counts down (an
    unknown end stays unknown)."""
    if age_s <= 0 or not any(g.busy_s > 0 for g in spec.gpus):
        return spec
    gpus = tuple(g if not (g.busy_s > 0 and math.isfinite(g.busy_s))
                 else dataclasses.replace(g, busy_s=max(0.0, g.busy_s - age_s)) for g in spec.gpus)
    return dataclasses.replace(spec, gpus=gpus)


def _no_gpu_node(d: Demand, sc: Scaling) -> str:
    return (f"subtask {d.id} asks for {max(d.num_gpus, 1)} GPU(s) but the cluster has no live node with a GPU. "
            f"{_launchable(sc)} Add GPU nodes (or start Ray with num_gpus=...) and submit again.")


def _launchable(sc: Scaling) -> str:
    """What the autoscaler could add, for a 'never fits' message."""
    if not sc.autoscaler:
        return "The cluster has no autoscaler."
    big = sc.largest()
    if big is None:
        return "None of the node types its autoscaler can launch has GPUs."
    return f"The largest node type its autoscaler can launch is {big.describe()}."
