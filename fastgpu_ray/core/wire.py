"""What the driver sends a node scheduler with each subtask (plain data, pickled by Ray)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Payload:
    """What the worker needs for one call: cloudpickled (args, kwargs) and the top-level ObjectRefs."""

    blob: bytes
    refs: list
    # Refs inside by-value containers (lists, dicts): not resolved by Ray, but their bytes still have to
    # reach the worker, so the transfer cost counts them.
    nested_refs: list = field(default_factory=list)

    @property
    def has_refs(self) -> bool:
        """Whether it takes any ObjectRef (top-level or nested): data to wait for and to locate."""
        return bool(self.refs or self.nested_refs)

    @property
    def all_refs(self) -> list:
        """Every ObjectRef it takes, top-level then nested."""
        return list(self.refs) + list(self.nested_refs)


@dataclass
class FnBox:
    """Keeps the function's ObjectRef wrapped so Ray does not resolve it in the node scheduler."""

    key: str
    ref: Any


@dataclass(frozen=True)
class RouteInfo:
    """Why the driver chose this node (``fastgpu.explain`` shows it): the placement explanation over every
    candidate node, and history lines (the transfer term: bytes local, to move, from where)."""

    node_choice: Any = None
    history: tuple[str, ...] = ()
    learned: dict | None = None  # the driver's learned run time of this subtask's function (DurationModel.summary)
    input_bytes: int | None = None  # its arguments' bytes, refs included, where the sender knows them all


@dataclass(frozen=True)
class Call:
    """One subtask sent to a node scheduler (``NodeScheduler.submit``), as one argument: Ray serialises each
    argument of an actor call on its own, and five of them cost the driver about twice one's CPU
    (measured with a bare async actor: ~250 against ~140 us per call)."""

    sid: str
    opts: Any  # TaskOptions
    fn: FnBox
    payload: Payload
    info: RouteInfo
    counted: bool = False  # sent by the driver, which counts it (``NodeScheduler.report`` waits for it)


@dataclass(frozen=True)
class NodeReport:
    """What a node scheduler tells the driver about its node (``NodeScheduler.report``): ``projected``: the
    node as a new arrival would find it (``DispatchCore.projected_spec``), ``live``: as it is now,
    ``learned``: the run times it has learned (``DurationModel.summary``), ``queued``: subtasks queued,
    ``own``: with other jobs on the cluster, the GPUs this job may run on there as (seconds until a new
    arrival would start, outside load) each (``DispatchCore.own_slots``, the queue spread over them); None
    when the job is alone (every GPU is its own: ``projected`` says it all). ``handoff_bytes``: the largest
    input among the queued subtasks it could hand over (``handoff.largest_input``)."""

    projected: Any
    live: Any
    learned: dict
    queued: int
    own: list | None = None
    handoff_bytes: int = 0
