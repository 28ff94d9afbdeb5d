"""A map of work of unknown, widely varying duration on partly loaded GPUs: fastgpu vs plain Ray.

    python benchmarks/heterogeneous.py [--n 200] [--median 0.2] [--sigma 1.0] [--load 0.8] [--seeds 5]

Local cluster: 3 nodes x 2 emulated GPUs; GPU 1 of the first two nodes carries ``--load`` utilisation
from outside Ray (2 of 6 GPUs loaded). Per seed, ``--n`` subtasks whose durations are lognormal (median
``--median`` s, ``--sigma``), emulated as ``d * placement.cost.slowdown(load)`` on either side. Nothing
declares ``work_s``; each seed's fastgpu run starts a fresh session (nothing learned before it) and
submits the whole map with ``.map()``. Baseline: ``@ray.remote(num_gpus=1, max_calls=0)`` tasks (worker
reuse), warm. Lower bound per seed: the larger of the total work over the cluster's capacity at its load
(an idle GPU counts 1, a loaded one ``1 / slowdown(load)``) and the longest subtask on an idle GPU.
Targets (issue 11): median over seeds of fastgpu's makespan <= 1.2x the lower bound and <= plain Ray's.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np


def job(d):
    import fastgpu_ray as fastgpu
    fastgpu.emulate_work(d, util=0.0)
    return d


def warm(i):
    return i


LOADED = ((0, 1), (1, 1))  # (node position, GPU index) carrying outside load


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--median", type=float, default=0.2)
    ap.add_argument("--sigma", type=float, default=1.0)
    ap.add_argument("--load", type=float, default=0.8)
    ap.add_argument("--seeds", type=int, default=5)
    a = ap.parse_args(argv)
    if a.n < 1 or a.seeds < 1 or not (a.median > 0) or not (a.sigma >= 0) or not (0 <= a.load < 1):
        ap.error("--n and --seeds must be >= 1, --median > 0, --sigma >= 0, --load in [0, 1)")
    import ray

    import fastgpu_ray as fastgpu
    from fastgpu_ray.local_cluster import LocalCluster
    from placement.cost import slowdown

    capacity = 6 - len(LOADED) + len(LOADED) / slowdown(a.load)
    c = LocalCluster(nodes=3, gpus_per_node=2, cpus_per_node=4).start()
    rows = []
    try:
        plain = ray.remote(num_gpus=1, max_calls=0)(warm)
        ray.get([plain.remote(i) for i in range(12)])  # warm Ray's worker processes (reused: max_calls=0)
        plain = ray.remote(num_gpus=1, max_calls=0)(job)
        for seed in range(a.seeds):
            d = np.random.default_rng(seed).lognormal(np.log(a.median), a.sigma, a.n).tolist()
            bound = max(sum(d) / capacity, max(d))
            fastgpu.init(emulate=True)  # fresh: nothing learned (the load lives in its nodes' monitors)
            try:
                nodes = fastgpu.gpu_nodes()
                for pos, g in LOADED:
                    fastgpu.set_emulated_gpu(nodes[pos], g, util=a.load, processes=1)
                t0 = time.perf_counter()  # plain Ray first, while fastgpu holds no GPU
                assert ray.get([plain.remote(x) for x in d]) == d
                ray_s = time.perf_counter() - t0
                fwarm = fastgpu.task(num_gpus=1)(warm)
                ray.get([fwarm.remote(i) for i in range(6)])  # claims the 6 GPUs; teaches nothing about job
                fjob = fastgpu.task(num_gpus=1)(job)
                t0 = time.perf_counter()
                refs = fjob.map(d)
                assert ray.get(refs) == d
                fg_s = time.perf_counter() - t0
                recs = [fastgpu.explain(r) for r in refs]
                on_loaded = sum(1 for r in recs if r.node and (nodes.index(r.node), r.gpus[0]) in LOADED)
                learned = recs[-1].estimate
            finally:
                fastgpu.shutdown()
            rows.append((seed, bound, ray_s, fg_s, on_loaded, learned, float(np.mean(d))))
    finally:
        c.stop()
    print(f"\n{a.n} subtasks, lognormal durations (median {a.median:g} s, sigma {a.sigma:g}) on 6 emulated GPUs "
          f"(3 nodes), {len(LOADED)} of them {a.load:.0%} busy outside Ray; no work_s; {os.cpu_count()} CPU cores")
    print(f"{'seed':>4}  {'bound':>7}  {'plain Ray':>9}  {'fastgpu':>8}  {'fg/bound':>8}  {'fg/Ray':>6}  "
          f"{'on loaded':>9}  learned (true mean)")
    for seed, bound, r, f, on, learned, mean in rows:
        print(f"{seed:>4}  {bound:>6.2f}s  {r:>8.2f}s  {f:>7.2f}s  {f / bound:>8.2f}  {f / r:>6.2f}  {on:>9}  "
              f"{learned} ({mean:.3g} s)")
    med_b = statistics.median(f / b for _, b, _, f, *_ in rows)
    med_r = statistics.median(f / r for _, _, r, f, *_ in rows)
    print(f"median over {a.seeds} seeds: fastgpu / lower bound {med_b:.2f} (target <= 1.2), "
          f"fastgpu / plain Ray {med_r:.2f} (target <= 1.0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
