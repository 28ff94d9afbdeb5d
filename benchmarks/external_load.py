"""Makespan with half the GPUs busy with outside work: fastgpu (placed by live load) vs plain Ray.

    python benchmarks/external_load.py [--n 12] [--work 1.0] [--load 0.9]

Local cluster: 3 nodes x 2 emulated GPUs; GPU 1 of every node carries ``--load`` utilisation from a
process outside Ray (so half the GPUs are loaded). ``--n`` subtasks of ``--work`` GPU-seconds each, one
whole GPU per subtask on both sides (no packing: only placement differs). Emulated work runs
``work * placement.cost.slowdown(load)`` on either side (``fastgpu.emulate_work``, same model).
Baseline: ``@ray.remote(num_gpus=1, max_calls=0)`` tasks (worker reuse, so process start-up does not
count against Ray). Both sides are warm (their GPU workers exist). Prints both makespans and the ratio.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def job(i, work):
    import fastgpu_ray as fastgpu
    fastgpu.emulate_work(work, util=0.0)
    return i


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--work", type=float, default=1.0)
    ap.add_argument("--load", type=float, default=0.9)
    ap.add_argument("--repeat", type=int, default=2, help="runs per side (the best is kept)")
    a = ap.parse_args(argv)
    import ray

    import fastgpu_ray as fastgpu
    from fastgpu_ray.local_cluster import LocalCluster

    c = LocalCluster(nodes=3, gpus_per_node=2, cpus_per_node=4).start()
    try:
        fastgpu.init(emulate=True)
        for n in fastgpu.gpu_nodes():
            fastgpu.set_emulated_gpu(n, 1, util=a.load, processes=1)
        expected = list(range(a.n))

        plain = ray.remote(num_gpus=1, max_calls=0)(job)
        ray.get([plain.remote(i, 0.0) for i in range(12)])  # warm its worker processes
        ray_s = []
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            assert ray.get([plain.remote(i, a.work) for i in range(a.n)]) == expected
            ray_s.append(time.perf_counter() - t0)

        fjob = fastgpu.task(num_gpus=1, work_s=a.work)(job)
        ray.get([fjob.remote(i, 0.0) for i in range(6)])  # warm: claims the 6 GPUs
        fg_s, spread = [], None
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            refs = [fjob.remote(i, a.work) for i in range(a.n)]
            assert ray.get(refs) == expected
            fg_s.append(time.perf_counter() - t0)
            recs = [fastgpu.explain(r) for r in refs]
            loaded = sum(1 for r in recs if r.gpus and r.gpus[0] == 1)
            spread = f"{a.n - loaded} on idle GPUs, {loaded} on loaded GPUs"
        fastgpu.shutdown()
    finally:
        c.stop()
    r, f = min(ray_s), min(fg_s)
    print(f"\n{a.n} subtasks x {a.work:g} GPU-s on 6 emulated GPUs (3 nodes), GPU 1 of each node {a.load:.0%} "
          f"busy outside Ray; {os.cpu_count()} CPU cores; best of {a.repeat}")
    print(f"{'way':<44}{'makespan':>10}")
    print(f"{'plain Ray num_gpus=1 (max_calls=0)':<44}{r:>9.2f}s")
    print(f"{'fastgpu num_gpus=1, work_s declared':<44}{f:>9.2f}s   ({spread})")
    print(f"fastgpu / plain Ray makespan ratio: {f / r:.2f} (target <= 0.70)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
