"""How long a subtask's work takes on an idle GPU, learned online from finished subtasks. No Ray here.

Placement prices every choice as ``wait + move + work * slowdown(load)`` (``placement.cost``); ``work`` is
what this module estimates, per duration key (a task function and the option variant that changes its
run time: GPU count and share, declared ``work_s``). Contract:

* ``observe(key, run_s, slowdown)``: one successful run took ``run_s`` on a GPU that was ``slowdown`` times
  slower than idle (``placement.cost.slowdown`` of its outside load when it started). The observation is
  ``run_s / slowdown``, so a run on a loaded GPU does not teach that the work is longer.
* The estimate is robust and means what the queue needs, an expected run time: over the last ``WINDOW``
  observations, the median of log-durations ``m`` and their spread ``s`` (1.4826 x median absolute
  deviation, the normal-consistent MAD, at most ``MAX_SPREAD``), estimate = ``exp(m + s**2 / 2)`` (the
  mean of a lognormal). A minority of odd runs (a GPU whose load slows the work more than the model
  says, a stuck run) moves neither the median nor the MAD much; work whose durations really spread
  (a lognormal map) gets its mean, not its median. Old runs leave the window: a function whose run time
  changes is re-learned within ``WINDOW`` runs.
* ``estimate(key, declared)``: learned (from N runs) beats declared (the task's ``work_s``, a prior that
  the first observation replaces), which beats unknown: ``UNKNOWN_WORK_S``, Dask's default for a task
  prefix it has never seen. The cold start is therefore one subtask per function priced at 0.5 s; a
  function's first finished run teaches the next decisions (there is no separate probe phase).
* Only successful runs are observed, each under its own key: a function whose runs keep failing teaches
  nothing and does not touch the estimates of others.
* ``with_elapsed``: while no run of a key has finished, a subtask of it that has run ``e`` seconds says
  its key takes at least ``e`` (source ``running``), so a queue behind a long first run is not priced
  at ``UNKNOWN_WORK_S`` per subtask.
* ``Estimate.tail_s``: the 90th percentile (``exp(m + 1.28 s)``) minus the estimate: how much longer a
  long run is, which the cost model lets a slower GPU stretch (``placement.cost.compute_s``).
* Input bytes: ``observe(..., nbytes=)`` also keeps (log bytes, log duration) pairs. When a key's
  recent runs took inputs of different sizes (the largest at least ``SIZE_MIN_RATIO`` times the smallest,
  ``SIZE_MIN_RUNS`` runs) and a robust line through the pairs (Theil-Sen: the median of pairwise slopes,
  clipped to ``[0, SIZE_MAX_EXPONENT]``) leaves a residual spread under ``SIZE_MIN_GAIN`` of the key's
  spread, ``estimate(..., nbytes=)`` is that line at the subtask's bytes (clamped to ``SIZE_EXTRAPOLATE``
  times beyond the sizes seen): run time ~ bytes ** exponent. Otherwise, or without the subtask's bytes,
  the key's estimate: sizes that do not predict the run time change nothing. ``FASTGPU_DURATIONS_BY_SIZE=0``
  in the environment of the processes that schedule (the node schedulers) turns this off (an ablation:
  ``benchmarks/heterogeneous.py --sized``).
* ``summary()`` / ``adopt()``: estimates travel between schedulers as (log mean, runs, log 90th
  percentile); a scheduler adopts one learned elsewhere when it has seen fewer runs of that key itself.
  The size line stays with the scheduler that learned it (the one that runs the subtasks).
"""
from __future__ import annotations

import math
import os
import statistics
from collections import deque
from dataclasses import dataclass

