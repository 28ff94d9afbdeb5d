"""The queue discipline of fastgpu's scheduling core, without Ray: served in priority order, best match
among the top priority, and a round that skips what does not fit now. No Ray, no asyncio, no clock.

The live node schedulers (``fastgpu_ray.dispatch.DispatchCore.schedule_round``) and the dynamic trace
replay (``placement.sim.dynamic``) both serve their queues through this module, so what the replay
prints is what the runtime's queue does.

Contract:

* The queue is a heap of entries ``(-priority, seq, item)``: higher priority first, then arrival (``seq``).
* ``best_first``: a round first takes up to ``window`` entries off the heap; those of the top priority
  present are served shortest estimated run first, less ``aging`` seconds for every second an entry has
  waited (a long one is not starved), then the rest of the window in queue order. With one duration key
  among them (or ``window`` 0) the order is the queue's.
* ``Scan``: one round over that order. The caller pops entries, places what it can, and ``keep``s the
  rest; a kept entry that could not start counts as a miss, and the round ends after ``limit`` misses
  (``limit=1``: strict FIFO, nothing passes an entry that does not fit). A shape that did not fit is not
  tried again in the same round (placing only fills the cluster). ``close`` puts every kept and unserved
  entry back on the heap.
"""
from __future__ import annotations

import heapq
import math
from typing import Any, Callable, Hashable

BEST_MATCH_WINDOW = 64  # best match looks at this many queued entries of the top priority
AGING = 0.5  # best match: each second queued counts as this many seconds less estimated run (no starvation)
UNPLACED_SCAN_LIMIT = 256  # per round, stop scanning after this many queued entries that do not fit

Entry = tuple  # (-priority, seq, item)


def best_first(heap: list[Entry], now: float, estimate: Callable[[Any], float], key: Callable[[Any], Hashable],
               enqueued: Callable[[Any], float], window: int = BEST_MATCH_WINDOW,
               aging: float = AGING) -> list[Entry]:
    """The first ``window`` entries, taken off ``heap``, in the order a round serves them (module doc).
    ``estimate(item)``: its estimated run in seconds; ``key(item)``: its duration key (equal keys estimate
    alike); ``enqueued(item)``: when it was queued (same clock as ``now``)."""
    if len(heap) < 2 or window <= 0:
        return []
    front = [heapq.heappop(heap) for _ in range(min(window, len(heap)))]
    top = [x for x in front if x[0] == front[0][0]]
    if len({key(x[2]) for x in top}) < 2:
        return front
    top.sort(key=lambda x: (estimate(x[2]) - aging * (now - enqueued(x[2])), x[1]))
    return top + front[len(top):]


class Scan:
    """One round over ``heap`` (module doc): ``front`` (from ``best_first``) is served first."""

    def __init__(self, heap: list[Entry], front: list[Entry] | None = None,
                 limit: float = UNPLACED_SCAN_LIMIT) -> None:
        self.heap = heap
        self.front = front or []
        self.limit = math.inf if limit is None else limit
        self.kept: list[Entry] = []
        self.misses = 0
        self.failed: set = set()  # shapes that did not fit in this round

    def more(self) -> bool:
        return bool(self.front or self.heap) and self.misses < self.limit

    def pop(self) -> Entry:
        return self.front.pop(0) if self.front else heapq.heappop(self.heap)

    def head(self) -> Any | None:
        """The next item to be served (not taken), or None."""
        return self.front[0][2] if self.front else (self.heap[0][2] if self.heap else None)

    def keep(self, entry: Entry, miss: bool = True) -> None:
        """``entry`` stays queued; ``miss``: it could not start (counts toward the round's limit)."""
        self.kept.append(entry)
        self.misses += miss

    def did_not_fit(self, entry: Entry, shape: Hashable) -> None:
        """``entry`` does not fit now: kept, and its shape is not tried again this round."""
        self.failed.add(shape)
        self.keep(entry)

    def close(self) -> None:
        for entry in self.kept + self.front:
            heapq.heappush(self.heap, entry)
        self.kept, self.front = [], []
