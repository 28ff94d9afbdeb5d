"""The user API: ``@fastgpu.task``, ``f.remote / map / options / run``, ``get``, ``explain``, ``status``."""
from __future__ import annotations

import functools
import itertools
import os
import time
from typing import Any, Callable, Generic, Iterable, ParamSpec, TypeVar, overload

import ray
from ray import ObjectRef, cloudpickle

from transfer import find_refs

from . import session
from .dispatch import Record
from .options import TaskOptions, make_options, parse_memory_mib
from .progress import Progress
from .cluster_status import ClusterStatus
from .worker import RefSlot

P = ParamSpec("P")
R = TypeVar("R")

MAP_CHUNK = 64  # subtasks per dispatcher call in ``map`` (one call, num_returns=len(chunk))
_ids = itertools.count()
_PID = os.getpid()


def _wire(opts: TaskOptions) -> TaskOptions:
    """The options as the dispatcher sees them: without the driver-side split/combine callables."""
    import dataclasses
    return dataclasses.replace(opts, split=None, combine=None)


def _payload(args: tuple, kwargs: dict):
    from .dispatcher import Payload

    refs: list = []

    def slot(v):
        if isinstance(v, ObjectRef):
            refs.append(v)
            return RefSlot(len(refs) - 1)
        return v

    a = tuple(slot(v) for v in args)
    k = {name: slot(v) for name, v in kwargs.items()}
    top = {id(r) for r in refs}
    nested = [r for r in find_refs(args, kwargs, lambda v: isinstance(v, ObjectRef)) if id(r) not in top]
    return Payload(cloudpickle.dumps((a, k)), refs, nested)


class RemoteFunction(Generic[P, R]):
    """A function decorated with ``@fastgpu.task``. Calling it directly runs it locally."""

    def __init__(self, fn: Callable[P, R], opts: TaskOptions) -> None:
        self._fn = fn
        self._opts = opts
        self._wire_opts = _wire(opts)
        self._key = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}-{_PID}-{id(fn)}"
        functools.update_wrapper(self, fn)

    @property
    def task_options(self) -> TaskOptions:
        return self._opts

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._fn(*args, **kwargs)

    def _fnbox(self, s: session.Session):
        from .dispatcher import FnBox

        ref = s.fn_refs.get(self._key)
        if ref is None:
            ref = s.fn_refs[self._key] = ray.put(cloudpickle.dumps(self._fn))
        return FnBox(self._key, ref)

    def _sid(self) -> str:
        return f"{self._fn.__name__}-{next(_ids)}"

    def remote(self, *args: P.args, **kwargs: P.kwargs) -> "ObjectRef[R]":
        """Queue one subtask; returns its ObjectRef at once (it may still wait in fastgpu's queue)."""
        s = session.current()
        sid = self._sid()
        ref = s.dispatcher.submit.remote(sid, self._wire_opts, self._fnbox(s), _payload(args, kwargs))
        s.sids[ref.hex()] = sid
        return ref

    def map(self, items: Iterable[Any], *, chunk_size: int | None = None) -> "list[ObjectRef[R]]":
        """One subtask per item (``f(item)``); the refs come back in the items' order.

        Items go to the dispatcher in chunks (one call each; a chunk's refs become ready together).
        Default: one by one for subtasks that declare ``work_s`` (they are worth placing one by one),
        else chunks of up to 64, at least ~32 chunks per map so results still stream back.
        """
        items = list(items)
        if chunk_size is None:
            chunk_size = 1 if self._opts.work_s > 0.05 else max(1, min(MAP_CHUNK, len(items) // 32))
        if chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size!r}: must be >= 1")
        s = session.current()
        box = self._fnbox(s)
        refs: list = []
        for i in range(0, len(items), chunk_size):
            chunk = items[i:i + chunk_size]
            sids = [self._sid() for _ in chunk]
            payloads = [_payload((x,), {}) for x in chunk]
            if len(chunk) == 1:
                out = [s.dispatcher.submit.remote(sids[0], self._wire_opts, box, payloads[0])]
            else:
                out = s.dispatcher.submit_many.options(num_returns=len(chunk)).remote(
                    sids, self._wire_opts, box, payloads)
            for r, sid in zip(out, sids):
                s.sids[r.hex()] = sid
            refs.extend(out)
        return refs

    def options(self, **kw: Any) -> "RemoteFunction[P, R]":
        """A copy with some options changed (validated like the decorator's)."""
        return RemoteFunction(self._fn, make_options(self._opts, **kw))

    def run(self, x: Any, *, progress: bool = False) -> Any:
        """Decompose and aggregate: ``combine([f(part) for part in split(x)])``, the parts mapped over the
        cluster."""
        if self._opts.split is None:
            raise ValueError(f"{self._fn.__name__}.run() needs split= and combine= in @fastgpu.task(...)")
        parts = list(self._opts.split(x))
        return self._opts.combine(get(self.map(parts), progress=progress))


@overload
def task(fn: Callable[P, R], /) -> RemoteFunction[P, R]: ...


@overload
def task(*, num_gpus: float = 1, gpu_memory: Any = None, priority: int = 0, max_retries: int = 3,
         work_s: float = 0.0, gpu_util: float = 0.0, gpu_types: tuple[str, ...] = (), split: Callable | None = None,
         combine: Callable | None = None, batch: bool = True) -> Callable[[Callable[P, R]], RemoteFunction[P, R]]: ...


def task(fn=None, /, **kw):
    """``@fastgpu.task`` or ``@fastgpu.task(num_gpus=1, gpu_memory="10GiB", priority=5, max_retries=3)``.

    Options are validated here (bad values raise ValueError naming the argument); see ``TaskOptions``.
    """
    if fn is not None:
        if kw or not callable(fn):
            raise TypeError("use @fastgpu.task or @fastgpu.task(option=value, ...)")
        return RemoteFunction(fn, make_options())
    opts = make_options(**kw)

    def deco(f: Callable[P, R]) -> RemoteFunction[P, R]:
        return RemoteFunction(f, opts)

    return deco


def get(refs, *, progress: bool = False, timeout: float | None = None):
    """Like ``ray.get``; with ``progress=True`` and several refs, draws a progress bar on stderr."""
    if not progress or isinstance(refs, ObjectRef) or len(refs) < 2:
        return ray.get(refs, timeout=timeout)
    bar = Progress(len(refs))
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=len(pending), timeout=0.2, fetch_local=False)
        bar.update(len(done))
    bar.close()
    return ray.get(refs, timeout=timeout)


