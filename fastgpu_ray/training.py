"""``fastgpu.train``: gang placement of a multi-node training run by live GPU load.

    results = fastgpu.train(train_fn, num_workers=4, gpus_per_worker=1, config={"lr": 0.1})

Contract:

1. **Placement.** One ``placement.Demand`` per rank (``gpus_per_worker`` whole GPUs, ``cpus_per_worker``
   CPUs) goes to ``placement.schedule`` with the chosen policy over a *live* snapshot (load, external
   processes, memory in use), so busy GPUs and nodes are avoided. If any rank is unplaced the call fails
   with :class:`TrainPlacementError` carrying placement's reason: at once when a rank can never fit,
   after ``place_timeout_s`` (default 5 s) of re-planning on fresh snapshots when it does not fit now.
2. **Gang, all or none.** A Ray placement group is created with one bundle per rank, each bundle pinned to
   the node placement chose by a bundle label selector on ``ray.io/node-id``. Ray reserves the group
   atomically; if it is not ready within ``ready_timeout_s`` (capacity taken in the meantime) it is
   removed and :class:`TrainPlacementError` is raised. Ray's accounting stays exact: the bundles hold the
   GPUs and CPUs, and each rank's actor runs inside its bundle.
3. **Ranks.** Ranks on one node are contiguous (rank 0 on the first node of the plan); each rank gets
   ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` (rank 0's node IP) and
   ``MASTER_PORT`` (a free port on it) and, unless ``backend=None``, an initialised
   ``torch.distributed`` process group: ``nccl`` when the ranks hold GPUs that CUDA can see, ``gloo``
   otherwise (CPU, or emulated GPUs). :func:`get_context` gives the same inside ``train_fn``.
4. **Result.** ``train_fn(config)`` runs on every rank; the per-rank return values come back as a list
   in rank order (a :class:`TrainResults`, which also records where each rank ran and how long each
   phase took).
5. **Failure.** A rank whose process or node dies fails the run with :class:`TrainWorkerDied` naming the
   rank and node; an exception inside ``train_fn`` fails it with :class:`TrainFnError` naming the rank
   and node (the original error chained). Either way, and on timeout or Ctrl-C, every rank actor is
   killed and the placement group removed before the call returns: nothing stays allocated.

GPU indices: Ray assigns the GPU instances inside a bundle itself (there is no Ray API to ask for a
given index), so the node is enforced and the GPU index the plan chose is advisory; both the planned and
the assigned indices are recorded in ``TrainResults.workers``.
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Sequence

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from placement import Demand, GpuSpec, NodeSpec, Plan, PlacementRequest, Snapshot, schedule
from placement.registry import DEFAULT_POLICY

NODE_ID_LABEL = "ray.io/node-id"  # the label Ray gives every node: its node id hex
BACKENDS = ("auto", "gloo", "nccl", None)
# After the first failure, how long to wait for the other ranks to report: a rank that died usually
# takes its peers' collectives down with it, and the death (not the peers' errors) is the news.
FAILURE_GRACE_S = 3.0
# A training run is long: an hour of nominal work per rank makes the compute-at-load term dominate a few
# seconds of queueing in placement.cost (only ratios matter to the policy, so the exact figure does not).
TRAIN_WORK_S = 3600.0


class TrainError(RuntimeError):
    """Base of every error ``fastgpu.train`` raises. Nothing stays allocated when it is raised."""


class TrainPlacementError(TrainError):
    """The gang could not be placed (now or ever); carries placement's reasons per rank."""

    def __init__(self, message: str, plan: Plan | None = None) -> None:
        super().__init__(message)
        self.plan = plan


class TrainWorkerDied(TrainError):
    """A rank's worker process or node died during the run."""

    def __init__(self, message: str, rank: int, node_id: str, node_ip: str) -> None:
        super().__init__(message)
        self.rank, self.node_id, self.node_ip = rank, node_id, node_ip


class TrainFnError(TrainError):
    """``train_fn`` raised on a rank; the rank's exception is ``__cause__``."""

    def __init__(self, message: str, rank: int, node_id: str, node_ip: str) -> None:
        super().__init__(message)
        self.rank, self.node_id, self.node_ip = rank, node_id, node_ip


