"""The transfer optimiser as the runtime uses it: arguments in, ``Demand`` fields and a prefetch plan out.

    opt = TransferOptimizer(RayObjectLocator(), cost, is_ref=is_object_ref, origin=my_node_id)
    est = opt.estimate(args, kwargs)                       # one locator call per subtask
    demand = Demand(..., **est.demand_fields())            # placement scores finish time with it
    fetch = opt.placed(est, chosen_node)                   # dedup: now counts as arriving there
    prefetcher.prefetch(chosen_node, [refs of fetch])      # pull while the GPU finishes other work
    opt.explain(est, candidate_nodes)                      # the transfer term per node, for explain()

No Ray import: the locator, ``is_ref`` and the prefetcher are passed in.
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable, Mapping, Sequence

from placement.cost import CostModel

from .args import INLINE_THRESHOLD, IsRef, find_refs, large_values
from .locate import ObjectLocator, ref_key
from .model import VALUE_KEY, InputObject, NodeTransfer, TransferEstimate, TransferLedger, build_estimate

_value_ids = itertools.count()


class TransferOptimizer:
    """Locates a subtask's inputs and remembers what it has sent where (``ledger``).

    ``origin``: the node where by-value arguments start (the node of the process that submits subtasks;
    Ray puts a large by-value argument in that node's object store). ``None``: unknown, counted as
    "must move" everywhere.
    """

    def __init__(self, locator: ObjectLocator, cost: CostModel, *, is_ref: IsRef,
                 origin: str | None = None, threshold: int = INLINE_THRESHOLD,
                 ledger: TransferLedger | None = None,
                 unwrap: Callable[[Any], Any] | None = None) -> None:
        if threshold < 0:
            raise ValueError(f"inline threshold must be >= 0 bytes, got {threshold}")
        self.locator, self.cost, self.is_ref = locator, cost, is_ref
        self.origin, self.threshold = origin, threshold
        self.ledger = ledger if ledger is not None else TransferLedger()
        self.unwrap = unwrap  # the runtime's ref wrapper -> the ref inside (or the object unchanged)

    def refs(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[Any]:
        """The distinct ObjectRefs anywhere in the arguments (through the runtime's wrappers)."""
        is_ref = self.is_ref
        if self.unwrap is not None:
            unwrap = self.unwrap
            found = find_refs(args, kwargs, lambda o: is_ref(unwrap(o)), key=lambda o: ref_key(unwrap(o)))
            return [unwrap(o) for o in found]
        return find_refs(args, kwargs, is_ref, key=ref_key)

    def estimate(self, args: Sequence[Any], kwargs: Mapping[str, Any] | None = None) -> TransferEstimate:
        kwargs = kwargs or {}
        refs = self.refs(args, kwargs)
        located = [(ref_key(r), loc.size, loc.nodes) for r, loc in zip(refs, self.locator.locate(refs))]
        is_ref = self.is_ref if self.unwrap is None else (lambda o: self.is_ref(self.unwrap(o)))
        for name, size in large_values(args, kwargs, is_ref, self.threshold).items():
            # Each call puts its own copy: a fresh key, never deduplicated with another call's.
            located.append((f"{VALUE_KEY}{name}#{next(_value_ids)}", size, [self.origin] if self.origin else []))
        return build_estimate(located, self.ledger, self.threshold)

    def placed(self, est: TransferEstimate, node: str) -> tuple[InputObject, ...]:
        """Record that the subtask goes to ``node``; returns what ``node`` must pull (the prefetch plan).

        After this, other subtasks see those objects as arriving at ``node`` (local there).
        """
        fetch = est.to_fetch(node)
        self.ledger.note(node, [o.key for o in fetch if not o.by_value])
        return fetch

    def node_lost(self, node: str) -> None:
        self.ledger.forget_node(node)

    def explain(self, est: TransferEstimate, nodes: Iterable[str]) -> dict[str, NodeTransfer]:
        """The transfer term per candidate node: bytes local, bytes to move, from which nodes, seconds."""
        return {n: est.for_node(n, self.cost) for n in nodes}
