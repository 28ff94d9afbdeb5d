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
    return _run_all(_job, tasks, "simulate", jobs, progress, lambda r: f"{r.policy} seed {r.seed}")


def _run_all(job, tasks: list[tuple], label: str, jobs: int, progress: bool | None, note) -> list:
    """``job(*t)`` for every task, in parallel processes when ``jobs`` > 1 (0 = one per core), with a
    progress bar (``note(result)`` says which finished); results in task order."""
    bar = Progress(len(tasks), label, force=bool(progress))
    if progress is False:
        bar.enabled = False
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(tasks)))
    out: dict[int, object] = {}
    if jobs == 1:
        for k, t in enumerate(tasks):
            out[k] = r = job(*t)
            bar.update(note=note(r))
    else:
        with ProcessPoolExecutor(jobs) as ex:
            futs = {ex.submit(job, *t): k for k, t in enumerate(tasks)}
            for f in as_completed(futs):
                out[futs[f]] = r = f.result()
                bar.update(note=note(r))
    return [out[k] for k in range(len(tasks))]


# ------------------------------------------------------------------------------------ dynamic replay
_TIMED: dict[tuple[str, str], tuple] = {}  # (the static replay's cache holds other objects per file pair)
_WORKLOADS: dict[tuple, object] = {}


def _dynamic_job(nodes_csv: str, pods_csv: str, system: str, seed: int, load: float | None, rate: float | None,
                 cap_s: float, horizon_s: float | None, priorities: dict | None, round_s: float,
                 scan_limit: float | None = None):
    import dataclasses

    from .dynamic import replay, system as get_system
    from .trace import load_nodes
    from .workload import build, load_timed_pods

    key = (nodes_csv, pods_csv)
    if key not in _TIMED:
        nodes = load_nodes(nodes_csv)
        _TIMED[key] = (nodes, load_timed_pods(pods_csv, set(nodes.models)))
    nodes, timed = _TIMED[key]
    wkey = (key, seed, load, rate, cap_s, horizon_s)
    if wkey not in _WORKLOADS:  # every system of one (seed, load) replays the same pods
        _WORKLOADS.clear()
        _WORKLOADS[wkey] = build(timed, int(nodes.gpus.sum()), seed, load=load, rate=rate, cap_s=cap_s,
                                 horizon_s=horizon_s)
    sys_ = get_system(system)
    if scan_limit is not None and sys_.limit > 1:  # (an ablation: strict FIFO stays strict)
        sys_ = dataclasses.replace(sys_, limit=scan_limit)
    return replay(nodes, _WORKLOADS[wkey], sys_, seed, priorities=priorities, round_s=round_s)


def run_dynamic(nodes_csv: str | Path, pods_csv: str | Path, systems: list[str], seeds: list[int],
                loads: list[float | None], rate: float | None = None, cap_s: float = 1800.0,
                horizon_s: float | None = None, priorities: dict | None = None, round_s: float = 1.0,
                jobs: int = 1, progress: bool | None = None, scan_limit: float | None = None) -> list:
    """Dynamic replays for every (load, seed, system), ordered that way. Raises early on bad input.
    ``scan_limit``: misses per round for every system but strict FIFO, instead of the runtime's."""
    from .dynamic import system as get_system
    from .trace import load_nodes
    from .workload import build, load_timed_pods

    for s in systems:
        get_system(s)
    nodes = load_nodes(nodes_csv)
    timed = load_timed_pods(pods_csv, set(nodes.models))  # errors name the file, line and field
    for load in loads:  # bad loads, rates, caps and horizons fail here, before any replay
        build(timed, int(nodes.gpus.sum()), seeds[0], load=load, rate=rate, cap_s=cap_s, horizon_s=horizon_s)
    if not round_s > 0:
        raise ValueError(f"--round must be > 0 seconds, got {round_s:g}")
    if scan_limit is not None and not scan_limit >= 1:
        raise ValueError(f"--scan-limit must be >= 1, got {scan_limit:g}")
    tasks = [(str(nodes_csv), str(pods_csv), s, seed, load, rate, cap_s, horizon_s, priorities, round_s, scan_limit)
             for load in loads for seed in seeds for s in systems]
    return _run_all(_dynamic_job, tasks, "simulate --dynamic", jobs, progress,
                    lambda r: f"{r.system} load {r.load:.2f} seed {r.seed}")
