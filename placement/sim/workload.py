"""The dynamic replay's workload: the openb pods with their times, and the transform that turns them into
a steady stream of pods that arrive, run and leave (``placement.sim.dynamic``).

Why a transform is needed (facts of ``openb_pod_list_default.csv``): the trace's GPU demand averages about
14 of the cluster's 6,212 GPUs, so arrivals must be compressed in time for the cluster to be busy; but
pods that ran longer than a day hold about 91 % of its GPU-time, and at a load of 1.0 about as many pods
run at once as the whole trace has. Compressing arrivals alone gives a burst that fills the cluster once
and never drains. The transform, per seed:

1. **Run time** = ``deletion_time - scheduled_time`` of a pod that ran. A pod still running when the trace
   ends (its deletion time is the trace's last one) was cut off: its run time is drawn from the pods of
   its GPU class (CPU-only, GPU share, 1, 2, 4, 8 GPUs) that finished and ran at least as long (kept as
   recorded when none did). A pod that never ran (no ``scheduled_time``: Pending) gets a run time drawn
   from the pods of its GPU class that ran.
2. **Cap**: run times are capped at ``cap_s`` (default 30 min): a longer pod is treated as a job that
   checkpoints and leaves after ``cap_s``. This is what makes a steady state possible within a replay of
   a few caps; ``gpu_time_changed`` says how much of the trace's GPU-time it removed (most of it: the
   trace's GPU-time sits in a few very long pods).
3. **Arrivals**: each pod arrives at its ``creation_time / rate``; the trace is replayed in passes (pass
   ``k`` starts ``k`` spans later, with its own draws for step 1) until ``horizon_s``. ``rate`` is given,
   or follows from an offered load: ``load`` x the cluster's GPUs = GPU-seconds arriving per second.

The recorded run time is what a replayed pod runs for; no scheduler reads it (``placement.sim.dynamic``
learns durations from finished pods).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..model import GPU_MILLI, Demand
from .trace import POD_COLUMNS, TraceError, csv_rows, pod_demand

TIME_COLUMNS = ("creation_time", "scheduled_time", "deletion_time", "qos")
QOS_PRIORITY = {"Guaranteed": 2, "LS": 2, "Burstable": 1, "BE": 0}  # Guaranteed and LS > Burstable > BE
CAP_S = 1800.0
HORIZON_CAPS = 4  # default replay length, in caps (the first cap is warm-up)


@dataclass(frozen=True)
class TimedPods:
    """The pods of a trace in file order, with ``created`` (s), ``run_s`` (recorded run time, nan for a pod
    that never ran), ``cut`` (still running when the trace ends) and ``qos``."""

    path: Path
    demands: list[Demand]
    created: np.ndarray
    run_s: np.ndarray
    cut: np.ndarray
    qos: list[str]

    @property
    def span(self) -> float:
        return float(self.created.max() - self.created.min()) or 1.0


def gpu_class(d: Demand) -> str:
    """A pod's GPU-count class: ``cpu``, ``share`` (part of one GPU) or the number of whole GPUs."""
    if not d.num_gpus:
        return "cpu"
    return "share" if d.gpu_share < GPU_MILLI else str(d.num_gpus)


def gpus_of(d: Demand) -> float:
    return d.total_gpu_milli / GPU_MILLI


def load_timed_pods(path: str | Path, known_models: set[str] | None = None) -> TimedPods:
    """The pods with their time columns; ``TraceError`` naming the file, line and field otherwise (a trace
    without the time columns names the missing ones)."""
    path = Path(path)
    demands, created, sched, deleted, qos, lines = [], [], [], [], [], []
    try:
        rows = list(csv_rows(path, POD_COLUMNS + TIME_COLUMNS))
    except TraceError as e:
        if "missing column" in str(e):
            raise TraceError(f"{e}; a dynamic replay needs the time columns {', '.join(TIME_COLUMNS)} "
                             "(multigpu20 and multigpu40 have none)") from None
        raise
    for line, row in rows:
        demands.append(pod_demand(path, line, row, known_models))
        c = _time(path, line, row, "creation_time")
        d = _time(path, line, row, "deletion_time")
        s = _time(path, line, row, "scheduled_time", optional=True)
        if s is not None and d < s:
            raise TraceError(f"{path}:{line}: field 'deletion_time': {d:g} precedes scheduled_time {s:g}")
        if d < c:
            raise TraceError(f"{path}:{line}: field 'deletion_time': {d:g} precedes creation_time {c:g}")
        if row["qos"] not in QOS_PRIORITY:
            raise TraceError(f"{path}:{line}: field 'qos': {row['qos']!r} is not one of {', '.join(QOS_PRIORITY)}")
        created.append(c)
        sched.append(math.nan if s is None else s)
        deleted.append(d)
        qos.append(row["qos"])
        lines.append(line)
    if not demands:
        raise TraceError(f"{path}: no pods")
    deleted_a = np.array(deleted)
    run = deleted_a - np.array(sched)
    cut = ~np.isnan(run) & (deleted_a >= deleted_a.max())
    return TimedPods(path, demands, np.array(created), run, cut, qos)