@dataclass(frozen=True)
class TrainContext:
    """What a rank knows about itself; :func:`get_context` returns it inside ``train_fn``."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_id: str
    master_addr: str
    master_port: int
    backend: str | None
    gpu_ids: tuple[int, ...]

    @property
    def device(self) -> str:
        """``cuda:<local device>`` when this rank holds a GPU that CUDA can see, else ``cpu``."""
        return "cuda:0" if self.backend == "nccl" else "cpu"


@dataclass(frozen=True)
class WorkerInfo:
    rank: int
    node_id: str  # where the rank runs (reported by the rank itself)
    node_ip: str
    local_rank: int
    planned_node: str  # where placement put it; equal to node_id (the bundle is pinned by label)
    planned_gpus: tuple[int, ...]  # what placement chose (advisory inside the node; see module doc)
    gpu_ids: tuple[int, ...]  # what Ray assigned to the rank (CUDA_VISIBLE_DEVICES)


class TrainResults(list):
    """Per-rank return values in rank order, plus where each rank ran and how long each phase took."""

    def __init__(self, values: Sequence[Any], workers: Sequence[WorkerInfo], backend: str | None,
                 plan: Plan, timings: Mapping[str, float], snapshot_source: str = "", emulated: bool = False) -> None:
        super().__init__(values)
        self.snapshot_source = snapshot_source
        self.emulated = emulated  # the planned GPUs are emulated (no NVML): load figures are set, not measured
        self.workers = tuple(workers)
        self.backend = backend
        self.plan = plan
        self.timings = dict(timings)

    def nodes(self) -> list[str]:
        return [w.node_id for w in self.workers]


_CONTEXT: TrainContext | None = None


def get_context() -> TrainContext:
    """The calling rank's :class:`TrainContext`; only valid inside a ``train_fn`` run by ``train``."""
    if _CONTEXT is None:
        raise RuntimeError("fastgpu.train.get_context() is only available inside a train_fn run by fastgpu.train")
    return _CONTEXT


# ------------------------------------------------------------------------------------------ snapshot
def ray_snapshot() -> Snapshot:
    """A snapshot from Ray's own view (logical resources only; no live load). Used when the runtime's
    telemetry is not available. A GPU counts as used when Ray shows it taken."""
    avail = ray._private.state.available_resources_per_node()
    return snapshot_from_ray(ray.nodes(), avail)


def snapshot_from_ray(nodes: Sequence[Mapping[str, Any]], avail: Mapping[str, Mapping[str, float]]) -> Snapshot:
    """Pure conversion of ``ray.nodes()`` + per-node available resources into a ``placement.Snapshot`` of the
    live nodes, through the runtime's one translation (``telemetry.node_infos`` -> ``build_snapshot``)."""
    from fastgpu_ray.core.telemetry import build_snapshot, node_infos

    return build_snapshot([n for n in node_infos(nodes, avail) if n.alive], {}, {})


def restrict_to_ray(snap: Snapshot, avail: Mapping[str, Mapping[str, float]]) -> Snapshot:
    """Mark as used the GPUs a live snapshot shows free but Ray cannot hand out (held by other Ray work,
    e.g. idle fastgpu task workers): a placement group can only get what Ray has available. Which ones:
    the runtime's one rule (``telemetry.taken_indices``: the most loaded). CPU in use is Ray's figure
    (read just now; the telemetry's may be a second old)."""
    from fastgpu_ray.core.telemetry import taken_indices

    nodes = []
    for n in snap.nodes:
        free = avail.get(n.name, {})
        free_idx = [i for i, g in enumerate(n.gpus) if g.milli_used == 0]
        mark = taken_indices(n.gpus, free_idx, len(free_idx) - int(free.get("GPU", 0)))
        gpus = tuple(_replace_gpu(g, 1000) if i in mark else g for i, g in enumerate(n.gpus))
        cpu_used = n.cpu_milli - int(round(free.get("CPU", 0) * 1000))  # Ray's figure is the fresher one
        nodes.append(NodeSpec(n.name, n.cpu_milli, n.memory_mib, gpus, cpu_used, n.memory_used_mib, n.alive))
    return Snapshot(tuple(nodes), snap.rank)


