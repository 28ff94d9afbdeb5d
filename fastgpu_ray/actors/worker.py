"""The processes that run subtasks: ``GpuWorker`` holds one GPU in Ray (``num_gpus=1``, the lease) and runs
a GPU's first slot; ``SlotWorker`` is a further slot on GPUs a lease holds (``num_gpus=0``, ``num_cpus``
declared), a process of its own so that subtasks packed on one GPU do not share a GIL
(``fastgpu_ray.core.slots`` keeps the pool). Both are started by Ray's raylet as fresh worker processes (never
forked from a running worker); a slot sets ``CUDA_VISIBLE_DEVICES`` to its GPUs in ``__init__``, before
anything in it can initialise CUDA.

A batch call is ``run_batch(fn_keys, items, *fn_blobs_then_args)``: ObjectRef arguments arrive as
top-level arguments, so Ray resolves them on this worker's node. Each item's result is
``("ok", value)`` or ``("err", RayTaskError, is_oom)``: one subtask's error never fails the others.
The lease is threaded (``max_concurrency``): where no slot process can be started (no CPU for it on the
node) a packed subtask runs as a thread beside the first (the pool says so in its history).

Subtasks run on the runner's own threads (``warm_threads.WarmThreads``), not on the Ray thread that
received the call: Ray hands a threaded actor's calls to any thread of its pool, and glibc serves each
thread from its own malloc arena (up to 8 per core), so a large array allocated on a thread whose arena had
not held one was page-faulted in afresh: 400-800 page faults and 10-35 ms of CPU for a 16 MiB numpy op
that takes 1-2 ms on a warm thread (docs/BENCHMARKS.md, pipeline). The next call goes to the thread that
went idle last, so consecutive subtasks run on one thread and reuse its memory.
"""
from __future__ import annotations

import os
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any

import ray
from ray import cloudpickle
from ray.exceptions import RayTaskError

from transfer.args import value_size

from .. import context
from ..errors import is_gpu_oom
from . import gpu_memory
from .warm_threads import WarmThreads


class RefSlot:
    """Marks where a top-level ObjectRef argument goes back after Ray resolved it on the worker."""

    __slots__ = ("i",)

    def __init__(self, i: int) -> None:
        self.i = i


@dataclass(frozen=True)
class Item:
    """One subtask as the worker receives it: ``blob`` = cloudpickled (args, kwargs) with RefSlots."""

    sid: str
    fn_key: str
    blob: bytes
    nrefs: int
    work_s: float = 0.0
    gpu_util: float = 0.0
    gpus: tuple[int, ...] = ()  # every GPU the subtask holds
    gpu_memory_mib: int = 0  # what it declared (or a retry after an OOM asks for): its slot's torch cap


def fill(blob: bytes, values: list) -> tuple[tuple, dict]:
    args, kwargs = cloudpickle.loads(blob)
    args = tuple(values[a.i] if isinstance(a, RefSlot) else a for a in args)
    kwargs = {k: values[v.i] if isinstance(v, RefSlot) else v for k, v in kwargs.items()}
    return args, kwargs


def run_items(fns: dict[str, Any], items: list[Item], values: list, make_ctx, set_cap=None,
              times: list | None = None, sharing=lambda: 1) -> list[tuple]:
    """Run each item in order; ``values`` holds every item's resolved refs back to back. ``set_cap``:
    called with each item's declared memory before it runs; returns whether torch's allocator is capped
    at it now (``gpu_memory``; only where the process runs nothing else).
    ``times``: gets (CPU seconds of the running thread, wall seconds, calls running in this process when
    it started: ``sharing()``, input bytes) per item: how much of its run a subtask holds the CPU (Python
    code: the GIL), which decides whether its packed runs need processes of their own (``slots``); and
    the bytes of its arguments (``transfer.args.value_size`` of the resolved refs plus the pickled rest),
    which learned run times scale with (``placement.durations``)."""
    out, pos = [], 0
    for it in items:
        mine = values[pos:pos + it.nrefs]
        pos += it.nrefs
        fn = fns[it.fn_key]
        context._set(make_ctx(it))
        c0, w0, k = time.thread_time(), time.perf_counter(), sharing()
        capped = False
        try:
            capped = bool(set_cap(it.gpu_memory_mib)) if set_cap is not None else False
            args, kwargs = fill(it.blob, mine)
            out.append(("ok", fn(*args, **kwargs)))
        except Exception as e:  # the subtask's own error is its result
            name = getattr(fn, "__qualname__", str(fn))
            oom = is_gpu_oom(e)
            cause = gpu_memory.over_declaration(it.sid, it.gpu_memory_mib, e, capped=capped) if oom else e
            out.append(("err", RayTaskError(name, traceback.format_exc(), cause), oom))
        finally:
            context._set(None)
            if times is not None:
                times.append((time.thread_time() - c0, time.perf_counter() - w0, k,
                              len(it.blob) + sum(value_size(v) for v in mine)))
    return out


