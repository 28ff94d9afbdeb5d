"""The transfer optimiser inside fastgpu: ``RuntimeTransfer``, one per session, owned by the driver's
``Session`` and passed in where it is used (the driver's routing; a ``DispatchCore`` given one, as the
backend is), never a process-wide instance.

* ``inputs(payload)`` -> ``TransferEstimate`` (called by ``fastgpu_ray.core.demand.build_demand``): the
  payload's ObjectRefs located with ``get_object_locations``, plus a large pickled-arguments blob, which
  starts on the dispatcher's node. Subtasks without refs or large values cost no lookup at all.
* ``placed(payloads, node)``: the subtasks were sent to ``node``: their large inputs count as arriving
  there from now on (dedup), and the node starts pulling them at once (prefetch), while its GPU may
  still be finishing earlier work.
* ``after_place(...)``: the dispatcher's one call after each placement decision: explanation line,
  ``placed`` (above). Waiting for a busy node that holds the data is not decided here: the dispatcher
  shows busy GPUs with their expected wait (``busy_s``) and the policy's finish time weighs it.

The link bandwidth is resolved once per session (``transfer.bandwidth`` precedence; the cluster probe
runs in a background thread and the fallback is used until it answers); ``cost()`` is the cost model at
that bandwidth, which the driver's routing policy is built with.
"""
from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any, Iterable

from placement import cost as cost_mod

from .args import INLINE_THRESHOLD
from .bandwidth import LinkBandwidth, resolve_link_bandwidth
from .model import VALUE_KEY, TransferEstimate, build_estimate

log = logging.getLogger("fastgpu.transfer")

# Where a subtask's inputs are, re-asked at most this often: a copy only appears where some task pulled
# it (ours are in the ledger at once), so a second-old answer is good; an input still being produced
# is asked again sooner, to learn where it landed.
CACHE_S = 1.0
CACHE_PENDING_S = 0.1


