"""The GPU worker actor: holds one GPU in Ray (``num_gpus=1``) and runs batches of subtasks on it.

A batch call is ``run_batch(fn_keys, items, *fn_blobs_then_args)``: ObjectRef arguments arrive as
top-level arguments, so Ray resolves them on this worker's node. Each item's result is
``("ok", value)`` or ``("err", RayTaskError, is_oom)``: one subtask's error never fails the others.
The actor is threaded (``max_concurrency``) so that subtasks sharing the GPU by memory run concurrently;
the dispatcher decides what may run together.
"""
from __future__ import annotations

import os
import traceback
from dataclasses import dataclass
from typing import Any

import ray
from ray import cloudpickle
from ray.exceptions import RayTaskError

from . import context
from .errors import is_gpu_oom


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
    gpus: tuple[int, ...] = ()  # every GPU the subtask holds (a multi-GPU subtask runs in the first's worker)


def fill(blob: bytes, values: list) -> tuple[tuple, dict]:
    args, kwargs = cloudpickle.loads(blob)
    args = tuple(values[a.i] if isinstance(a, RefSlot) else a for a in args)
    kwargs = {k: values[v.i] if isinstance(v, RefSlot) else v for k, v in kwargs.items()}
    return args, kwargs


def run_items(fns: dict[str, Any], items: list[Item], values: list, make_ctx) -> list[tuple]:
    """Run each item in order; ``values`` holds every item's resolved refs back to back."""
    out, pos = [], 0
    for it in items:
        mine = values[pos:pos + it.nrefs]
        pos += it.nrefs
        fn = fns[it.fn_key]
        context._set(make_ctx(it))
        try:
            args, kwargs = fill(it.blob, mine)
            out.append(("ok", fn(*args, **kwargs)))
        except Exception as e:  # the subtask's own error is its result
            name = getattr(fn, "__qualname__", str(fn))
            out.append(("err", RayTaskError(name, traceback.format_exc(), e), is_gpu_oom(e)))
        finally:
            context._set(None)
    return out


@ray.remote(num_cpus=0, num_gpus=1, max_concurrency=64, max_restarts=0)
class GpuWorker:
    def __init__(self, node_id: str, monitor_name: str | None, namespace: str) -> None:
        self.node_id = node_id
        self.gpu_ids = tuple(int(g) for g in ray.get_gpu_ids())
        self.monitor = None
        if monitor_name:
            try:
                self.monitor = ray.get_actor(monitor_name, namespace=namespace)
            except ValueError:
                self.monitor = None
        self.fns: dict[str, Any] = {}

    def info(self) -> tuple[str, tuple[int, ...], int]:
        return self.node_id, self.gpu_ids, os.getpid()

    def run_batch(self, fn_keys: list[str], items: list[Item], *flat) -> list[tuple]:
        for k, blob in zip(fn_keys, flat):
            if k not in self.fns:
                self.fns[k] = cloudpickle.loads(blob)
        values = list(flat[len(fn_keys):])
        gpus = self.gpu_ids

        def make_ctx(it: Item):
            return context.SubtaskContext(it.sid, self.node_id, it.gpus or gpus, it.work_s, self.monitor, it.gpu_util)

        return run_items(self.fns, items, values, make_ctx)
