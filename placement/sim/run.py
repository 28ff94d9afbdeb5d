"""Run many replays (policies x seeds), optionally in parallel processes, with a progress bar."""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from .. import registry
from .progress import Progress
from .replay import RunResult, replay
from .trace import load_trace

_LOADED: dict[tuple[str, str], tuple] = {}


def _job(nodes_csv: str, pods_csv: str, policy: str, seed: int, tune: float) -> RunResult:
    key = (nodes_csv, pods_csv)
    if key not in _LOADED:  # each worker process parses a trace once
        _LOADED[key] = load_trace(nodes_csv, pods_csv)
    nodes, pods = _LOADED[key]
    return replay(nodes, pods, policy, seed, tune)


def parse_seeds(text: str) -> list[int]:
    """'42-51', '42,45,50' or '42' -> list of seeds."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part[1:]:
                lo, hi = part.split("-", 1)
                if int(hi) < int(lo):
                    raise ValueError
                seeds.extend(range(int(lo), int(hi) + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        raise ValueError(f"--seeds {text!r}: expected N, N-M or a comma list such as 42,43,50") from None
    return seeds


def run_many(nodes_csv: str | Path, pods_csv: str | Path, policies: list[str], seeds: list[int],
             tune: float = 1.3, jobs: int = 1, progress: bool | None = None) -> list[RunResult]:
    """All (policy, seed) replays, ordered by policy then seed. Raises early on bad input."""
    for p in policies:
        registry.policy_class(p)  # unknown names fail before any work, listing the valid ones
    if tune <= 0:
        raise ValueError(f"--tune must be > 0, got {tune}")
    load_trace(nodes_csv, pods_csv)  # validate the files once, in this process, with a clear error
    tasks = [(str(nodes_csv), str(pods_csv), p, s, tune) for p in policies for s in seeds]
    bar = Progress(len(tasks), "simulate", force=bool(progress))
    if progress is False:
        bar.enabled = False
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(tasks)))
    results: dict[tuple[str, int], RunResult] = {}
    if jobs == 1:
        for t in tasks:
            r = _job(*t)
            results[(r.policy, r.seed)] = r
            bar.update(note=f"{r.policy} seed {r.seed}")
    else:
        with ProcessPoolExecutor(jobs) as ex:
            futs = [ex.submit(_job, *t) for t in tasks]
            for f in as_completed(futs):
                r = f.result()
                results[(r.policy, r.seed)] = r
                bar.update(note=f"{r.policy} seed {r.seed}")
    return [results[(p, s)] for p in policies for s in seeds]