UNKNOWN_WORK_S = 0.5  # the estimate for work never seen and not declared (Dask assumes the same)
WINDOW = 32  # observations kept per key
MAX_SPREAD = 2.0  # log-spread cap: the mean is at most e^2 = 7.4x the median
Z90 = 1.2816  # the standard normal's 90th percentile
MIN_S = 1e-4  # durations are floored here before taking logs (an instant subtask is "very short")
BY_SIZE = os.environ.get("FASTGPU_DURATIONS_BY_SIZE", "1") != "0"  # module doc
SIZE_MIN_RUNS = 4  # runs with known input bytes before the size line is fitted
SIZE_MIN_RATIO = 2.0  # ... and the largest input at least this many times the smallest
SIZE_MIN_GAIN = 0.8  # the line is used when its residual spread is under this fraction of the key's spread
SIZE_MAX_EXPONENT = 2.0  # run time grows at most as bytes squared (a steeper fit is noise or a cliff)
SIZE_EXTRAPOLATE = 4.0  # predict for sizes at most this factor beyond the smallest and largest seen


@dataclass(frozen=True)
class Estimate:
    """Seconds of work on an idle GPU, with where the number comes from: ``learned`` (from ``runs`` runs),
    ``declared`` (the task's ``work_s``) or ``unknown`` (``UNKNOWN_WORK_S``)."""

    seconds: float
    source: str
    runs: int = 0
    tail_s: float = 0.0  # 90th percentile - ``seconds`` (learned spread; 0 when declared or unknown)
    nbytes: int = 0  # learned from input sizes: the subtask's input bytes it was scaled to (0: not scaled)
    exponent: float = 0.0  # ... and the fitted run time ~ bytes ** exponent

    @property
    def known(self) -> bool:
        return self.source != "unknown"

    @property
    def guessed(self) -> bool:
        """Neither learned nor declared: the duration assumed for unknown work, or a running lower bound."""
        return self.source not in ("learned", "declared")

    def describe(self) -> str:
        if self.source == "learned":
            sized = (f"; for {_human_bytes(self.nbytes)} of input, run time ~ bytes^{self.exponent:.2f}"
                     if self.nbytes else "")
            return f"{self.seconds:.3g} s (learned from {self.runs} run{'s' if self.runs != 1 else ''}{sized})"
        if self.source == "declared":
            return f"{self.seconds:.3g} s (declared work_s)"
        if self.source == "running":
            return f"{self.seconds:.3g} s (at least: a run of it has taken that long so far, none finished)"
        return f"{self.seconds:.3g} s (unknown: assumed for work never seen)"


def _mad(xs, center: float) -> float:
    """The normal-consistent median absolute deviation of ``xs`` around ``center`` (the module's spread)."""
    return 1.4826 * statistics.median(abs(x - center) for x in xs)


