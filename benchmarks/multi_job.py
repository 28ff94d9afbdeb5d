"""Several jobs on one cluster: fastgpu's fair share against plain Ray tasks (worker reuse), side by side.

    python benchmarks/multi_job.py [--sizes 72,12,12] [--gap-s 2] [--reps 3] [--work-s 1]

Local cluster: a head without GPUs and 3 nodes x 2 logical GPUs. Each job is its own driver process (its
own Ray job, ``job_driver.py``) mapping ``size`` subtasks of ``work-s`` seconds that each need a GPU; the
jobs start ``gap-s`` apart. Per system: each job size is first run alone (its solo time, same warm cluster);
then ``reps`` runs of all jobs together, interleaved between the systems. Printed per run: each job's time
(first submit to last result), its slowdown (time / solo), the makespan (first submit to last result of
any job) and Jain's fairness index of the slowdowns; then medians and the fastgpu / Ray ratios.
Targets (issue 9): makespan at most 1.1x Ray's, Jain's index at least 0.9.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from multi_job_stats import held_idle_gaps, jain, median, p99, release_together  # noqa: E402

HERE = Path(__file__).resolve().parent


def run_jobs(address: str, system: str, sizes: list[int], gap_s: float, work_s: float, tmp: Path) -> list[dict]:
    """Start one driver per size, ``gap_s`` apart; returns their records (in order)."""
    procs = []
    go = tmp / f"go-{time.monotonic_ns()}"
    for i, n in enumerate(sizes):
        out = tmp / f"{system}-{i}-{time.monotonic_ns()}.json"
        cmd = [sys.executable, str(HERE / "job_driver.py"), "--address", address, "--system", system,
               "--n", str(n), "--work-s", str(work_s), "--label", f"job{i}", "--out", str(out),
               "--go-file", str(go), "--offset-s", str(i * gap_s)]
        procs.append((out, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                            env={**os.environ, "RAY_AUTH_MODE": "disabled"})))
    release_together([o for o, _ in procs], [p for _, p in procs], go)
    recs = []
    for out, p in procs:
        _, err = p.communicate(timeout=900)
        if p.returncode != 0:
            raise SystemExit(f"a {system} job failed (rc {p.returncode}):\n{err[-3000:]}")
        recs.append(json.loads(out.read_text()))
    return recs


def summary(recs: list[dict], solo: dict[int, float]) -> dict:
    times = [r["runs"][0]["done"] - r["runs"][0]["submit"] for r in recs]
    sizes = [len(r["runs"][0]["spans"]) for r in recs]
    slow = [t / solo[n] for t, n in zip(times, sizes)]
    makespan = max(r["runs"][0]["done"] for r in recs) - min(r["runs"][0]["submit"] for r in recs)
    same, handover = held_idle_gaps({i: r["runs"][0]["spans"] for i, r in enumerate(recs)})
    return {"times": times, "slowdowns": slow, "makespan": makespan, "jain": jain(slow),
            "idle_p99": p99(same), "handovers": len(handover)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="72,12,12")
    ap.add_argument("--gap-s", type=float, default=2.0)
    ap.add_argument("--work-s", type=float, default=1.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--keep", help="write every job's record (spans: start, end, node, GPU) under this folder")
    a = ap.parse_args(argv)
    try:
        sizes = [int(x) for x in a.sizes.split(",")]
    except ValueError:
        ap.error(f"--sizes {a.sizes!r}: give comma-separated subtask counts, e.g. 72,12,12")
    if not sizes or min(sizes) < 1 or a.reps < 1 or a.work_s <= 0 or a.gap_s < 0:
        ap.error("--sizes, --reps and --work-s must be positive, --gap-s not negative")

    from fastgpu_ray.local_cluster import LocalCluster

    systems = ["ray", "fastgpu"]
    res: dict[str, list[dict]] = {s: [] for s in systems}
    with LocalCluster(nodes=3, gpus_per_node=2) as c, tempfile.TemporaryDirectory() as d:
        address, tmp = c.cluster.address, Path(a.keep or d)
        tmp.mkdir(parents=True, exist_ok=True)
        solo = {s: {} for s in systems}
        for s in systems:
            for n in sorted(set(sizes)):
                r = run_jobs(address, s, [n], 0, a.work_s, tmp)[0]["runs"][0]
                solo[s][n] = r["done"] - r["submit"]
            print(f"{s:8s} solo: " + ", ".join(f"{n} subtasks {t:.1f}s" for n, t in solo[s].items()), flush=True)
        for rep in range(a.reps):
            for s in systems if rep % 2 == 0 else systems[::-1]:
                m = summary(run_jobs(address, s, sizes, a.gap_s, a.work_s, tmp), solo[s])
                res[s].append(m)
                print(f"{s:8s} run {rep + 1}: jobs " + ", ".join(f"{t:.1f}s (x{x:.2f})" for t, x in
                                                             zip(m["times"], m["slowdowns"]))
                      + f"; makespan {m['makespan']:.1f}s; Jain {m['jain']:.2f}; held-idle p99 {m['idle_p99']:.2f}s;"
                      f" hand-overs {m['handovers']}", flush=True)
    med = {s: {k: median([m[k] for m in res[s]]) for k in ("makespan", "jain")} for s in systems}
    for s in systems:
        print(f"{s:8s} median makespan {med[s]['makespan']:.1f}s, median Jain {med[s]['jain']:.2f}")
    ratio = med["fastgpu"]["makespan"] / med["ray"]["makespan"]
    print(f"fastgpu / ray makespan: {ratio:.2f}x (target <= 1.1); fastgpu Jain {med['fastgpu']['jain']:.2f} "
          f"(target >= 0.9), Ray {med['ray']['jain']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