class Runner:
    """One process that runs subtasks. ``gpus``: None for the lease (the GPU Ray gave it), else the GPUs
    this slot runs on (held by leases in the same node scheduler)."""

    def __init__(self, node_id: str | None, monitor_name: str | None, namespace: str,
                 gpus: tuple[int, ...] | None = None) -> None:
        """``node_id`` None: wherever Ray placed it (and that node's monitor)."""
        if node_id is None:
            from .monitor import monitor_name as name_of

            node_id = ray.get_runtime_context().get_node_id()
            monitor_name = name_of(node_id)
        if gpus is not None:  # Ray set it empty (a worker without GPUs): CUDA is not initialised yet
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
        self.node_id = node_id
        self.gpu_ids = tuple(gpus) if gpus is not None else tuple(int(g) for g in ray.get_gpu_ids())
        self.monitor = None
        if monitor_name:
            try:
                self.monitor = ray.get_actor(monitor_name, namespace=namespace)
            except ValueError:
                self.monitor = None
        self.fns: dict[str, Any] = {}
        self._calls = 0
        self._lock = threading.Lock()
        self._threads = WarmThreads("fastgpu-subtask")

    def info(self) -> tuple[str, tuple[int, ...], int]:
        return self.node_id, self.gpu_ids, os.getpid()

    def run_batch(self, fn_keys: list[str], items: list[Item], *flat) -> tuple[list[tuple], list[tuple]]:
        """(each item's result, each item's (CPU s, wall s, sharing, input bytes)), run on one of the
        runner's own threads (module docstring: why)."""
        return self._threads.run(self._run_batch, fn_keys, items, flat)

    def _run_batch(self, fn_keys: list[str], items: list[Item], flat: tuple) -> tuple[list[tuple], list[tuple]]:
        for k, blob in zip(fn_keys, flat):
            if k not in self.fns:
                self.fns[k] = cloudpickle.loads(blob)
        values = list(flat[len(fn_keys):])
        gpus = self.gpu_ids

        def make_ctx(it: Item):
            return context.SubtaskContext(it.sid, self.node_id, it.gpus or gpus, it.work_s, self.monitor, it.gpu_util)

        def set_cap(declared_mib: int) -> bool:
            # The cap is process-wide: only a call running alone here is capped (a thread beside another
            # lifts it). Decided per item under the lock, so a call joining mid-batch lifts it for both.
            with self._lock:
                return gpu_memory.cap(declared_mib if self._calls == 1 else 0)

        with self._lock:
            self._calls += 1
            if self._calls > 1:
                gpu_memory.cap(0)
        times: list = []
        try:
            return run_items(self.fns, items, values, make_ctx, set_cap=set_cap, times=times,
                             sharing=lambda: self._calls), times
        finally:
            with self._lock:
                self._calls -= 1
                if not self._calls:  # an idle slot keeps no cached GPU memory from its last subtask
                    gpu_memory.release_cache()


@ray.remote(num_cpus=0, num_gpus=1, max_concurrency=64, max_restarts=0)
class GpuWorker(Runner):
    """The lease: holds one GPU in Ray for as long as fastgpu keeps it, and runs its first slot."""


@ray.remote(num_gpus=0, max_concurrency=2, max_restarts=0)
class SlotWorker(Runner):
    """A further slot: ``num_cpus`` (the subtasks' declaration) set at ``.options``; one call at a time."""