def _replace_gpu(g: GpuSpec, milli_used: int) -> GpuSpec:
    return replace(g, milli_used=milli_used)


def snapshot_and_source() -> tuple[Snapshot, str]:
    try:
        from fastgpu_ray.errors import NotInitializedError
        from fastgpu_ray.session import cluster_snapshot  # the runtime's live view
    except ImportError as e:
        return ray_snapshot(), f"ray logical resources (no live telemetry: {_first_line(e)})"
    try:
        snap = cluster_snapshot()
    except NotInitializedError as e:  # no fastgpu session in this process: Ray's view is all there is
        return ray_snapshot(), f"ray logical resources (no live telemetry: {_first_line(e)})"
    avail = ray._private.state.available_resources_per_node()
    return restrict_to_ray(snap, avail), "fastgpu live telemetry"


# ------------------------------------------------------------------------------------ plan -> ranks
def gang_demands(num_workers: int, gpus_per_worker: int, cpus_per_worker: float) -> tuple[Demand, ...]:
    """One demand per rank. ``work_s`` is nominal (TRAIN_WORK_S) but must be > 0: with no declared work
    the cost model's compute term is 0 and live load could not matter."""
    return tuple(Demand(id=f"rank{i}", cpu_milli=int(round(cpus_per_worker * 1000)), num_gpus=gpus_per_worker,
                        gpu_milli=1000 if gpus_per_worker else 0, work_s=TRAIN_WORK_S) for i in range(num_workers))


def order_ranks(plan: Plan, num_workers: int) -> list[tuple[str, tuple[int, ...], int]]:
    """(node, planned GPU indices, local rank) per rank: ranks on one node contiguous, nodes in the order
    the plan first used them (so rank 0 is on the plan's first node)."""
    by_node: dict[str, list[tuple[int, ...]]] = {}
    for a in sorted(plan.assignments, key=lambda a: int(a.demand_id[4:])):
        by_node.setdefault(a.node, []).append(a.gpus)
    out = [(node, gpus, local) for node, lst in by_node.items() for local, gpus in enumerate(lst)]
    if len(out) != num_workers:
        raise AssertionError(f"plan has {len(out)} assignments for {num_workers} ranks")
    return out


def plan_gang(snapshot: Snapshot, num_workers: int, gpus_per_worker: int, cpus_per_worker: float,
              policy: str) -> Plan:
    """Place every rank or raise :class:`TrainPlacementError` with placement's reason (all or none)."""
    plan = schedule(PlacementRequest(snapshot, gang_demands(num_workers, gpus_per_worker, cpus_per_worker)), policy)
    if plan.unplaced:
        never = any(u.never for u in plan.unplaced)
        first = plan.unplaced[0]
        what = f"{num_workers} worker(s) x ({gpus_per_worker} GPU, {cpus_per_worker:g} CPU)"
        hint = ("no node could ever hold one rank; ask for fewer GPUs/CPUs per worker or add bigger nodes"
                if never else
                f"only {len(plan.assignments)} of {num_workers} ranks fit now; use fewer workers, wait for "
                "running work to finish, or add nodes")
        raise TrainPlacementError(
            f"fastgpu.train: cannot place the gang of {what}: {hint}. "
            f"{len(plan.unplaced)} rank(s) unplaced; first: {first.demand_id}: {first.reason}", plan)
    return plan


