"""The queue discipline of fastgpu's scheduling core, without Ray: served in priority order, best match
among the top priority, and a round that skips what does not fit now. No Ray, no asyncio, no clock.

The live node schedulers (``fastgpu_ray.core.dispatch.DispatchCore.schedule_round``) and the dynamic trace
replay (``placement.sim.dynamic``) both serve their queues through this module, so what the replay
prints is what the runtime's queue does.

Contract:

* ``ShapeQueue`` holds entries ``(-priority, seq, item)``: higher priority first, then arrival (``seq``),
  kept in one heap per *shape* (``shape(item)``: what decides whether an item fits; equal shapes fit
  alike) under a heap of those heaps' heads, so ``pop`` gives exactly one heap's order.
* ``best_first``: a round first takes up to ``window`` entries off the queue; those of the top priority
  present are served shortest estimated run first, less ``aging`` seconds for every second an entry has
  waited (a long one is not starved), then the rest of the window in queue order. With one duration key
  among them (or ``window`` 0) the order is the queue's. A ``pinned`` entry (one that takes several whole
  GPUs) keeps its place in queue order: shorter work reordered past it would take, one GPU at a time, the
  GPUs it waits to have together.
* ``Scan``: one round over that order. Iterating it yields the entries to try; the caller places what it
  can and ``keep``s the rest; a kept entry that could not start counts as a miss, and the round ends after
  ``limit`` misses (``limit=1``: strict FIFO, nothing passes an entry that does not fit). A shape that did
  not fit is not tried again in the same round (placing only fills the cluster). With ``free_skips``
  (fastgpu's) the rest of that shape is set aside at once, however many entries it has, and costs no
  miss: the limit bounds placement attempts, one per shape. Without it (a per-pod queue such as
  kube-scheduler's, which tries every pod in its own cycle) each queued entry of a failed shape is passed
  over one at a time and counts as a miss. ``close`` puts every kept, set-aside and unserved entry back.
* ``Holds``: a demand for several whole GPUs that does not fit holds the node nearest to holding it
  (``ClusterState.hold_for``), so that what frees there gathers for it instead of going, GPU by GPU, to
  work queued behind it (EASY backfill's reservation for the head, without its runtime estimate): only
  higher priorities are placed on a held node. A hold stays with its entry across rounds until it starts
  (anywhere); at most ``MAX_HOLDS`` at once, and at most one new one per shape per round (the rest of a
  failed shape is set aside).
"""
from __future__ import annotations

import heapq
import math
from typing import TYPE_CHECKING, Any, Callable, Hashable, Iterator

from .model import GPU_MILLI

if TYPE_CHECKING:
    from .model import Demand
    from .state import ClusterState

BEST_MATCH_WINDOW = 64  # best match looks at this many queued entries of the top priority
AGING = 0.5  # best match: each second queued counts as this many seconds less estimated run (no starvation)
UNPLACED_SCAN_LIMIT = 256  # per round, stop scanning after this many queued entries that do not fit
MAX_HOLDS = 16  # nodes held at once for multi-GPU demands (each idles what frees on it until its demand fits)

Entry = tuple  # (-priority, seq, item)


class ShapeQueue:
    """A priority queue of entries grouped by ``shape(item)`` (module doc). ``len``, ``bool`` and iteration
    (in no particular order) see every entry, set-aside shapes included."""

    def __init__(self, shape: Callable[[Any], Hashable]) -> None:
        self.shape = shape
        self._subs: dict[Hashable, list[Entry]] = {}
        self._heads: list[tuple[Entry, Hashable]] = []  # each sub-heap's head (stale copies dropped lazily)
        self._aside: set = set()  # shapes set aside for the current round
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def __bool__(self) -> bool:
        return self._n > 0

    def __iter__(self) -> Iterator[Entry]:
        for sub in self._subs.values():
            yield from sub

    def push(self, entry: Entry) -> None:
        s = self.shape(entry[2])
        sub = self._subs.get(s)
        if sub is None:
            sub = self._subs[s] = []
        heapq.heappush(sub, entry)
        self._n += 1
        if sub[0] is entry and s not in self._aside:
            heapq.heappush(self._heads, (entry, s))

    def _top(self) -> tuple[Entry, Hashable] | None:
        heads = self._heads
        while heads:
            e, s = heads[0]
            sub = self._subs.get(s)
            if sub and sub[0] is e and s not in self._aside:
                return heads[0]
            heapq.heappop(heads)  # stale: no longer its shape's head (that one has its own copy), or set aside
        return None

    def peek(self) -> Entry | None:
        """The next entry ``pop`` gives (shapes set aside excluded), or None."""
        top = self._top()
        return None if top is None else top[0]

    def pop(self) -> Entry:
        top = self._top()
        if top is None:
            raise IndexError("pop from an empty ShapeQueue")
        heapq.heappop(self._heads)
        e, s = top
        sub = self._subs[s]
        heapq.heappop(sub)
        self._n -= 1
        if sub:
            heapq.heappush(self._heads, (sub[0], s))
        else:
            del self._subs[s]
        return e

    def set_aside(self, shape: Hashable) -> None:
        """``pop`` skips ``shape``'s entries until ``restore``."""
        self._aside.add(shape)

    def restore(self) -> None:
        for s in self._aside:
            sub = self._subs.get(s)
            if sub:
                heapq.heappush(self._heads, (sub[0], s))
        self._aside.clear()

    def shape_heads(self) -> list[Any]:
        """The first item of each shape (every shape, set aside or not): one per way of fitting."""
        return [sub[0][2] for sub in self._subs.values() if sub]

    def head(self, k: int) -> list[Entry]:
        """The ``k`` first entries in order, left queued (O(k log n): a round must not read a backlog)."""
        out = []
        while len(out) < k and self.peek() is not None:
            out.append(self.pop())
        for e in out:
            self.push(e)
        return out

    def remove(self, gone: Callable[[Entry], bool]) -> list[Entry]:
        """Take out (and return) every entry for which ``gone(entry)``."""
        out = [e for e in self if gone(e)]
        if out:
            ids = {id(e) for e in out}
            keep = [e for e in self if id(e) not in ids]
            self._subs, self._heads, self._n = {}, [], 0
            for e in keep:  # (push leaves the heads of shapes set aside out, as restore expects)
                self.push(e)
        return out


