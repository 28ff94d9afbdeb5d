"""Dynamic trace replay, side by side: fastgpu's queue against strict FIFO and a Kubernetes-like queue.

    python benchmarks/dynamic_replay.py [--traces default,cpu050,...] [--loads 0.8,1.0,1.2] [--seeds 42]
                                        [--jobs 2] [--json OUT.json]

Runs ``fastgpu simulate --dynamic``'s replays (``placement.sim.run.run_dynamic``) on every openb trace that
has the time columns, prints one table per trace and the issue's targets at loads 1.0 and 1.2:
fastgpu's mean queueing delay at most 0.8x the Kubernetes-like queue with FGD, no qos class worse by more
than 5 %, allocation while pods queue at least equal, the p99 wait of multi-GPU pods no worse; and pods
per hour against strict FIFO with best-fit.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from placement.sim import dynamic_report as rep  # noqa: E402
from placement.sim.run import parse_seeds, run_dynamic  # noqa: E402
from placement.sim.trace import trace_paths  # noqa: E402

TIMED = ("default", "cpu050", "cpu100", "gpushare40", "gpushare80", "gpuspec10", "gpuspec25")


def _m(s: dict, key: str):
    return rep._mean(s.get(key, [None]))


def multi_p99(s: dict) -> float | None:
    """The p99 wait of the 2-, 4- and 8-GPU pods, pooled (mean over seeds)."""
    return _m(s, "wait_multi_gpu.p99")


def verdicts(summ: dict, load: float) -> dict:
    f, k, fifo = summ.get((load, "fastgpu")), summ.get((load, "k8s-fgd")), summ.get((load, "fifo-best-fit"))
    if not f or not k:
        return {}
    wait = _m(f, "wait.mean") / _m(k, "wait.mean")
    wait_all = _m(f, "wait_all_mean") / _m(k, "wait_all_mean")
    worst = rep.worst_qos(f, k)
    mp_f, mp_k = multi_p99(f), multi_p99(k)
    return {"wait_x_k8s_fgd": wait, "wait_all_x_k8s_fgd": wait_all, "worst_qos_x": worst,
            "alloc_busy": (_m(f, "alloc_busy"), _m(k, "alloc_busy")),
            "multi_gpu_p99": (mp_f, mp_k),
            "pods_per_hour_x_fifo": _m(f, "pods_per_hour") / _m(fifo, "pods_per_hour") if fifo else None,
            "met": bool(max(wait, wait_all) <= 0.8 and worst <= 1.05
                        and _m(f, "alloc_busy") >= _m(k, "alloc_busy") - 1e-9
                        and (mp_f is None or mp_k is None or mp_f <= mp_k))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", default=",".join(TIMED))
    ap.add_argument("--loads", default="0.8,1.0,1.2")
    ap.add_argument("--seeds", default="42")
    ap.add_argument("--systems", default="fifo-best-fit,k8s-best-fit,k8s-fgd,fastgpu",
                    help="add k8s-fastgpu for the ablation (the fastgpu policy in the k8s-like queue)")
    ap.add_argument("--jobs", type=int, default=0, help="parallel processes (0 = one per core)")
    ap.add_argument("--scan-limit", type=float, help="ablation (see fastgpu simulate --help)")
    ap.add_argument("--json")
    args = ap.parse_args()
    loads = [float(x) for x in args.loads.split(",")]
    seeds = parse_seeds(args.seeds)
    out = {}
    for trace in args.traces.split(","):
        t0 = time.time()
        nodes_csv, pods_csv = trace_paths(trace)
        runs = run_dynamic(nodes_csv, pods_csv, args.systems.split(","), seeds,
                           loads, jobs=args.jobs, progress=False, scan_limit=args.scan_limit)
        summ = rep.summarise(runs)
        print(f"\n== {trace} (seeds {args.seeds}, {time.time() - t0:.0f} s)")
        print(rep.table(summ))
        out[trace] = {"table": rep.to_json(summ, {"trace": trace, "seeds": seeds, "loads": loads}),
                      "targets": {str(ld): verdicts(summ, ld) for ld in loads if ld >= 1.0}}
        for ld in loads:
            if ld >= 1.0:
                v = verdicts(summ, ld)
                if not v:
                    continue
                fifo = v["pods_per_hour_x_fifo"]
                print(f"   load {ld:g}: fastgpu mean wait {v['wait_x_k8s_fgd']:.2f}x k8s-fgd (queued ones counted: "
                      f"{v['wait_all_x_k8s_fgd']:.2f}x; target <= 0.80), worst "
                      f"qos {v['worst_qos_x']:.2f}x (<= 1.05), alloc busy {v['alloc_busy'][0]:.3f} vs "
                      f"{v['alloc_busy'][1]:.3f}, multi-GPU p99 {rep._f(v['multi_gpu_p99'][0])} vs "
                      f"{rep._f(v['multi_gpu_p99'][1])} s, pods/h {'-' if fifo is None else f'{fifo:.2f}x'} FIFO: "
                      f"{'MET' if v['met'] else 'not met'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
