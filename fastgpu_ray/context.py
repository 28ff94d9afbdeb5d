"""Inside a running subtask: which GPU it is on, and the emulated-work model (``emulate_work``)."""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

_local = threading.local()


@dataclass(frozen=True)
class SubtaskContext:
    subtask_id: str
    node_id: str
    gpu_ids: tuple[int, ...]
    work_s: float = 0.0
    monitor: Any = None  # the node's monitor actor handle
    gpu_util: float = 0.0  # the task's declared gpu_util


def current() -> SubtaskContext | None:
    """The context of the fastgpu subtask running in this thread, or None outside one."""
    return getattr(_local, "ctx", None)


def _set(ctx: SubtaskContext | None) -> None:
    _local.ctx = ctx


def gpu_ids() -> list[int]:
    """GPU indices (on this node) of the running subtask; outside fastgpu, Ray's ``get_gpu_ids()``."""
    ctx = current()
    if ctx is not None:
        return list(ctx.gpu_ids)
    import ray
    return [int(g) for g in ray.get_gpu_ids()]


def emulate_work(seconds: float | None = None, *, util: float | None = None) -> float:
    """Stand-in for GPU work: sleeps ``seconds`` (default: the task's ``work_s``) times
    ``placement.cost.slowdown(u)``, where ``u`` is the GPU's utilisation by everything else (its
    external load plus the other emulated work running on it) when the work starts. While it runs, this
    work adds ``util`` (default: the task's ``gpu_util``, else 0.05) to the GPU's utilisation. Works in fastgpu subtasks and in plain Ray tasks that hold
    a GPU (for side-by-side comparisons). Returns the seconds slept."""
    import ray

    ctx = current()
    if seconds is None:
        seconds = ctx.work_s if ctx is not None else 0.0
    if util is None:
        util = ctx.gpu_util if ctx is not None and ctx.gpu_util > 0 else 0.05
    if seconds < 0:
        raise ValueError(f"emulate_work(seconds={seconds!r}): must be >= 0")
    if ctx is not None:
        node, gpus, mon = ctx.node_id, ctx.gpu_ids, ctx.monitor
    else:
        node = ray.get_runtime_context().get_node_id()
        gpus = tuple(int(g) for g in ray.get_gpu_ids())
        mon = None
    if not gpus:
        raise RuntimeError("emulate_work() needs a GPU: call it in a fastgpu subtask or a Ray task with num_gpus")
    if mon is None:
        mon = _node_monitor(node)
    token, factor = ray.get(mon.work_begin.remote(gpus[0], util, os.getpid()))
    try:
        dt = seconds * factor
        time.sleep(dt)
    finally:
        mon.work_end.remote(gpus[0], token)
    return dt


def gpu_memory_total_mib() -> int:
    """Total memory of the running subtask's (first) GPU as its monitor reports it (emulated or NVML)."""
    import ray

    ctx = current()
    node = ctx.node_id if ctx else ray.get_runtime_context().get_node_id()
    mon = (ctx.monitor if ctx else None) or _node_monitor(node)
    tel = ray.get(mon.read.remote())
    g = gpu_ids()[0]
    return next(r.memory_total_mib for r in tel.gpus if r.index == g)


MONITOR_WAIT_S = 10.0  # a node's monitor starts with its first fastgpu work or a few seconds after init


def _node_monitor(node: str):
    """The monitor actor of ``node`` for code outside a fastgpu subtask (a plain Ray task emulating work
    beside fastgpu): fastgpu may start it a few seconds after ``init`` (``node_scheduler``), so wait for it
    up to ``MONITOR_WAIT_S``; then fail saying what it needs."""
    from .actors.monitor import monitor_for

    deadline = time.monotonic() + MONITOR_WAIT_S
    while True:
        try:
            return monitor_for(node)
        except ValueError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no fastgpu node monitor on node {node[:12]} after {MONITOR_WAIT_S:g} s: "
                                   "emulated GPUs need fastgpu.init(emulate=True) running in this cluster") from None
            time.sleep(0.1)
