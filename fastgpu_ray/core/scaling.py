"""What the cluster can grow into, and what fastgpu asks Ray's autoscaler for. No Ray here.

``Scaling`` is one reading of the autoscaler (``fastgpu_ray.actors.autoscaler`` takes it on the head node): is
there an autoscaler, which node types it can launch (``None``: it runs but fastgpu could not learn its
types), how many nodes of each type are up or being launched. The router asks it one question per
subtask that no live node can take now: which node type could (``launch_for``). ``demand_bundles``
shapes the backlog as the resource request the autoscaler acts on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable


DEFAULT_NODE_IDLE_S = 60.0  # when the config does not say: KubeRay's default (Ray's cluster launcher: 300 s)


@dataclass(frozen=True)
class NodeType:
    """A node type the autoscaler can launch: GPUs per node (None: not declared, the launcher detects
    them when the node starts), and at most ``max_workers`` of them."""

    name: str
    gpus: int | None
    max_workers: int
    cpus: float = 0.0

    def describe(self) -> str:
        gpus = "? GPU(s)" if self.gpus is None else f"{self.gpus} GPU(s)"
        return f"{self.name} ({gpus} per node, at most {self.max_workers} node(s))"


@dataclass(frozen=True)
class Scaling:
    """``autoscaler``: an autoscaler runs on the cluster. ``types``: the node types it can launch (None:
    unknown). ``nodes``: type -> nodes up; ``launching``: type -> nodes being launched."""

    autoscaler: bool = False
    types: tuple[NodeType, ...] | None = ()
    nodes: dict = field(default_factory=dict)
    launching: dict = field(default_factory=dict)
    source: str = ""  # where the types were read (for explain and status)
    idle_timeout_s: float = DEFAULT_NODE_IDLE_S  # the autoscaler removes a node idle this long

    def hold_idle_s(self) -> float:
        """How long fastgpu keeps an idle GPU (and then its actors on an idle node) on this cluster: a
        fifth of the autoscaler's idle timeout, so that fastgpu never keeps a node up for long."""
        return max(self.idle_timeout_s / 5.0, 0.5)

    @property
    def known(self) -> bool:
        return self.types is not None

    def gpu_types(self) -> tuple[NodeType, ...]:
        """The launchable types that have GPUs or may have (not declared)."""
        return tuple(t for t in (self.types or ()) if (t.gpus is None or t.gpus > 0) and t.max_workers > 0)

    def launch_for(self, num_gpus: int, unseen_only: bool = False) -> NodeType | None:
        """The node type a subtask of ``num_gpus`` GPUs would wait for: one that can hold it, preferring
        one that is being launched, then one with room to launch another node, then the smallest; else
        one whose GPUs are not declared (the caller waits for it a bounded time). ``unseen_only``: only
        types with no node up (live nodes were found unable to hold it)."""
        cands = [t for t in self.gpu_types() if not (unseen_only and self.nodes.get(t.name))]
        fits = [t for t in cands if t.gpus is not None and t.gpus >= max(num_gpus, 1)]
        if not fits:
            return next((t for t in cands if t.gpus is None), None)
        return min(fits, key=lambda t: (not self.launching.get(t.name), not self.room(t), t.gpus, t.name))

    def room(self, t: NodeType) -> bool:
        """Whether the autoscaler may still launch a node of type ``t``."""
        return self.nodes.get(t.name, 0) + self.launching.get(t.name, 0) < t.max_workers

    def can_grow(self, num_gpus: int) -> bool:
        """Whether a node that could hold a ``num_gpus`` subtask may still be launched (or is coming)."""
        if not self.autoscaler:
            return False
        if not self.known:
            return True
        return any(self.room(t) or self.launching.get(t.name) for t in self.gpu_types()
                   if t.gpus is None or t.gpus >= max(num_gpus, 1))

    def largest(self) -> NodeType | None:
        ts = [t for t in self.gpu_types() if t.gpus is not None]
        return max(ts, key=lambda t: (t.gpus, t.name)) if ts else None


def parse_node_types(config: dict[str, Any]) -> tuple[NodeType, ...]:
    """Node types from a Ray cluster launcher config (``available_node_types``; the head type launches
    no workers unless it declares ``max_workers`` > 0). ``max_workers`` of a type defaults to the
    cluster's. A type with no ``resources`` (the launcher detects them at start) has ``gpus=None``."""
    if not isinstance(config, dict) or not isinstance(config.get("available_node_types"), dict):
        raise ValueError("not a Ray autoscaling config: no 'available_node_types' mapping")
    top = int(config.get("max_workers", 0) or 0)
    head = config.get("head_node_type")
    out = []
    for name, t in sorted(config["available_node_types"].items()):
        if not isinstance(t, dict):
            continue
        res = t.get("resources") or {}
        mx = int(t.get("max_workers", 0 if name == head else top) or 0)
        gpus = int(res.get("GPU", 0) or 0) if res else None
        out.append(NodeType(str(name), gpus, min(mx, top) if top else mx, float(res.get("CPU", 0) or 0)))
    return tuple(out)


def parse_idle_timeout(config: dict[str, Any]) -> float:
    """The autoscaler's node idle timeout in seconds (``idle_timeout_minutes``; Ray's default is 5)."""
    try:
        return float(config.get("idle_timeout_minutes", 5)) * 60.0
    except (TypeError, ValueError):
        return DEFAULT_NODE_IDLE_S


def demand_bundles(want_gpus: int, waiting: Iterable[float]) -> list[dict]:
    """The resource request for fastgpu's work: ``want_gpus`` one-GPU bundles for the work on live nodes
    (running and queued there: the autoscaler packs a request onto nodes' total capacity, so work that
    holds a node must be in it or the new nodes would be counted on that one), plus one bundle per
    waiting subtask of a GPU or more (``{"GPU": n}``) and one-GPU bundles for the waiting fractions."""
    out = [{"GPU": 1.0} for _ in range(max(int(want_gpus), 0))]
    frac = 0.0
    for g in waiting:
        if g >= 1:
            out.append({"GPU": float(math.ceil(g))})
        else:
            frac += g
    out += [{"GPU": 1.0} for _ in range(math.ceil(frac - 1e-9))]
    return out