def explain(ref: ObjectRef) -> Record:
    """Where the subtask behind ``ref`` ran and why: node, GPU, policy, candidates with score terms,
    time queued, retries (``print(fastgpu.explain(ref).format())``)."""
    s = session.current()
    sid = s.sids.get(ref.hex())
    if sid is None:
        raise ValueError(f"{ref} is not the ref of a fastgpu subtask of this session")
    rec = ray.get(s.dispatcher.explain.remote(sid))
    if rec is None:
        raise ValueError(f"no record left for subtask {sid} (records of old subtasks are dropped)")
    return rec


def status() -> ClusterStatus:
    """Per node and GPU: model, utilisation, memory, outside processes, fastgpu subtasks; queue length."""
    d = session.dispatcher()
    deadline = time.monotonic() + 20.0
    while True:  # a node's monitor may still be starting (first call after init): wait for its reading
        ray.get(d.refresh.remote())
        st = ray.get(d.status.remote())
        if all(g.util is not None for g in st.gpus) or time.monotonic() > deadline:
            return st
        time.sleep(0.5)


def gpu_nodes() -> list[str]:
    """Ids of the live nodes with GPUs, in a stable order (for ``set_emulated_gpu``)."""
    return sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("GPU", 0) > 0)


def set_emulated_gpu(node_id: str, index: int, *, util: float | None = None, memory_used: Any = None,
                     processes: int | None = None, memory: Any = None) -> None:
    """Set an emulated GPU's external load (``util`` 0..1, ``memory_used``, ``processes`` outside
    fastgpu) or its memory size (``memory``). Raises ValueError on a node with real (NVML) GPUs."""
    kw: dict[str, Any] = {}
    if util is not None:
        kw["util"] = float(util)
    if memory_used is not None:
        kw["memory_used_mib"] = parse_memory_mib(memory_used, "memory_used")
    if processes is not None:
        kw["processes"] = int(processes)
    if memory is not None:
        kw["memory_mib"] = parse_memory_mib(memory, "memory")
    ray.get(session.dispatcher().set_emulated.remote(node_id, index, kw))
