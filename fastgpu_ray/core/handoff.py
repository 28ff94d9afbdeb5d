"""Delay scheduling across nodes: which queued subtasks a busy node hands to another node. No Ray.

A subtask is routed to a node when it is submitted (usually where its data is). If that node's queue turns
out longer than estimated (a function's first estimates are guesses), or other nodes' GPUs free up
sooner, the subtask would wait there longer than moving its inputs takes. The driver
(``Session.balance``) compares the node schedulers' reports and asks the node with the longest wait to
hand some of its queue to a node with a GPU free now; ``pick`` decides which, with the single cost
function (``placement.cost``). A queued subtask goes when

    finish here  = its estimated start here (this node's queue played out over its GPUs, in queue order)
                   + work x slowdown(load of its GPU here)
    finish there = HANDOFF_S + max(moving its inputs there, waiting for a GPU there)
                   + work x slowdown(load of that GPU)

is shorter there by more than ``MIN_GAIN`` (the other node's GPUs as its report shows them, each taking
the picked subtasks one after another), and it has already waited here at least as long as moving its
inputs takes: it waits for its data's node about as long as a move would take, never longer than it
pays, and a subtask that starts within that time never moves.

With other jobs on the cluster (fair share), a node's GPUs are the ones its job holds there (the
arbiter moves GPUs between jobs; a job's queue moves between its own GPUs): the queue is played out over
them, and a subtask queued where its job holds none (its share is elsewhere) goes to a node where the job
has a GPU about to be free, as much as starts there within ``HORIZON_S``.

Candidates come from the back of the queue (they wait longest), so lower-priority subtasks go before
higher ones and priorities in a job stay strict. Gangs (``num_gpus`` > 1) and subtasks with declared GPU
types stay. A subtask handed over may be handed on again (the routing of a first wave, before any
report said how long its work is, is undone this way), each move paying off by itself, back to a node it
came through too (the arbiter may have moved the job's GPUs back there; that node's record of it, the one
``fastgpu.explain`` reads, keeps its story: ``DispatchCore.submit``); no node receives
again before a report shows what it received, so queues do not swing back and forth on stale reports.
A handed subtask's result comes back through the node that handed it (the user's ref is that node's
call): one copy of the result crosses back per move.
"""
from __future__ import annotations

import heapq
import math
from typing import Callable

from placement.cost import CostModel

from .dispatch import DispatchCore, Subtask

HANDOFF_S = 0.05  # the extra hop: the call to the other node's scheduler and the result coming back
MIN_GAIN = 0.1  # hand over only when it finishes at least this fraction sooner there
RECEIVER_FREE_S = 0.1  # a node receives hand-offs while a GPU of it frees within this long (or a move's time)
HORIZON_S = 2.0  # from a node where the job holds no GPU (other jobs have them), hand over what starts
#                  there within this long (the driver asks again before that node's GPUs run dry)


def scan(gpus: int) -> int:
    """How many subtasks at the back of the queue are considered for ``gpus`` GPUs elsewhere."""
    return 8 + 4 * gpus


def pairs(wait: dict[str, float], queued: dict[str, int], own: dict[str, list | None],
          handoff_bytes: dict[str, int], transfer_s: Callable[[float], float]) -> list[tuple[str, str]]:
    """Which node should hand work to which, from the nodes' last reports: ``wait``: seconds until a GPU
    of the job is free on each node taking part; ``queued``: subtasks queued there; ``own``: the job's
    GPUs there where other jobs share the cluster (None: alone); ``handoff_bytes``: the largest input a
    node could hand over; ``transfer_s(bytes)``: seconds to move it. Donors by longest wait first, each
    to the receiver free soonest, one hand-off per node.

    A receiver has a GPU free now or about to be: within the time the donor's inputs take to move (the
    data arrives as the GPU frees), at least ``RECEIVER_FREE_S``. Handing work to a node that is busy too
    only reshuffles queues that are long everywhere (measured: heterogeneous.py, 1.54x its bound against
    1.17x with a receiver free within 0.1 s). Sharing the cluster, a GPU of the job takes more as it
    frees, within ``HORIZON_S / 2`` (before it runs dry: the receiver's report is up to a report period
    old). A donor must wait longer than its receiver by more than the hop (``HANDOFF_S``)."""
    receivers = sorted(wait, key=lambda n: wait[n])
    out: list[tuple[str, str]] = []
    taken: set[str] = set()
    for donor in sorted((n for n in wait if queued.get(n)), key=lambda n: -wait[n]):
        if donor in taken:
            continue
        soon = max(RECEIVER_FREE_S, transfer_s(handoff_bytes.get(donor, 0)))
        recv = next((r for r in receivers if r != donor and r not in taken
                     and wait[r] <= (soon if own.get(r) is None else HORIZON_S / 2)), None)
        if recv is None or wait[donor] - wait[recv] <= HANDOFF_S:
            continue
        taken |= {donor, recv}
        out.append((donor, recv))
    return out