class RuntimeTransfer:
    """The dispatcher's transfer state. Built with no arguments it uses Ray (``transfer.ray_hooks``);
    tests pass an optimiser over a fake locator, a fake prefetcher and ``is_ref``, and no probe."""

    def __init__(self, opt: Any = None, prefetcher: Any = None, *, is_ref=None, probe=None,
                 gpu_nodes=None, environ=None) -> None:
        if opt is None:
            from . import ray_hooks

            opt = ray_hooks.make_optimizer(cost_mod.CostModel())
            prefetcher = ray_hooks.Prefetcher()
            is_ref = ray_hooks.is_object_ref
            probe = lambda: ray_hooks.cluster_link_bandwidth(probe=True)  # noqa: E731
            gpu_nodes = ray_hooks.gpu_node_ids
        self.opt, self.prefetcher = opt, prefetcher
        self.is_ref = is_ref or opt.is_ref
        self._probe, self._gpu_nodes = probe, gpu_nodes
        self.bandwidth: LinkBandwidth = resolve_link_bandwidth(None, environ, measured=None)
        self.opt.cost = self.cost()
        self._cache: dict[int, tuple[float, list, Any]] = {}
        self._pullers_started = gpu_nodes is None
        self._probe_started = probe is None or self.bandwidth.source != "fallback"

    # --------------------------------------------------------------------------------- bandwidth
    def _start_probe(self) -> None:
        """Measure a link once, in the background, the first time a subtask moves data."""
        if self._probe_started:
            return
        self._probe_started = True

        def run():
            bw = self._probe()
            self.bandwidth = bw
            self.opt.cost = self.cost()
            log.info("link bandwidth: %s", bw)

        threading.Thread(target=run, name="fastgpu-link-probe", daemon=True).start()

    def cost(self) -> "cost_mod.CostModel":
        """The cost model at this session's link bandwidth (what routing's policy prices transfers with)."""
        return cost_mod.CostModel(link_bandwidth=self.bandwidth.bytes_per_s)

    # -------------------------------------------------------------------------------------- hooks
    def inputs(self, payload: Any) -> TransferEstimate | None:
        refs = list(getattr(payload, "refs", ()) or ()) + list(getattr(payload, "nested_refs", ()) or ())
        blob = getattr(payload, "blob", b"") or b""
        if not refs and len(blob) <= INLINE_THRESHOLD:
            return None
        now = time.monotonic()
        hit = self._cache.get(id(payload))
        if hit and hit[2]() is not payload:  # id() reused by a newer payload: not this one's answer
            hit = None
        if hit and now - hit[0] < (CACHE_PENDING_S if any(sz is None for _, sz, _ in hit[1]) else CACHE_S):
            located = hit[1]
        else:  # where the objects are: one lookup per subtask and round
            refs = [r for r in refs if self.is_ref(r)]
            locs = self.opt.locator.locate(refs) if refs else []
            located = [(r.hex(), loc.size, loc.nodes) for r, loc in zip(refs, locs)]
            if len(blob) > INLINE_THRESHOLD:  # Ray puts it in the dispatcher node's store for the worker call
                located.append((f"{VALUE_KEY}{id(payload)}", len(blob), [self.opt.origin]))
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[id(payload)] = (now, located, _weak(payload))
        est = build_estimate(located, self.opt.ledger)  # the ledger changes within a round: never cached
        if est.total:
            self._start_probe()
            self._start_pullers()
        return est

    def _start_pullers(self) -> None:
        """Once a subtask moves data, every GPU node gets its (idle, 0-CPU) puller, so that a prefetch
        does not wait for a worker process to start."""
        if self._pullers_started:
            return
        self._pullers_started = True
        try:
            self.prefetcher.start(self._gpu_nodes())
        except Exception:
            log.exception("starting prefetch actors failed")

    def placed(self, payloads: Iterable[Any], node: str) -> None:
        for p in payloads:
            est = self.inputs(p)
            if est is None or not est.total:
                continue
            fetch = self.opt.placed(est, node)
            refs = [r for r in list(getattr(p, "refs", ()) or ()) + list(getattr(p, "nested_refs", ()) or ())
                    if self.is_ref(r)]
            wanted = {o.key for o in fetch}
            if not wanted:
                continue
            try:
                self.prefetcher.prefetch(node, [r for r in refs if r.hex() in wanted])
            except Exception:  # prefetch is an optimisation: the worker call pulls the data anyway
                log.exception("prefetch to %s failed", node)

    def node_lost(self, node: str) -> None:
        self.opt.node_lost(node)
        self.prefetcher.forget(node)

    def node_idle(self, node: str) -> None:
        """The session has nothing on ``node`` (autoscaling cluster): its puller goes, so that Ray may see
        the node idle; a later prefetch there starts a new one."""
        self.prefetcher.close_node(node)


def _weak(obj: Any):
    try:
        return weakref.ref(obj)
    except TypeError:  # not weak-referenceable: never trust the cache for it
        return lambda: None


def has_inputs(payload: Any) -> bool:
    """Cheap: does this payload carry anything worth locating (refs, or a blob over the threshold)?"""
    return bool(getattr(payload, "refs", None) or getattr(payload, "nested_refs", None)
                or len(getattr(payload, "blob", b"") or b"") > INLINE_THRESHOLD)


def after_place(core: Any, state: Any, pol: Any, st: Any, d: Any, dec: Any) -> None:
    """The dispatcher's one call after placement chose ``dec`` for subtask ``st``.

    Records the transfer term in the subtask's history (``fastgpu.explain``: bytes local, bytes to move,
    from which nodes), counts its large inputs as arriving at the chosen node (dedup) and starts pulling
    them there (prefetch: the subtask may still wait for that node's GPU). Whether to wait for a busy GPU
    is the policy's finish-time decision on the dispatcher's snapshot, not made here. Subtasks without
    large inputs return at once.
    """
    rt = getattr(core, "transfer", None)
    if rt is None or not d.input_total:
        return
    node = state.names[dec.node]
    est = rt.inputs(st.payload)
    if est is not None and est.total:
        cost = getattr(pol, "cost", None) or rt.cost()
        line = f"transfer to {node[:12]}: " + est.for_node(node, cost).describe()
        if not st.record.history or st.record.history[-1] != line:  # (placed again while its worker starts)
            st.record.history.append(line)
        rt.placed([st.payload], node)