def best_first(queue: ShapeQueue, now: float, estimate: Callable[[Any], float], key: Callable[[Any], Hashable],
               enqueued: Callable[[Any], float], window: int = BEST_MATCH_WINDOW,
               aging: float = AGING, pinned: Callable[[Any], bool] | None = None) -> list[Entry]:
    """The first ``window`` entries, taken off ``queue``, in the order a round serves them (module doc).
    ``estimate(item)``: its estimated run in seconds; ``key(item)``: its duration key (equal keys estimate
    alike); ``enqueued(item)``: when it was queued (same clock as ``now``)."""
    if len(queue) < 2 or window <= 0:
        return []
    front = [queue.pop() for _ in range(min(window, len(queue)))]
    top = [x for x in front if x[0] == front[0][0]]
    if len({key(x[2]) for x in top}) < 2:
        return front
    fixed = pinned or (lambda item: False)
    moved = iter(sorted((x for x in top if not fixed(x[2])),
                        key=lambda x: (estimate(x[2]) - aging * (now - enqueued(x[2])), x[1])))
    return [x if fixed(x[2]) else next(moved) for x in top] + front[len(top):]


class Scan:
    """One round over ``queue`` (module doc): ``front`` (from ``best_first``) is served first."""

    def __init__(self, queue: ShapeQueue, front: list[Entry] | None = None,
                 limit: float | None = UNPLACED_SCAN_LIMIT, free_skips: bool = True) -> None:
        self.queue = queue
        self.front = front or []
        self.limit = math.inf if limit is None else limit
        self.free_skips = free_skips
        self.kept: list[Entry] = []
        self.misses = 0
        self.failed: set = set()  # shapes that did not fit in this round

    def more(self) -> bool:
        return bool(self.front or self.queue.peek() is not None) and self.misses < self.limit

    def __iter__(self) -> Iterator[Entry]:
        """The entries to try, in order, until the round ends; entries of a failed shape are passed over."""
        while self.more():
            entry = self.pop()
            if self.queue.shape(entry[2]) in self.failed:
                self.keep(entry, miss=not self.free_skips)
                continue
            yield entry

    def pop(self) -> Entry:
        """The next entry, whatever its shape (a caller batching followers of one it placed)."""
        return self.front.pop(0) if self.front else self.queue.pop()

    def head(self) -> Any | None:
        """The next item to be served (not taken), or None."""
        if self.front:
            return self.front[0][2]
        e = self.queue.peek()
        return None if e is None else e[2]

    def keep(self, entry: Entry, miss: bool = True) -> None:
        """``entry`` stays queued; ``miss``: it could not start (counts toward the round's limit)."""
        self.kept.append(entry)
        self.misses += miss

    def did_not_fit(self, entry: Entry) -> None:
        """``entry`` does not fit now: kept, and its shape is not tried again this round."""
        self.fail_shape(entry)
        self.keep(entry)

    def fail_shape(self, entry: Entry) -> None:
        """``entry``'s shape fits nowhere now: the rest of it waits this round (with ``free_skips``, set
        aside in the queue without being popped)."""
        s = self.queue.shape(entry[2])
        self.failed.add(s)
        if self.free_skips:
            self.queue.set_aside(s)

    def close(self) -> None:
        self.queue.restore()
        for entry in self.kept + self.front:
            self.queue.push(entry)
        self.kept, self.front = [], []


def wants_hold(d: "Demand") -> bool:
    """Whether ``d`` holds a node when it does not fit: several whole GPUs (one GPU or a share fits the
    next GPU that frees anywhere; holding a node for it would only idle the node)."""
    return d.num_gpus > 1 and d.gpu_share >= GPU_MILLI


class Holds:
    """The nodes held for queued entries (module doc), by the entry's key (stable across rounds)."""

    def __init__(self, limit: int = MAX_HOLDS) -> None:
        self.limit = limit
        self.node: dict[Hashable, int] = {}
        self.opened: set[int] = set()  # nodes whose hold ended (what waited behind it may fit there now)

    def trying(self, state: "ClusterState", key: Hashable) -> None:
        """``key``'s entry is about to be placed: its own node is open to it."""
        node = self.node.get(key)
        if node is not None:
            state.unhold(node)

    def did_not_fit(self, state: "ClusterState", key: Hashable, d: "Demand", node: int | None = None) -> None:
        """``key``'s entry (tried, or known not to fit) waits: it holds its node again or, where it wants a
        hold and the limit allows, ``node`` (where it chose to wait) or else the nearest node."""
        mine = self.node.get(key)
        if mine is not None:
            state.hold(mine, d.priority)
        elif len(self.node) < self.limit and wants_hold(d):
            if node is None:
                node = state.hold_for(d)
            else:
                state.hold(node, d.priority)
            if node >= 0:
                self.node[key] = node

    def started(self, key: Hashable) -> int | None:
        """``key``'s entry started (``trying`` opened its node): the hold is over. Returns the node it held
        (what waited behind the hold may fit there now), or None."""
        node = self.node.pop(key, None)
        if node is not None:
            self.opened.add(node)
        return node