def largest_input(core: DispatchCore, gpus: int) -> int:
    """Bytes of the largest input among the queued subtasks a hand-off to a node of ``gpus`` GPUs would
    consider (the back of the queue; 0 where none has inputs of known size). The driver lets a node whose
    GPU frees within the time moving that much takes receive now: the data arrives as the GPU frees."""
    back = heapq.nlargest(scan(gpus), core.queue)
    return max((x[2].input_bytes or 0 for x in back if movable(x[2])), default=0)


def movable(st: Subtask) -> bool:
    """Whether a hand-off may move ``st``: not finished or cancelled, not a gang, no declared GPU types."""
    return not (st.future is not None and st.future.done()) and st.opts.gpu_count <= 1 and not st.opts.gpu_types


def pick(core: DispatchCore, there: list[tuple[float, float]], move_s: Callable[[Subtask], float],
         cost: CostModel | None = None) -> list[tuple[Subtask, float, float]]:
    """(subtask, estimated finish here, there) for the queued subtasks of ``core`` that finish sooner on
    the other node, whose GPUs are ``there`` = (seconds until free, outside load) each;
    ``move_s(subtask)``: seconds to move its inputs there (a move overlaps the wait for the GPU). A
    candidate's own run is priced with ``cost.compute_s`` on both sides (its tail risk on a slower GPU
    too). The picked ones are taken off ``core``'s queue."""
    cost = cost or CostModel()
    items = sorted(x for x in core.queue if not (x[2].future is not None and x[2].future.done()))
    if not items or not there:
        return []
    node = core.nodes[0].node_id if core.nodes else None
    gpus = next((n.gpu_total for n in core.nodes if n.node_id == node), 0)
    if not gpus:
        return []
    now = core.clock()
    own = core.own_slots(node, now)  # other jobs share the cluster: only the GPUs this job runs on here
    free = ([(core.free_in(node, g, now), core.external_util(node, g)) for g in range(gpus)] if own is None
            else [(busy, util) for _, busy, util in own])  # (free in, load) of each GPU it may use here
    starts, _ = core.play_queue(free, [st for _, _, st in items], cost)  # this node's queue, played out
    plan = []
    for item, (t, gpu) in zip(items, starts):  # (no GPU: the job holds none here, fair share gave them away)
        est = core.estimate(item[2])
        plan.append((item, math.inf if gpu < 0 else t + cost.compute_s(est.seconds, free[gpu][1], est.tail_s)))
    slots = [[busy, u] for busy, u in there]  # the other node's GPUs as they fill up
    picked = []
    for item, here in reversed(plan[-scan(len(slots)):]):
        st = item[2]
        if not movable(st):
            continue
        est, move = core.estimate(st), move_s(st)
        if now - st.enqueued < move:  # delay scheduling: it waits for its data's node as long as a move takes
            continue
        slot = min(slots, key=lambda s: max(s[0], move) + cost.compute_s(est.seconds, s[1], est.tail_s))
        done = max(slot[0], move) + cost.compute_s(est.seconds, slot[1], est.tail_s)
        if here == math.inf and max(slot[0], move) > HORIZON_S:
            continue  # no start here in sight: fill the other node's GPUs for a while, not with everything
        if HANDOFF_S + done < here * (1 - MIN_GAIN):
            picked.append((item, here, HANDOFF_S + done))
            slot[0] = max(slot[0], move) + cost.compute_s(est.seconds, slot[1])
    if picked:
        gone = {id(item) for item, _, _ in picked}
        core.queue.remove(lambda x: id(x) in gone)
    return [(item[2], here, away) for item, here, away in picked]
