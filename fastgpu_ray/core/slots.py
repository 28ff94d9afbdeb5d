"""Which process runs the next call on a GPU: the slot pool of one node scheduler (Ray-free bookkeeping).

A GPU fastgpu holds has a lease process (``worker.GpuWorker``, ``num_gpus=1`` in Ray): it runs the GPU's
first slot. A call that finds it busy (subtasks packed on the GPU by memory or share) runs in a further
slot process (``worker.SlotWorker``, ``num_gpus=0``, the subtask's ``num_cpus`` declared to Ray), so packed
Python-heavy subtasks do not take turns on one GIL. Slots are reused, started on demand (the dispatcher
caps concurrent calls per GPU, so no more run at once than that cap; idle slots of another ``num_cpus``
may linger up to ``SLOT_IDLE_S``), and stopped after ``SLOT_IDLE_S`` idle or with their GPU's lease. A
multi-GPU subtask runs in a slot that sees all of its GPUs.

Where no slot can start (Ray shows no free CPU for it on the node, or its process did not come up within
the backend's start timeout) the call runs as a thread in the lease process, as before slots existed,
and says so: a fallback, not an indefinite wait. The Ray side (``start``: create and wait for a process;
``kill``; ``cpus_free``) is passed in.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

SLOT_IDLE_S = 15.0  # an idle slot process is stopped after this long (its CPUs go back to Ray)
GIL_SHARE = 0.2  # a function whose runs hold the CPU at least this share of their time gets slot processes
LEARN = 0.3  # weight of each new run in a function's CPU share (exponential average)


@dataclass
class Slot:
    handle: Any
    node: str
    gpus: tuple[int, ...]
    cpus: float = 0.0
    pid: int = 0
    lease: bool = False
    busy: int = 0
    idle_since: float = 0.0
    fns: set = field(default_factory=set)  # function keys this process has loaded


class SlotPool:
    def __init__(self, start: Callable[[str, tuple[int, ...], float], Awaitable[Slot | None]],
                 kill: Callable[[Slot], None], cpus_free: Callable[[str], Awaitable[float]],
                 clock: Callable[[], float] = time.monotonic, idle_s: float = SLOT_IDLE_S) -> None:
        self._start, self._kill, self._cpus_free = start, kill, cpus_free
        self.clock, self.idle_s = clock, idle_s
        self.leases: dict[tuple[str, int], Slot] = {}
        self.slots: list[Slot] = []  # further slots, started or starting
        self._starting: dict[str, float] = {}  # node -> CPUs of slots being started there
        self.cpu_share: dict[str, float] = {}  # function key -> share of its runs' time it holds the CPU

    def observe(self, fn_key: str, cpu_s: float, wall_s: float, sharing: int = 1) -> None:
        """A run of ``fn_key`` took ``wall_s`` and its thread ``cpu_s`` of CPU, with ``sharing`` calls
        running in its process (threads: each gets about 1/sharing of the GIL, so its share is scaled up)."""
        if wall_s <= 0:
            return
        share = min(1.0, cpu_s / wall_s * max(1, sharing))
        old = self.cpu_share.get(fn_key)
        self.cpu_share[fn_key] = share if old is None else old + LEARN * (share - old)

    def add_lease(self, node: str, gpu: int, handle: Any, pid: int) -> None:
        self.leases[(node, gpu)] = Slot(handle, node, (gpu,), 0.0, pid, lease=True, idle_since=self.clock())

    def remove_lease(self, node: str, gpu: int) -> list[Slot]:
        """The lease of ``gpu`` went back to Ray: its slots (and multi-GPU slots using it) are stopped."""
        self.leases.pop((node, gpu), None)
        gone = [s for s in self.slots if s.node == node and gpu in s.gpus]
        for s in gone:
            self._drop(s)
        return gone

    async def acquire(self, node: str, gpus: tuple[int, ...], cpus: float, fn_key: str = "") -> tuple[Slot, str | None]:
        """A process for one call of ``fn_key`` on ``gpus`` (``node``), marked busy; plus a note when it
        runs as a thread in the lease process beside another call.

        The lease if it is free; else an idle slot process; else a new slot process for a function known
        to hold the CPU (``GIL_SHARE``: threads would take turns on one GIL) or a multi-GPU subtask (it
        must see all its GPUs); else a thread in the lease: a function that mostly waits (on the GPU, I/O)
        runs as well there and pays no process start, and one never run here runs there once, to learn."""
        lease = self.leases.get((node, gpus[0]))
        if lease is None:
            raise KeyError(f"no lease for GPU {gpus[0]} of node {node}")
        if len(gpus) == 1 and lease.busy == 0:
            return self._take(lease), None
        for s in self.slots:
            if s.node == node and s.gpus == gpus and s.busy == 0 and s.cpus == cpus and s.pid:
                return self._take(s), None
        share = self.cpu_share.get(fn_key)
        if len(gpus) == 1 and (share is None or share < GIL_SHARE):
            why = ("its CPU use is not known yet (a first run teaches it)" if share is None else
                   f"its runs hold the CPU {share:.0%} of their time (a process of its own from {GIL_SHARE:.0%})")
            return self._take(lease), f"ran as a thread in GPU {gpus[0]}'s lease process beside another call: {why}"
        free = await self._cpus_free(node)
        starting = self._starting.get(node, 0.0)
        if free - starting + 1e-9 < cpus:
            why = f"no free CPU for a slot process on this node ({cpus:g} asked, {max(0.0, free - starting):g} free)"
        else:
            self._starting[node] = starting + cpus
            try:
                s = await self._start(node, gpus, cpus)
            finally:
                self._starting[node] -= cpus
            if s is not None:
                gone = [g for g in gpus if (node, g) not in self.leases]
                if not gone:
                    self.slots.append(s)
                    return self._take(s), None
                self._kill(s)  # a lease of its GPUs went back while it started
                raise KeyError(f"the lease of GPU {gone[0]} of node {node} was released")
            why = "its slot process did not start"
        what = "with the others" if len(gpus) == 1 else f"seeing GPU {gpus[0]} only"
        return self._take(lease), (f"ran as a thread in GPU {gpus[0]}'s lease process {what}: {why}")

    def _take(self, s: Slot) -> Slot:
        s.busy += 1
        return s

    def release(self, s: Slot) -> None:
        s.busy = max(0, s.busy - 1)
        if not s.busy:
            s.idle_since = self.clock()

    def lost(self, s: Slot) -> None:
        """``s``'s process died during a call: it is replaced by the next call that needs a slot."""
        if not s.lease:
            self._drop(s)

    def _drop(self, s: Slot) -> None:
        if s in self.slots:
            self.slots.remove(s)
        self._kill(s)

    def trim(self) -> list[Slot]:
        """Stop slot processes idle longer than ``idle_s``; returns them."""
        now = self.clock()
        gone = [s for s in self.slots if not s.busy and s.pid and now - s.idle_since > self.idle_s]
        for s in gone:
            self._drop(s)
        return gone

    def kill_all(self) -> None:
        for s in list(self.slots):
            self._drop(s)
        self.leases.clear()

    def processes(self) -> list[tuple[tuple[int, ...], int, bool]]:
        """(GPUs, pid, is the lease) of every process of this pool."""
        return [(s.gpus, s.pid, True) for s in self.leases.values()] + [(s.gpus, s.pid, False) for s in self.slots]