# ------------------------------------------------------------------------------------------- worker
@ray.remote(max_restarts=0, max_task_retries=0)
class _Rank:
    """One rank's process. Lives inside its placement-group bundle; killed when the run ends."""

    def where(self) -> tuple[str, str, tuple[int, ...]]:
        ctx = ray.get_runtime_context()
        return ctx.get_node_id(), ray.util.get_node_ip_address(), tuple(int(g) for g in ray.get_gpu_ids())

    def master(self) -> tuple[int, bool]:
        """Rank 0: a free port for the process group's rendezvous, and whether CUDA sees this rank's GPUs
        (for backend="auto"). The port is free when checked; init follows within a second."""
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        try:
            import torch
        except ImportError:
            return port, False
        return port, bool(torch.cuda.is_available())

    def setup(self, ctx: TrainContext, timeout_s: float) -> None:
        _set_context(ctx)
        os.environ.update(RANK=str(ctx.rank), WORLD_SIZE=str(ctx.world_size), LOCAL_RANK=str(ctx.local_rank),
                          LOCAL_WORLD_SIZE=str(ctx.local_world_size), MASTER_ADDR=ctx.master_addr,
                          MASTER_PORT=str(ctx.master_port))
        if ctx.backend is None:
            return
        import datetime

        import torch.distributed as dist
        dist.init_process_group(ctx.backend, init_method=f"tcp://{ctx.master_addr}:{ctx.master_port}",
                                rank=ctx.rank, world_size=ctx.world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))

    def run(self, fn: Callable[[Any], Any], config: Any) -> Any:
        return fn(config)
    # No teardown: the driver kills every rank's process when the run ends, which also ends its group.


def _set_context(ctx: TrainContext) -> None:
    """Set this process's context. A module-level function on purpose: Ray ships the actor class by value
    (its globals are a copy), this function by reference (so get_context() in train_fn sees it)."""
    global _CONTEXT
    _CONTEXT = ctx


# ------------------------------------------------------------------------------------------- driver
def train(train_fn: Callable[[Any], Any], num_workers: int, gpus_per_worker: int = 1,
          config: Any = None, backend: str | None = "auto", *, cpus_per_worker: float = 1.0,
          policy: str = DEFAULT_POLICY, place_timeout_s: float = 5.0, ready_timeout_s: float = 60.0,
          timeout_s: float | None = None, snapshot_fn: Callable[[], Snapshot] | None = None) -> TrainResults:
    """Run ``train_fn(config)`` on ``num_workers`` ranks gang-placed by live load; see the module doc.

    ``backend``: ``"auto"`` (nccl if the ranks hold CUDA-visible GPUs, else gloo), ``"gloo"``, ``"nccl"``
    or ``None`` (no torch.distributed; torch not needed). A gang that does not fit *now* is re-planned
    from fresh snapshots for up to ``place_timeout_s`` (default 5 s: it absorbs a snapshot a second or two
    old, e.g. right after another job released its GPUs; 0 = fail at once); one that can never fit fails
    at once. ``ready_timeout_s`` bounds the wait for the placement group; ``timeout_s`` bounds the whole run (None: no limit). ``snapshot_fn`` replaces the
    live snapshot (tests, or a caller with its own view).
    """
    _check_args(train_fn, num_workers, gpus_per_worker, cpus_per_worker, backend, place_timeout_s, ready_timeout_s,
                timeout_s)
    if not ray.is_initialized():
        raise TrainError("fastgpu.train: Ray is not connected; call fastgpu.init() (or ray.init()) first")
    if backend is not None:
        _require_torch()
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    plan, snap, source = _plan_within(lambda: (snapshot_fn(), "snapshot_fn") if snapshot_fn else snapshot_and_source(),
                                      num_workers, gpus_per_worker, cpus_per_worker, policy, place_timeout_s)
    emulated = any(snap.nodes[a.node_index].gpus[g].emulated for a in plan.assignments for g in a.gpus)
    ranks = order_ranks(plan, num_workers)
    timings["place_s"] = time.perf_counter() - t0
    bundle = {k: float(v) for k, v in (("CPU", cpus_per_worker), ("GPU", gpus_per_worker)) if v}
    pg = placement_group([dict(bundle) for _ in ranks], strategy="PACK",
                         bundle_label_selector=[{NODE_ID_LABEL: node} for node, _, _ in ranks])
    actors: list = []
    try:
        _wait_ready(pg, ranks, ready_timeout_s)
        timings["reserve_s"] = time.perf_counter() - t0
        rank_cls: Any = _Rank  # an ActorClass at runtime (the decorator hides .options from type checkers)
        actors = [rank_cls.options(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker,
                                   scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=r)
                                   ).remote() for r in range(len(ranks))]
        deadline = None if timeout_s is None else t0 + timeout_s
        where = _collect([a.where.remote() for a in actors], ranks, None, deadline, "start")
        timings["start_s"] = time.perf_counter() - t0
        workers = [WorkerInfo(r, w[0], w[1], ranks[r][2], ranks[r][0], ranks[r][1], w[2]) for r, w in enumerate(where)]
        port, cuda = _collect([actors[0].master.remote()], ranks, workers, deadline, "start")[0]
        chosen = resolve_backend(backend, any(w.gpu_ids for w in workers), cuda)
        local_sizes = {n: sum(1 for x in ranks if x[0] == n) for n, _, _ in ranks}
        ctxs = [TrainContext(w.rank, len(workers), w.local_rank, local_sizes[ranks[w.rank][0]], w.node_id,
                             workers[0].node_ip, port, chosen, w.gpu_ids) for w in workers]
        setup_timeout = ready_timeout_s if deadline is None else max(1.0, deadline - time.perf_counter())
        _collect([a.setup.remote(c, setup_timeout) for a, c in zip(actors, ctxs)], ranks, workers, deadline, "setup")
        timings["setup_s"] = time.perf_counter() - t0
        fn_ref = ray.put(train_fn)
        values = _collect([a.run.remote(fn_ref, config) for a in actors], ranks, workers, deadline, "train_fn")
        timings["total_s"] = time.perf_counter() - t0
        return TrainResults(values, workers, chosen, plan, timings, source, emulated)
    finally:
        _release(pg, actors)


