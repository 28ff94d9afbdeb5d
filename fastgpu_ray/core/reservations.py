"""GPU reservations of one dispatch core (Ray-free): what the work running on each GPU it holds takes.

Per GPU (``telemetry.GpuHold``): the share and memory reserved, the subtasks and worker calls running,
their declared load. Per running call: its estimated end on each of its GPUs (so a subtask may choose to
wait for a GPU about to free), and, per duration key, when its calls started and at what slowdown (an
unknown run time is raised to how long the oldest one has run). A call is known by an id the caller
gives (the core uses ``id(batch)``): a batch of subtasks run one after another in one call reserves one
subtask's share and memory.
"""
from __future__ import annotations

from typing import Callable

from placement import GPU_MILLI, Demand

from .telemetry import GpuHold

Key = tuple[str, int]  # (node id, GPU index)


OVERDUE_LEFT = 0.25  # a run past its estimated end is expected to need this fraction of its elapsed time more


def time_left(end: float, dur: float, now: float) -> float:
    """Estimated seconds until a run that should end at ``end`` (``dur`` long) is done: until its end, what
    is left of the estimate; past it, a fraction of what it has run so far (it is longer than estimated:
    the longer, the more is left). Not the larger of the two before the end: that floor kept a 2 s run
    showing half a second left until it ended, so a GPU about to free never looked it (hand-offs waited
    for it to free, and for the next report)."""
    if now < end:
        return end - now
    return max(OVERDUE_LEFT * (now - (end - dur)), 0.0)


class Reservations:
    def __init__(self, slot_cap: int) -> None:
        self.slot_cap = slot_cap
        self.holds: dict[Key, GpuHold] = {}
        self.ends: dict[Key, dict[int, tuple[float, float]]] = {}  # call id -> (est. end, est. run)
        self.since: dict[str, dict[int, tuple[float, float]]] = {}  # duration key -> call id -> (start, slowdown)
        self.guessed: dict[str, dict[int, float]] = {}  # duration key -> call id -> the guessed run time it used

    def open(self, key: Key) -> None:
        """A worker for ``key``'s GPU is up: it holds nothing yet."""
        self.holds[key] = GpuHold(slot_cap=self.slot_cap)

    def close(self, key: Key) -> None:
        """``key``'s worker is gone: its reservations go with it (late completions of its calls find none)."""
        self.holds.pop(key, None)
        self.ends.pop(key, None)

    def reserve(self, node: str, gpus: tuple[int, ...], d: Demand, call: int, subtasks: int, util: float,
                duration_key: str, now: float, load: float, runs: list[float], guess: float | None = None) -> None:
        """Call ``call`` (``subtasks`` run one after another) starts on ``gpus`` of ``node`` at ``now``:
        ``d``'s share and memory once, each GPU busy for its ``runs`` entry (estimated), ``util`` declared
        load; ``load``: its first GPU's slowdown from outside load (a finished run is learned over it).
        ``guess``: the run time of one subtask its ``runs`` assumed when nothing was known of its function
        (``relearn`` corrects them once something is)."""
        self.since.setdefault(duration_key, {})[call] = (now, load)
        if guess is not None:
            self.guessed.setdefault(duration_key, {})[call] = guess
        for g, run in zip(gpus, runs):
            self.ends.setdefault((node, g), {})[call] = (now + run, run)
        for g in gpus:
            h = self.holds.setdefault((node, g), GpuHold(slot_cap=self.slot_cap))
            h.milli_used += d.gpu_share
            h.memory_reserved_mib += d.gpu_memory_mib
            h.running += subtasks
            h.calls += 1
            h.util_declared += util

    def release(self, node: str, gpus: tuple[int, ...], d: Demand, call: int, subtasks: int, util: float,
                duration_key: str, held: Callable[[Key], bool]) -> list[Key]:
        """Call ``call`` ended: undo ``reserve`` on the GPUs whose worker is still the one it ran on
        (``held``); returns those GPUs that now run nothing."""
        for book in (self.since, self.guessed):
            runs = book.get(duration_key)
            if runs is not None:
                runs.pop(call, None)
                if not runs:
                    del book[duration_key]
        for g in gpus:
            self.ends.get((node, g), {}).pop(call, None)
        idle = []
        for g in gpus:
            key = (node, g)
            h = self.holds.get(key)
            if h is None or not held(key):
                continue  # that worker was dropped: its reservations went with it
            h.milli_used = max(0, h.milli_used - d.gpu_share)
            h.memory_reserved_mib = max(0, h.memory_reserved_mib - d.gpu_memory_mib)
            h.running = max(0, h.running - subtasks)
            h.calls = max(0, h.calls - 1)
            h.util_declared = max(0.0, h.util_declared - util)
            if h.running == 0:
                idle.append(key)
        return idle

    def relearn(self, duration_key: str, seconds: float) -> None:
        """``duration_key``'s run time is known now (``seconds`` per subtask on an idle GPU): the calls of it
        that started on a guess get their estimated ends scaled to it, so their GPUs show when they truly
        free (before, a 2 s run started on the 0.5 s guess showed a quarter of its elapsed time left until
        it ended, and the node looked busy for as long)."""
        calls = self.guessed.pop(duration_key, None)
        if not calls:
            return
        for ends in self.ends.values():
            for call, guess in calls.items():
                if call in ends and guess > 0:
                    end, dur = ends[call]
                    ends[call] = (end - dur + dur * seconds / guess, dur * seconds / guess)

    def fits(self, key: Key, share: int) -> bool:
        """Whether ``share`` milli more fit ``key``'s GPU beside what runs there (and a call slot is free)."""
        h = self.holds.get(key)
        return h is None or not (h.milli_used + share > GPU_MILLI or h.at_cap)

    def running(self, key: Key) -> int:
        h = self.holds.get(key)
        return h.running if h is not None else 0

    def lefts(self, key: Key, now: float) -> list[float]:
        """Estimated seconds left of each call running on ``key``'s GPU."""
        return [time_left(e, dur, now) for e, dur in self.ends.get(key, {}).values()]

    def free_in(self, key: Key, now: float) -> float:
        """Estimated seconds until all the work running on ``key``'s GPU is done."""
        return max(self.lefts(key, now), default=0.0)

    def started(self, duration_key: str) -> dict[int, tuple[float, float]]:
        """(start, slowdown) of each running call of ``duration_key``."""
        return self.since.get(duration_key, {})
