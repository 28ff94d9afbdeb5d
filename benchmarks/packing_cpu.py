"""Packed pure-Python subtasks on one emulated GPU: fastgpu's slot processes against plain Ray, one run.

    python benchmarks/packing_cpu.py [--n 4] [--runs 5] [--seconds 1.0]

A local cluster: a head without GPUs (the driver) and one node with 1 emulated GPU and ``--cpus`` CPUs.
Each subtask burns about ``--seconds`` of pure-Python CPU (it holds the GIL the whole time, as per-op
Python overhead does in small-batch inference) and declares ``gpu_memory="1GiB"``, so ``--n`` of them fit
on the GPU together. Timed, each ``--runs`` times (medians printed):
  fastgpu cold   the first ``n`` after ``fastgpu.init`` and one short call (the GPU's lease is up, and that
                 call taught fastgpu that the function holds the CPU): the slot processes start
  fastgpu alone  one subtask, warm
  fastgpu warm   ``n`` at once, warm (the slot processes exist)
  Ray alone      ``@ray.remote(num_gpus=1)``, one task
  Ray fraction   ``n`` x ``@ray.remote(num_gpus=1/n)`` as users write it (a fresh worker process per task:
                 Ray's ``max_calls=1`` default for GPU tasks)
  Ray reuse      the same with ``max_calls=0`` (worker reuse), warm (a first wave started its workers)
Targets for 4 on a 2-core machine: warm fastgpu <= 1.1x Ray fraction, <= 2.6x fastgpu alone.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def burn(iters: int) -> int:
    x = 0
    for i in range(iters):
        x += i * i % 7
    return x


def calibrate(seconds: float) -> int:
    n = 200_000
    while True:
        t0 = time.perf_counter()
        burn(n)
        dt = time.perf_counter() - t0
        if dt > 0.2:
            return int(n * seconds / dt)
        n *= 2


SETTLE_S = 2.0  # before each timed wave: processes the previous one started or ended settle (2 cores)


def wall(fn) -> float:
    time.sleep(SETTLE_S)
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4, help="subtasks packed on the GPU (default 4)")
    ap.add_argument("--runs", type=int, default=5, help="repetitions; medians are printed (default 5)")
    ap.add_argument("--seconds", type=float, default=1.0, help="CPU seconds each subtask burns (default 1)")
    ap.add_argument("--cpus", type=int, default=4, help="logical CPUs of the GPU node (default 4)")
    a = ap.parse_args(argv)
    if a.n < 1 or a.runs < 1 or a.seconds <= 0 or a.cpus < 1:
        ap.error("--n, --runs and --cpus must be >= 1 and --seconds > 0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray.cluster_utils import Cluster

    import fastgpu_ray as fastgpu

    iters = calibrate(a.seconds)
    print(f"each subtask: burn({iters}) ~ {a.seconds:g} s of pure Python; {os.cpu_count()} cores here", flush=True)
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False,
                                                      "object_store_memory": 100 << 20})
    c.add_node(num_cpus=a.cpus, num_gpus=1, object_store_memory=100 << 20)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    res = {k: [] for k in ("fastgpu cold", "fastgpu alone", "fastgpu warm", "Ray alone", "Ray fraction",
                           "Ray reuse")}
    try:
        packed = fastgpu.task(gpu_memory="1GiB", batch=False)(burn)
        alone = ray.remote(num_gpus=1)(burn)
        frac = ray.remote(num_gpus=1 / a.n)(burn)
        reuse = ray.remote(num_gpus=1 / a.n, max_calls=0)(burn)
        for r in range(a.runs):
            fastgpu.init(emulate=True)
            try:
                ray.get(packed.remote(1000), timeout=300)  # the GPU's lease is up (as for Ray: its node is)
                res["fastgpu cold"].append(wall(lambda: ray.get([packed.remote(iters) for _ in range(a.n)])))
                res["fastgpu alone"].append(wall(lambda: ray.get(packed.remote(iters))))
                res["fastgpu warm"].append(wall(lambda: ray.get([packed.remote(iters) for _ in range(a.n)])))
                procs = fastgpu.session.current().processes()
            finally:
                fastgpu.shutdown()
            res["Ray alone"].append(wall(lambda: ray.get(alone.remote(iters))))
            res["Ray fraction"].append(wall(lambda: ray.get([frac.remote(iters) for _ in range(a.n)])))
            ray.get([reuse.remote(iters // 4) for _ in range(a.n)])  # long enough that n workers start
            res["Ray reuse"].append(wall(lambda: ray.get([reuse.remote(iters) for _ in range(a.n)])))
            print(f"run {r + 1}/{a.runs}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in res.items())
                  + f"; fastgpu processes on the GPU: {len(procs)}", flush=True)
    finally:
        ray.shutdown()
        c.shutdown()
    med = {k: statistics.median(v) for k, v in res.items()}
    print(f"\nmedians of {a.runs} runs, {a.n} packed subtasks of ~{a.seconds:g} s:")
    for k, v in med.items():
        print(f"  {k:<14} {v:6.2f} s")
    print("ratios:")
    print(f"  fastgpu warm / Ray fraction   {med['fastgpu warm'] / med['Ray fraction']:.2f}x  (target <= 1.1)")
    print(f"  fastgpu warm / fastgpu alone  {med['fastgpu warm'] / med['fastgpu alone']:.2f}x  (target <= 2.6)")
    print(f"  fastgpu warm / Ray reuse      {med['fastgpu warm'] / med['Ray reuse']:.2f}x")
    print(f"  fastgpu cold / Ray fraction   {med['fastgpu cold'] / med['Ray fraction']:.2f}x")
    print(f"  Ray fraction / Ray alone      {med['Ray fraction'] / med['Ray alone']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