def _human_bytes(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def duration_key(fn_key: str, gpu_count: int, gpu_milli: int, declared_s: float = 0.0) -> str:
    """The key estimates are kept under: the function and the options that change its run time (GPU
    count and share, and a declared ``work_s``: ``f.options(work_s=20)`` says it is other work than
    ``f``'s usual)."""
    return f"{fn_key}|{gpu_count}x{gpu_milli}|{declared_s:g}"


def with_elapsed(est: Estimate, elapsed_s: float) -> Estimate:
    """``est`` for work of unknown duration raised to ``elapsed_s``, how long the oldest running subtask
    of its key has run so far (it takes at least that long; Dask raises unknown durations by elapsed
    time likewise). Learned and declared estimates are kept as they are."""
    if est.known or not elapsed_s > est.seconds:
        return est
    return Estimate(float(elapsed_s), "running")


class DurationModel:
    def __init__(self) -> None:
        self._obs: dict[str, deque] = {}  # key -> the last WINDOW log-seconds
        self._runs: dict[str, int] = {}  # key -> runs observed (or adopted)
        self._est: dict[str, float] = {}  # key -> log of the estimate (cached; dropped on change)
        self._sized: dict[str, deque] = {}  # key -> the last WINDOW (log bytes, log seconds) pairs
        self._line: dict[str, tuple | None] = {}  # key -> fitted size line (cached; dropped on change)

    def observe(self, key: str, run_s: float, slowdown: float = 1.0, nbytes: int | None = None) -> None:
        """One successful run (module doc); ``nbytes``: its input bytes, where known."""
        if not (math.isfinite(run_s) and run_s >= 0 and math.isfinite(slowdown) and slowdown > 0):
            return  # a broken measurement teaches nothing
        y = math.log(max(run_s / slowdown, MIN_S))
        self._obs.setdefault(key, deque(maxlen=WINDOW)).append(y)
        self._runs[key] = self._runs.get(key, 0) + 1
        self._est.pop(key, None)
        if nbytes is not None and nbytes > 0:
            self._sized.setdefault(key, deque(maxlen=WINDOW)).append((math.log(nbytes), y))
            self._line.pop(key, None)

    def size_line(self, key: str) -> tuple[float, float, float, float, float] | None:
        """(exponent, intercept, residual spread, log of the smallest and of the largest bytes seen) of
        ``key``'s run time against its input bytes, or None where sizes do not predict it (module doc)."""
        if key in self._line:
            return self._line[key]
        pairs = list(self._sized.get(key, ()))
        line = None
        if len(pairs) >= SIZE_MIN_RUNS:
            xs = [x for x, _ in pairs]
            lo, hi = min(xs), max(xs)
            if hi - lo >= math.log(SIZE_MIN_RATIO):
                slopes = [(y2 - y1) / (x2 - x1) for i, (x1, y1) in enumerate(pairs)
                          for x2, y2 in pairs[i + 1:] if abs(x2 - x1) > 1e-3]
                b = min(max(statistics.median(slopes), 0.0), SIZE_MAX_EXPONENT)
                a = statistics.median(y - b * x for x, y in pairs)
                r = min(_mad([y - a - b * x for x, y in pairs], 0.0), MAX_SPREAD)
                ys = [y for _, y in pairs]
                if b > 0 and r < SIZE_MIN_GAIN * _mad(ys, statistics.median(ys)):
                    line = (b, a, r, lo, hi)
        self._line[key] = line
        return line

    def _fit(self, key: str) -> tuple[float, float]:
        """(log of the mean, log of the 90th percentile) of ``key``'s recent runs."""
        v = self._est.get(key)
        if v is None:
            xs = self._obs[key]
            m = statistics.median(xs)
            spread = min(_mad(xs, m), MAX_SPREAD) if len(xs) > 2 else 0.0
            v = self._est[key] = (m + spread * spread / 2, m + Z90 * spread)
        return v

    def estimate(self, key: str, declared: float = 0.0, nbytes: int | None = None) -> Estimate:
        """``key``'s estimate (module doc); ``nbytes``: the subtask's input bytes, where known, which a
        learned size line scales it to."""
        if key in self._obs:
            line = self.size_line(key) if BY_SIZE and nbytes and key in self._sized else None
            if line is not None:
                b, a, r, lo, hi = line
                ext = math.log(SIZE_EXTRAPOLATE)
                mu = a + b * min(max(math.log(nbytes), lo - ext), hi + ext)
                est = math.exp(mu + r * r / 2)
                return Estimate(est, "learned", self._runs[key], max(0.0, math.exp(mu + Z90 * r) - est),
                                int(nbytes), b)
            mean, p90 = self._fit(key)
            return Estimate(math.exp(mean), "learned", self._runs[key], max(0.0, math.exp(p90) - math.exp(mean)))
        if declared > 0:
            return Estimate(float(declared), "declared")
        return Estimate(UNKNOWN_WORK_S, "unknown")

    def entry(self, key: str) -> tuple[float, int, float] | None:
        """(log of the mean, runs, log of the 90th percentile) for ``key``, or None if never observed."""
        if key not in self._obs:
            return None
        mean, p90 = self._fit(key)
        return mean, self._runs[key], p90

    def summary(self) -> dict[str, tuple[float, int, float]]:
        return {k: self.entry(k) for k in self._obs}

    def adopt(self, summary: dict[str, tuple[float, int, float]]) -> None:
        """Take the estimates learned elsewhere for keys seen fewer times here (kept as they came until a
        run here is observed; then they count as one observation of the mean)."""
        for key, (mean, n, p90) in summary.items():
            if self._runs.get(key, 0) < n and math.isfinite(mean) and math.isfinite(p90) and n > 0:
                self._obs[key] = deque([float(mean)], maxlen=WINDOW)
                self._runs[key] = int(n)
                self._est[key] = (float(mean), float(p90))

    def __len__(self) -> int:
        return len(self._obs)
