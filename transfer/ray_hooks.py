"""The Ray side of the transfer optimiser: ref test, prefetch to a node, link bandwidth probe.

Imports Ray; the cost model (``transfer.model``/``optimizer``) does not. The runtime calls these through
``make_optimizer`` and ``Prefetcher`` only.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from placement.cost import CostModel

from .bandwidth import ENV_VAR, LinkBandwidth, resolve_link_bandwidth
from .locate import RayObjectLocator
from .optimizer import TransferOptimizer


def is_object_ref(o: Any) -> bool:
    return isinstance(o, ray.ObjectRef)


def gpu_node_ids() -> list[str]:
    """Ids of the live nodes with GPUs (the runtime's one reading of this from ``ray.nodes()``)."""
    return [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU")]


def make_optimizer(cost: CostModel, origin: str | None = None, unwrap=None) -> TransferOptimizer:
    """A ``TransferOptimizer`` over the live cluster; ``origin`` defaults to this process's node."""
    if origin is None:
        origin = ray.get_runtime_context().get_node_id()
    return TransferOptimizer(RayObjectLocator(), cost, is_ref=is_object_ref, origin=origin, unwrap=unwrap)


@ray.remote(num_cpus=0, max_concurrency=16)
class _Puller:
    """Lives on one node; asking it to wait for objects with ``fetch_local`` makes that node pull them."""

    def pull(self, refs: list, timeout_s: float) -> int:
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s, fetch_local=True)
        return len(ready)


class Prefetcher:
    """Starts pulling objects to a node ahead of the subtask that needs them (fire and forget).

    One small actor per node (0 CPUs, hard node affinity), created on first use. The refs travel nested
    in a list so Ray does not resolve them into the actor's memory: ``ray.wait(fetch_local=True)`` only
    makes the node's object store pull them, and Ray deduplicates concurrent pulls of one object. A
    prefetch that fails (node gone) costs nothing: the subtask's own argument resolution pulls again.
    """

    def __init__(self, timeout_s: float = 600.0) -> None:
        self.timeout_s = timeout_s
        self._pullers: dict[str, Any] = {}
        self.calls = 0

    def _puller(self, node: str):
        p = self._pullers.get(node)
        if p is None:
            p = _Puller.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
            self._pullers[node] = p
        return p

    def start(self, nodes: Sequence[str]) -> None:
        """Create the pullers of ``nodes`` now (their worker processes start in the background)."""
        for n in nodes:
            self._puller(n)

    def prefetch(self, node: str, refs: Sequence[Any]) -> Any:
        """Start pulling ``refs`` to ``node``; returns the pull call's ref (nobody needs to wait on it)."""
        refs = [r for r in refs if is_object_ref(r)]
        if not refs:
            return None
        self.calls += 1
        return self._puller(node).pull.remote(list(refs), self.timeout_s)

    def forget(self, node: str) -> None:
        self._pullers.pop(node, None)

    def close_node(self, node: str) -> None:
        a = self._pullers.pop(node, None)
        if a is not None:
            ray.kill(a)

    def close(self) -> None:
        for a in self._pullers.values():
            ray.kill(a)
        self._pullers.clear()


@ray.remote(num_cpus=0)
def _make_blob(nbytes: int):
    import numpy as np

    return np.ones(nbytes, dtype=np.uint8)


@ray.remote(num_cpus=0)
def _timed_pull(refs: list) -> float:
    t0 = time.perf_counter()
    ray.wait(refs, num_returns=1, fetch_local=True)
    return time.perf_counter() - t0


def measure_link_bandwidth(src: str, dst: str, nbytes: int = 64 * 2**20) -> float:
    """Bytes/s of one Ray object transfer from node ``src`` to node ``dst`` (Ray node id hex).

    What "the link" means to placement: an object store to object store pull, protocol overhead
    included. Takes about nbytes / bandwidth plus two task starts.
    """
    if src == dst:
        raise ValueError("measuring a link needs two different nodes")
    pin = lambda n: NodeAffinitySchedulingStrategy(n, soft=False)  # noqa: E731
    blob = _make_blob.options(scheduling_strategy=pin(src)).remote(nbytes)
    ray.wait([blob], fetch_local=False)
    secs = ray.get(_timed_pull.options(scheduling_strategy=pin(dst)).remote([blob]))
    return nbytes / max(secs, 1e-6)


def cluster_link_bandwidth(explicit=None, probe: bool = True, environ=None) -> LinkBandwidth:
    """The bandwidth in force: explicit / ``FASTGPU_LINK_BANDWIDTH`` / measured between two live nodes
    with GPUs (when the cluster has two and ``probe``) / the fallback. See ``transfer.bandwidth``."""
    import os

    env = os.environ if environ is None else environ
    measured = None
    if probe and explicit is None and not (env.get(ENV_VAR) or "").strip():
        nodes = gpu_node_ids()
        if len(nodes) >= 2:
            try:
                measured = measure_link_bandwidth(nodes[0], nodes[1])
            except Exception:  # a probe must never stop the runtime: fall back to the constant
                measured = None
    return resolve_link_bandwidth(explicit, env, measured=measured)
