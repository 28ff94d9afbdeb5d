"""The user API: ``@fastgpu.task``, ``f.remote / map / options / run``, ``get``, ``explain``, ``status``."""
from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import time
from typing import Any, Callable, Generic, Iterable, ParamSpec, TypeVar, overload

import ray
from ray import ObjectRef, cloudpickle

from transfer import find_refs

from . import session
from .actors.worker import RefSlot
from .cluster_status import ClusterStatus
from .core.records import Record
from .core.wire import Call
from .options import TaskOptions, make_options, parse_memory_mib
from .progress import Progress

P = ParamSpec("P")
R = TypeVar("R")

MAP_CHUNK = 64  # subtasks per node-scheduler call in ``map`` (one call, num_returns=len(chunk))
_ids = itertools.count()
_PID = os.getpid()


def _wire(opts: TaskOptions) -> TaskOptions:
    """The options as the node schedulers see them: without the driver-side split/combine callables."""
    return dataclasses.replace(opts, split=None, combine=None)


def _payload(args: tuple, kwargs: dict):
    from .core.wire import Payload

    refs: list = []

    def slot(v):
        if isinstance(v, ObjectRef):
            refs.append(v)
            return RefSlot(len(refs) - 1)
        return v

    a = tuple(slot(v) for v in args)
    k = {name: slot(v) for name, v in kwargs.items()}
    for r in refs:
        old = session.orphan_session(r.hex())
        if old is not None:
            raise ValueError(f"argument {r} is the ref of a subtask of fastgpu session {old}, which was shut "
                             "down before that subtask finished: it will never have a value. Submit its "
                             "producer again in this session (a ref that had finished is a plain Ray object "
                             "and can be passed)")
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
        from .core.wire import FnBox

        ref = s.fn_refs.get(self._key)
        if ref is None:
            ref = s.fn_refs[self._key] = ray.put(cloudpickle.dumps(self._fn))
        return FnBox(self._key, ref)

    def _sid(self) -> str:
        return f"{self._fn.__name__}-{next(_ids)}"

    def remote(self, *args: P.args, **kwargs: P.kwargs) -> "ObjectRef[R]":
        """Queue one subtask; returns its ObjectRef at once (it may still wait in fastgpu's queue). The ref
        is the return of the chosen node's scheduler: the result is stored on the node that computes it."""
        s = session.current()
        sid = self._sid()
        payload = _payload(args, kwargs)
        with s.lock:  # the chosen node's scheduler does not retire between the choice and the call
            route, info = s.route(sid, self._wire_opts, payload, fn_key=self._key)
            return self._send(s, route, info, [sid], [payload], self._fnbox(s))[0]

    def map(self, items: Iterable[Any], *, chunk_size: int | None = None) -> "list[ObjectRef[R]]":
        """One subtask per item (``f(item)``); the refs come back in the items' order.

        Items go to the node schedulers in chunks (one call each; a chunk's refs become ready together).
        Default: one by one for subtasks whose work (declared ``work_s``, or learned from earlier runs) is
        over 50 ms or that take ObjectRefs (they are worth placing one by one: by load, or next to their
        data), else chunks of up to 64, at least ~32
        chunks per map so results still stream back and spread over the nodes.
        """
        items = list(items)
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size!r}: must be >= 1")
        s = session.current()
        box = self._fnbox(s)
        payloads = [_payload((x,), {}) for x in items]
        if chunk_size is None:
            work = s.estimate(self._key, self._opts)[1]  # declared or learned (unknown: chunked)
            one_by_one = (work.known and work.seconds > 0.05) or any(p.has_refs for p in payloads)
            chunk_size = 1 if one_by_one else max(1, min(MAP_CHUNK, len(items) // 32))
        refs: list = []
        for i in range(0, len(items), chunk_size):
            chunk = payloads[i:i + chunk_size]
            sids = [self._sid() for _ in chunk]
            with s.lock:
                route, info = s.route(sids[0], self._wire_opts, chunk[0] if len(chunk) == 1 else None, len(chunk),
                                      fn_key=self._key)
                refs.extend(self._send(s, route, info, sids, chunk, box))
        return refs

    def _send(self, s: session.Session, route, info, sids: list[str], payloads: list, box) -> list:
        if route.wait is not None:  # waits for a node the autoscaler launches, in the session's lobby
            lobby = s.to_lobby()
            if len(sids) == 1:
                out = [lobby.submit.remote(sids[0], self._wire_opts, box, payloads[0], info, route.wait, route.wait_s)]
            else:
                out = list(lobby.submit_many.options(num_returns=len(sids)).remote(
                    sids, self._wire_opts, box, payloads, info, route.wait, route.wait_s))
            s.remember(out, sids, session.LOBBY, self._key)
            return out
        if route.node is None:  # no GPU, live or launchable, can hold it: fail at once, with the reason
            s.never += len(sids)
            why = route.never
            ctx = s.slot_context_mib
            if self._opts.gpu_memory_mib and ctx:
                why += (f" (its {self._opts.gpu_memory_mib} MiB of gpu_memory plus {ctx} MiB for the CUDA context "
                        "of the process it runs in: fastgpu.init(slot_context_memory=...))")
            return [_never_fits.remote(why) for _ in sids]
        h = s.scheduler(route.node)
        if len(sids) == 1:
            out = [h.submit.remote(Call(sids[0], self._wire_opts, box, payloads[0], info, counted=True))]
        else:
            out = list(h.submit_many.options(num_returns=len(sids)).remote(sids, self._wire_opts, box, payloads,
                                                                            info))
        s.remember(out, sids, route.node, self._key)
        return out

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
    """Like ``ray.get``; with ``progress=True`` and several refs, draws a progress bar on stderr.
    Ctrl-C while waiting cancels the subtasks not finished yet (queued ones are dropped), then raises
    ``KeyboardInterrupt``."""
    try:
        if not progress or isinstance(refs, ObjectRef) or len(refs) < 2:
            return ray.get(refs, timeout=timeout)
        bar = Progress(len(refs))
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=len(pending), timeout=0.2, fetch_local=False)
            bar.update(len(done))
        bar.close()
        return ray.get(refs, timeout=timeout)
    except KeyboardInterrupt:
        many = [refs] if isinstance(refs, ObjectRef) else list(refs)
        _, left = ray.wait(many, num_returns=len(many), timeout=0, fetch_local=False)
        s = session.current()
        cancel([r for r in left if s.owns(r)])  # (other refs are not ours to stop)
        raise


def cancel(refs) -> int:
    """Cancel fastgpu subtasks (``ray.cancel(ref)`` does the same for one): a queued subtask is dropped; a
    running one that has its GPU worker to itself is stopped (the worker is released, its GPU freed); a
    running one that shares a worker call (a batch of tiny subtasks, one ``map`` chunk) or a GPU packed by
    memory runs to its end and its result is dropped. ``ray.get`` on a cancelled ref raises
    ``TaskCancelledError``. Cancelling one ref of a ``map`` chunk cancels the whole chunk (one Ray call).
    Returns how many refs were asked to cancel. Only this session's subtasks: a ref of another job (or
    not of a fastgpu subtask) raises ``ValueError`` and nothing is cancelled."""
    many = [refs] if isinstance(refs, ObjectRef) else list(refs)
    s = session.current()
    foreign = [r for r in many if not s.owns(r)]
    if foreign:
        raise ValueError(f"{len(foreign)} of the {len(many)} refs (first: {foreign[0]}) are not refs of fastgpu "
                         "subtasks of this session: fastgpu.cancel stops only its own job's subtasks (another "
                         f"job's are that job's; the last {session.KEEP_REFS} refs are remembered); nothing was "
                         "cancelled")
    for r in many:
        try:
            ray.cancel(r)
        except Exception:  # already finished, or not a task's ref: nothing to cancel
            pass
    return len(many)


def explain(ref: ObjectRef) -> Record:
    """Where the subtask behind ``ref`` ran and why: node, GPU, policy, candidates with score terms,
    time queued, retries (``print(fastgpu.explain(ref).format())``)."""
    s = session.current()
    sid, sched = s.scheduler_of(ref.hex())
    if sid is None:
        raise ValueError(f"{ref} is not the ref of a fastgpu subtask of this session (or one so old that "
                         f"its entry was dropped: the last {session.KEEP_REFS} are kept)")
    node = s.refs[ref.hex()][1]
    if sched is None:  # the scheduler that kept its record is gone
        why = ("retired once this job had nothing left there (so that an autoscaler may remove the node)"
               if node in s.retired else "gone with its node (removed by the autoscaler, or died)")
        raise ValueError(f"no record left for subtask {sid}: it was sent to node {node[:12]}, whose scheduler "
                         f"{why}, taking its records with it")
    rec = ray.get(sched.explain.remote(sid, s.sent.get(node, 0)))
    if rec is None:
        if node not in s.gpu_nodes:
            raise ValueError(f"no record left for subtask {sid}: it was kept by the node scheduler of node "
                             f"{node[:12]}, which died after the subtask finished (its result had already "
                             "reached its owner, so it was not re-run)")
        raise ValueError(f"no record left for subtask {sid} (each node scheduler keeps the records of its last 20,000)")
    return rec


def status() -> ClusterStatus:
    """Per node and GPU: model, utilisation, memory, outside processes, fastgpu subtasks; queue length."""
    s = session.current()
    s.refresh(force=True)
    deadline = time.monotonic() + 20.0
    while True:  # a node's monitor may still be starting (first call after init): wait for its reading
        with s.lock:
            hs = list(s.schedulers.values())
        st = merge_status(hs, [s.lobby] if s.lobby is not None else [])
        st = dataclasses.replace(st, failed=st.failed + s.never)
        if all(g.util is not None for g in st.gpus) or time.monotonic() > deadline:
            return st
        time.sleep(0.5)


def _answers(calls: list) -> list:
    """Each call's answer, None for a scheduler that went meanwhile (retired on an idle node)."""
    out = []
    for c in calls:
        try:
            out.append(ray.get(c))
        except ray.exceptions.RayActorError:
            out.append(None)
    return out


def merge_status(schedulers, lobbies=()) -> ClusterStatus:
    """One table from every node scheduler's rows (a scheduler restarted away from home has none), the
    subtasks waiting in the lobbies for a node, the jobs and the autoscaler as the arbiter sees them."""
    hs = list(schedulers)
    _answers([h.refresh.remote() for h in hs])
    parts = [p for p in _answers([h.status.remote() for h in hs]) if p is not None]
    rows = tuple(sorted((g for p in parts for g in p.gpus), key=lambda g: (g.node, g.gpu)))
    waits = [w for w in _answers([lb.status.remote() for lb in lobbies]) if w is not None]
    from .actors.arbiter import autoscaler_line, job_shares

    return ClusterStatus(rows, sum(p.queue_length for p in parts), sum(p.nodes_alive for p in parts),
                         sum(p.placed for p in parts), sum(p.finished for p in parts), sum(p.failed for p in parts),
                         job_shares(), sum(n for n, _ in waits), next((w for n, w in waits if n), ""),
                         autoscaler_line())


def gpu_nodes() -> list[str]:
    """Ids of the live nodes with GPUs, in a stable order (for ``set_emulated_gpu``)."""
    from transfer.ray_hooks import gpu_node_ids

    return sorted(gpu_node_ids())


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
    s = session.current()
    if node_id not in s.schedulers:
        s.refresh(force=True)
    h = s.schedulers.get(node_id)
    if h is None:
        raise ValueError(f"no live GPU node {node_id!r} in the cluster (fastgpu.gpu_nodes() lists them)")
    ray.get(h.set_emulated.remote(index, kw))
    s.refresh(force=True)


@ray.remote(num_cpus=0, max_retries=0)
def _never_fits(reason: str):
    from .errors import NeverFitsError
    raise NeverFitsError(reason)