def _plan_within(snapshot: Callable[[], tuple[Snapshot, str]], num_workers: int, gpus_per_worker: int,
                 cpus_per_worker: float, policy: str, wait_s: float) -> tuple[Plan, Snapshot, str]:
    """``plan_gang`` on fresh snapshots until it fits or ``wait_s`` passes; never-fits raises at once."""
    end = time.monotonic() + wait_s
    while True:
        snap, source = snapshot()
        try:
            return plan_gang(snap, num_workers, gpus_per_worker, cpus_per_worker, policy), snap, source
        except TrainPlacementError as e:
            if e.plan is None or any(u.never for u in e.plan.unplaced) or time.monotonic() >= end:
                raise
        time.sleep(0.5)


def _release(pg, actors, wait_s: float = 10.0) -> None:
    """Kill every rank and remove the group; wait (bounded) until Ray has marked it removed, so the
    caller sees the resources back when ``train`` returns or raises."""
    for a in actors:
        ray.kill(a, no_restart=True)
    remove_placement_group(pg)
    end = time.monotonic() + wait_s
    while time.monotonic() < end:
        if ray.util.placement_group_table(pg).get("state") == "REMOVED":
            return
        time.sleep(0.05)


def _check_args(train_fn, num_workers, gpus_per_worker, cpus_per_worker, backend, place_timeout_s, ready_timeout_s,
                timeout_s) -> None:
    if not callable(train_fn):
        raise TypeError(f"fastgpu.train: train_fn must be callable, got {type(train_fn).__name__}")
    if not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 1:
        raise ValueError(f"fastgpu.train: num_workers must be an int >= 1, got {num_workers!r}")
    if not isinstance(gpus_per_worker, int) or isinstance(gpus_per_worker, bool) or gpus_per_worker < 0:
        raise ValueError(f"fastgpu.train: gpus_per_worker must be a whole number >= 0 (training ranks hold "
                         f"whole GPUs), got {gpus_per_worker!r}")
    if not isinstance(cpus_per_worker, (int, float)) or cpus_per_worker < 0 or (cpus_per_worker == 0 and not gpus_per_worker):
        raise ValueError(f"fastgpu.train: cpus_per_worker must be > 0 (or 0 with GPUs), got {cpus_per_worker!r}")
    if backend not in BACKENDS:
        raise ValueError(f"fastgpu.train: backend must be one of {BACKENDS}, got {backend!r}")
    if place_timeout_s < 0 or ready_timeout_s <= 0 or (timeout_s is not None and timeout_s <= 0):
        raise ValueError(f"fastgpu.train: timeouts must be > 0 (place_timeout_s >= 0), got place_timeout_s="
                         f"{place_timeout_s!r}, ready_timeout_s={ready_timeout_s!r}, timeout_s={timeout_s!r}")