def _time(path: Path, line: int, row: dict, field: str, optional: bool = False) -> float | None:
    raw = row[field]
    if raw == "" and optional:
        return None
    try:
        v = float(raw)
    except ValueError:
        v = math.nan
    if not math.isfinite(v) or v < 0:
        raise TraceError(f"{path}:{line}: field {field!r}: expected seconds >= 0, got {raw!r}")
    return v


@dataclass(frozen=True)
class Workload:
    """Pods of the replay in arrival order: ``pods[i]`` (index into ``TimedPods.demands``), arriving at
    ``arrive[i]`` (replay seconds) and running ``run_s[i]``."""

    timed: TimedPods
    pods: np.ndarray
    arrive: np.ndarray
    run_s: np.ndarray
    rate: float
    load: float  # offered load: GPU-seconds arriving per second / GPUs (expected, from pass 0)
    cap_s: float
    horizon_s: float
    passes: int
    gpu_time_changed: float  # of the recorded GPU-time of pods that ran: the fraction the cap/draws changed
    gpu_time_drawn: float  # of the replay's GPU-time (pass 0): the fraction given to pods that never ran

    def figures(self) -> dict:
        """What the transform did, for reports (the pods themselves are left out)."""
        return {"load": self.load, "rate": self.rate, "pods": len(self.pods), "passes": self.passes,
                "cap_s": self.cap_s, "horizon_s": self.horizon_s, "gpu_time_changed": self.gpu_time_changed,
                "gpu_time_drawn": self.gpu_time_drawn}


def run_times(tp: TimedPods, rng: np.random.Generator, cap_s: float) -> np.ndarray:
    """One pass's run times (module doc, steps 1-2)."""
    classes = np.array([gpu_class(d) for d in tp.demands])
    ran = ~np.isnan(tp.run_s)
    if not ran.any():
        raise ValueError(f"{tp.path}: no pod has a scheduled_time (none ran): no run time to draw from")
    out = np.where(ran, tp.run_s, math.nan)
    for c in np.unique(classes):
        mine = classes == c
        done = np.sort(tp.run_s[mine & ran & ~tp.cut])
        pool = done if len(done) else np.sort(tp.run_s[ran])  # (a class with no finished pod: any pod's)
        never = np.flatnonzero(mine & ~ran)
        if len(never):
            out[never] = pool[rng.integers(len(pool), size=len(never))]
        for i in np.flatnonzero(mine & tp.cut):
            longer = done[np.searchsorted(done, tp.run_s[i]):]
            if len(longer):
                out[i] = longer[rng.integers(len(longer))]
    return np.minimum(out, cap_s)


def build(tp: TimedPods, gpus: int, seed: int, *, load: float | None = None, rate: float | None = None,
          cap_s: float = CAP_S, horizon_s: float | None = None) -> Workload:
    """The replay's pods (module doc): give exactly one of ``load`` (offered load, x ``gpus``) or ``rate``
    (arrival compression)."""
    if (load is None) == (rate is None):
        raise ValueError("give an offered load or a rate, not both")
    if rate is not None and not rate > 0:
        raise ValueError(f"--rate must be > 0, got {rate:g}")
    if load is not None and not load > 0:
        raise ValueError(f"--load must be > 0, got {load:g}")
    if not cap_s > 0:
        raise ValueError(f"--cap must be > 0 seconds, got {cap_s:g}")
    horizon_s = HORIZON_CAPS * cap_s if horizon_s is None else horizon_s
    if not horizon_s > cap_s:
        raise ValueError(f"--horizon ({horizon_s:g} s) must be longer than --cap ({cap_s:g} s): the first cap is "
                         "warm-up, the rest is measured")
    rng = np.random.default_rng(seed)
    g = np.array([gpus_of(d) for d in tp.demands])
    first = run_times(tp, rng, cap_s)
    work = float((g * first).sum())  # GPU-seconds one pass brings
    if not work > 0:
        raise ValueError(f"{tp.path}: no GPU pod with a run time: nothing to replay")
    if rate is None:
        rate = load * gpus * tp.span / work
    load = work * rate / tp.span / gpus
    ran = ~np.isnan(tp.run_s)
    recorded = float((g * tp.run_s)[ran].sum())
    changed = float((g * np.abs(first - tp.run_s))[ran].sum()) / recorded if recorded else 0.0
    drawn = float((g * first)[~ran].sum()) / work if work else 0.0
    span_replay = tp.span / rate
    passes = max(1, math.ceil(horizon_s / span_replay))
    t0 = tp.created.min()
    idx, arr, run = [], [], []
    for k in range(passes):
        rs = first if k == 0 else run_times(tp, rng, cap_s)
        a = (tp.created - t0) / rate + k * span_replay
        keep = a < horizon_s
        idx.append(np.flatnonzero(keep))
        arr.append(a[keep])
        run.append(rs[keep])
    idx_a, arr_a, run_a = np.concatenate(idx), np.concatenate(arr), np.concatenate(run)
    order = np.argsort(arr_a, kind="stable")
    return Workload(tp, idx_a[order], arr_a[order], run_a[order], rate, load, cap_s, horizon_s, passes,
                    changed, drawn)
