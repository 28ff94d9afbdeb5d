"""What a multi-job run is judged by, from the spans the jobs record (``job_driver.py``): each span is
(start, end, node, GPU ids) in wall-clock seconds. Pure functions, used by ``multi_job.py`` and the tests."""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path


def both_busy(jobs: dict[str, list]) -> tuple[float, float]:
    """The interval in which every job had a backlog: from the latest first start to the earliest last
    start (after its last start a job has nothing queued)."""
    lo = max(min(s[0] for s in spans) for spans in jobs.values())
    hi = min(max(s[0] for s in spans) for spans in jobs.values())
    return lo, hi


def gpu_seconds(spans: list, lo: float, hi: float) -> float:
    return sum(max(0.0, min(e, hi) - max(s, lo)) for s, e, *_ in spans)


def window_ratios(a: list, b: list, window_s: float = 10.0) -> list[float]:
    """GPU-seconds of ``a`` over ``b`` in each whole ``window_s`` window in which both had a backlog."""
    lo, hi = both_busy({"a": a, "b": b})
    out = []
    t = lo
    while t + window_s <= hi + 1e-9:
        gb = gpu_seconds(b, t, t + window_s)
        out.append(gpu_seconds(a, t, t + window_s) / gb if gb else float("inf"))
        t += window_s
    return out


def held_idle_gaps(jobs: dict[str, list]) -> tuple[list[float], list[float]]:
    """Per GPU, the gaps between consecutive spans while some job still had a backlog: (gaps between two
    spans of the same job = the GPU held idle by that job's worker, gaps between different jobs = a
    hand-over: one job's worker leaves, another's starts)."""
    last_start = max(max(s[0] for s in spans) for spans in jobs.values())
    per_gpu: dict[tuple, list] = {}
    for job, spans in jobs.items():
        for s in spans:
            per_gpu.setdefault((s[2], tuple(s[3])), []).append((s[0], s[1], job))
    same, handover = [], []
    for runs in per_gpu.values():
        runs.sort()
        for (s0, e0, j0), (s1, _, j1) in zip(runs, runs[1:]):
            if s1 > last_start:
                continue
            (same if j0 == j1 else handover).append(max(0.0, s1 - e0))
    return same, handover


def p99(xs: list[float]) -> float:
    if not xs:
        return 0.0
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.99 * (len(xs) - 1))))]


def jain(xs: list[float]) -> float:
    """Jain's fairness index: 1 when all equal, 1/n when one takes all."""
    return sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs))


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def release_together(outs: list[Path], procs: list, go: Path, timeout_s: float = 180.0) -> None:
    """Wait until every job driver (``job_driver.py --go-file go``) has initialised (wrote OUT.ready),
    then let them all go: they start submitting at the same instant (plus each one's ``--offset-s``)."""
    deadline = time.monotonic() + timeout_s
    while not all(Path(str(o) + ".ready").exists() for o in outs):
        dead = [p for p in procs if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            raise RuntimeError(f"a job driver exited or did not initialise in {timeout_s:.0f}s")
        time.sleep(0.05)
    tmp = Path(str(go) + ".tmp")
    tmp.write_text(repr(time.time() + 0.3))
    os.replace(tmp, go)