def _require_torch() -> None:
    try:
        import torch.distributed  # noqa: F401
    except ImportError:
        raise TrainError('fastgpu.train: torch is not installed; pip install "fastgpu-ray[train]", or pass '
                         "backend=None to run train_fn without torch.distributed") from None


def _wait_ready(pg, ranks, timeout_s: float) -> None:
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        nodes = sorted({n for n, _, _ in ranks})
        raise TrainPlacementError(
            f"fastgpu.train: Ray could not reserve the gang's placement group within {timeout_s:g} s on the "
            f"planned node(s) {', '.join(n[:12] for n in nodes)}: the capacity placement saw free was taken "
            "in the meantime, or is held by other Ray work. Nothing was kept; retry, or raise ready_timeout_s.")


def resolve_backend(backend: str | None, holds_gpus: bool, cuda_visible: bool) -> str | None:
    """``auto``: nccl for ranks holding GPUs that CUDA sees; gloo otherwise (CPU, or emulated GPUs)."""
    if backend != "auto":
        return backend
    return "nccl" if holds_gpus and cuda_visible else "gloo"


def _collect(refs: list, ranks, workers, deadline: float | None, phase: str) -> list:
    """Results of one per-rank call, in rank order; the first failure becomes a TrainError that names
    the rank and node (a death wins over peers' errors it caused, see FAILURE_GRACE_S)."""
    index = {r: i for i, r in enumerate(refs)}
    pending, done_at_fail = list(refs), None
    while pending:
        left = None if deadline is None else deadline - time.perf_counter()
        if done_at_fail is not None:
            left = max(0.0, done_at_fail + FAILURE_GRACE_S - time.perf_counter())
        if left is not None and left <= 0:
            break
        ready, pending = ray.wait(pending, num_returns=1, timeout=left, fetch_local=True)
        if not ready:
            break
        if done_at_fail is None and _failed(ready[0]):
            done_at_fail = time.perf_counter()
    failures = [(index[r], e) for r in refs if r not in pending and (e := _failed(r)) is not None]
    if failures:
        raise _failure_error(failures, ranks, workers, phase)
    if pending:
        raise TrainError(f"fastgpu.train: timed out in {phase}: rank(s) "
                         f"{sorted(index[r] for r in pending)} had not finished; the run was stopped and "
                         "everything it held released. Raise timeout_s if the run needs longer.")
    return ray.get(refs)


def _failed(ref) -> BaseException | None:
    try:
        ray.get(ref, timeout=0)
    except ray.exceptions.GetTimeoutError:
        return None
    except ray.exceptions.RayError as e:
        return e
    return None


def _failure_error(failures, ranks, workers, phase) -> TrainError:
    died = [(r, e) for r, e in failures if isinstance(e, ray.exceptions.RayActorError)]
    rank, err = (died or failures)[0]
    node_id = workers[rank].node_id if workers else ranks[rank][0]
    node_ip = workers[rank].node_ip if workers else "?"
    tail = ("Every rank was stopped and the placement group removed; nothing stays allocated.")
    if died:
        return TrainWorkerDied(
            f"fastgpu.train: rank {rank} on node {node_id} ({node_ip}) died during {phase}: "
            f"{_first_line(err)}. {tail} Check that node (memory, logs under its Ray session) and re-run.",
            rank, node_id, node_ip)
    cause = err.cause if isinstance(err, ray.exceptions.RayTaskError) and err.cause is not None else err
    exc = TrainFnError(f"fastgpu.train: rank {rank} on node {node_id} ({node_ip}) raised in {phase}: "
                       f"{type(cause).__name__}: {cause}. {tail}", rank, node_id, node_ip)
    exc.__cause__ = cause
    return exc


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0].rstrip(".") if text else type(e).__name__
