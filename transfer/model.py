"""The transfer cost model: for one subtask, where its input bytes are and what moving them costs.

Pure Python: objects come in as ``ObjectLocation`` values (from a locator), time comes from
``placement.cost.CostModel.transfer_s`` -- the one cost function placement also uses; nothing here
computes a time of its own.

Rules:
- an object at or under the inline threshold (100 KiB) is free: Ray inlines it with the task;
- an object whose size is not known yet (its producing task is still running) counts as free and is
  listed in ``unknown``: guessing would be worse than ignoring it, and it is re-estimated on retry;
- an object already on a node, or already on its way there (``TransferLedger``), is local to that node:
  a broadcast object needed by several subtasks on one node crosses the network once;
- when an object has copies on several nodes, Ray pulls it from one of them at random, so the
  expected bytes from each holder is the size divided by the number of holders.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from placement.cost import CostModel

from .args import INLINE_THRESHOLD


# Key prefix of a large by-value argument: put in the store for its one call, never shared with another
# call (so never deduplicated, nor worth remembering where it went).
VALUE_KEY = "value:"


@dataclass(frozen=True)
class InputObject:
    """One large input: ``nodes`` hold a copy now, ``arriving`` are nodes it is being moved to."""

    key: str
    size: int
    nodes: frozenset[str]
    arriving: frozenset[str] = frozenset()

    def local_to(self, node: str) -> bool:
        return node in self.nodes or node in self.arriving

    @property
    def by_value(self) -> bool:
        """A by-value argument (``VALUE_KEY``), not an ObjectRef."""
        return self.key.startswith(VALUE_KEY)


@dataclass(frozen=True)
class NodeTransfer:
    """The transfer term for one candidate node."""

    node: str
    local_bytes: int
    move_bytes: int
    move_s: float
    sources: Mapping[str, int] = field(default_factory=dict)  # holder node -> expected bytes from it

    def describe(self, short=lambda n: n[:8]) -> str:
        src = ", ".join(f"{_mib(b)} from {short(n)}" for n, b in sorted(self.sources.items(), key=lambda x: -x[1]))
        moved = f"move {_mib(self.move_bytes)} in ~{self.move_s:.3g}s" + (f" ({src})" if src else "")
        return f"{_mib(self.local_bytes)} local, {moved if self.move_bytes else 'nothing to move'}"


@dataclass(frozen=True)
class TransferEstimate:
    """A subtask's inputs, located. ``objects`` are the large ones; the rest is free or unknown."""

    objects: tuple[InputObject, ...] = ()
    inline_bytes: int = 0  # bytes of inputs at or under the inline threshold: free
    unknown: tuple[str, ...] = ()  # keys of inputs whose size or location is not known yet

    @property
    def total(self) -> int:
        return sum(o.size for o in self.objects)

    def local_bytes(self, node: str) -> int:
        return sum(o.size for o in self.objects if o.local_to(node))

    def input_bytes(self) -> dict[str, int]:
        """Node -> bytes of the inputs on (or arriving at) it: ``placement.Demand.input_bytes``."""
        out: dict[str, int] = {}
        for o in self.objects:
            for n in o.nodes | o.arriving:
                out[n] = out.get(n, 0) + o.size
        return out

    def demand_fields(self) -> dict:
        """The ``placement.Demand`` fields this estimate fills: ``Demand(..., **est.demand_fields())``."""
        return {"input_bytes": self.input_bytes(), "input_total": self.total}

    def for_node(self, node: str, cost: CostModel) -> NodeTransfer:
        move, sources = 0, {}
        for o in self.objects:
            if o.local_to(node):
                continue
            move += o.size
            holders = sorted(o.nodes) or ["?"]  # "?": arriving elsewhere only, or a by-value arg in flight
            for h in holders:
                sources[h] = sources.get(h, 0) + o.size // len(holders)
        return NodeTransfer(node, self.local_bytes(node), move, cost.transfer_s(move), sources)

    def to_fetch(self, node: str) -> tuple[InputObject, ...]:
        """The inputs ``node`` still has to pull, largest first (the prefetch plan)."""
        return tuple(sorted((o for o in self.objects if not o.local_to(node)), key=lambda o: -o.size))


def build_estimate(located: Iterable[tuple[str, int | None, Iterable[str]]],
                   ledger: "TransferLedger | None" = None,
                   threshold: int = INLINE_THRESHOLD) -> TransferEstimate:
    """``located``: (key, size or None, holder nodes) per distinct input. Applies the module's rules."""
    objs, inline, unknown, keys = [], 0, [], set()
    for key, size, nodes in located:
        if key in keys:
            continue  # the same object twice in one call moves once
        keys.add(key)
        nodes = frozenset(nodes)
        if size is None or (size == 0 and not nodes):
            unknown.append(key)
        elif size <= threshold:
            inline += size
        else:
            arriving = ledger.arriving(key) - nodes if ledger else frozenset()
            objs.append(InputObject(key, int(size), nodes, arriving))
    return TransferEstimate(tuple(objs), inline, tuple(unknown))


class TransferLedger:
    """Which large objects fastgpu has sent (or is prefetching) to which node, so they count as local.

    Ray does not report an object on a node until its copy is complete; without this, a second subtask
    placed on the same node a moment later would be charged for moving the same bytes again, and would
    be spread to another node, moving them once more. Bounded: the oldest entries go first (by then the
    locator reports the copy itself, or it was evicted and must move again anyway).
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._to: "OrderedDict[str, set[str]]" = OrderedDict()

    def note(self, node: str, keys: Iterable[str]) -> None:
        for k in keys:
            self._to.setdefault(k, set()).add(node)
            self._to.move_to_end(k)
        while len(self._to) > self.max_entries:
            self._to.popitem(last=False)

    def arriving(self, key: str) -> frozenset[str]:
        return frozenset(self._to.get(key, ()))

    def forget_node(self, node: str) -> None:
        """A node died: whatever was moving to it is gone with it."""
        for k in list(self._to):
            self._to[k].discard(node)
            if not self._to[k]:
                del self._to[k]

    def __len__(self) -> int:
        return len(self._to)


def _mib(b: float) -> str:
    return f"{b / 2**20:.1f} MiB" if b >= 2**20 / 10 else f"{b / 1024:.0f} KiB"
