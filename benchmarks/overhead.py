"""Per-subtask overhead: N tiny subtasks on 6 emulated GPUs (3 nodes), fastgpu vs four plain-Ray ways.

    python benchmarks/overhead.py [--n 2000] [--default-tasks 30]

Baselines, on the same local multi-node cluster in the same run:
  1. ``@ray.remote(num_gpus=1)`` as users write it (max_calls=1: a fresh worker process per GPU task; so
     slow that only ``--default-tasks`` of them are timed),
  2. the same with worker reuse (``max_calls=0``),
  3. round-robin calls to 6 GPU actors (one per GPU),
  4. the same actors, 20 items per call.
fastgpu: ``f.map(range(N))`` (warm: its GPU workers already exist, as the actors of 3/4 do).
Prints subtasks/s for each and fastgpu's ratio to each.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def tiny(x):
    return x + 1


def rate(n: int, fn) -> float:
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    assert out == [x + 1 for x in range(n)], "wrong results"
    return n / dt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--default-tasks", type=int, default=30)
    a = ap.parse_args(argv)
    import ray

    import fastgpu_ray as fastgpu

    from fastgpu_ray.local_cluster import LocalCluster

    c = LocalCluster(nodes=3, gpus_per_node=2).start()
    n = a.n
    res = {}
    try:
        default_task = ray.remote(num_gpus=1)(tiny)
        reuse_task = ray.remote(num_gpus=1, max_calls=0)(tiny)
        ray.get([default_task.remote(i) for i in range(6)])  # warm
        k = a.default_tasks
        res["ray task num_gpus=1 (max_calls=1)"] = rate(k, lambda: ray.get([default_task.remote(i) for i in range(k)]))
        ray.get([reuse_task.remote(i) for i in range(12)])
        res["ray task, worker reuse (max_calls=0)"] = rate(n, lambda: ray.get([reuse_task.remote(i) for i in range(n)]))

        @ray.remote(num_gpus=1)
        class Gpu:
            def f(self, x):
                return x + 1

            def many(self, xs):
                return [x + 1 for x in xs]

        actors = [Gpu.remote() for _ in range(6)]
        ray.get([a_.f.remote(0) for a_ in actors])
        res["6 GPU actors, round-robin calls"] = rate(
            n, lambda: ray.get([actors[i % 6].f.remote(i) for i in range(n)]))

        def batched():
            chunks = [list(range(i, min(i + 20, n))) for i in range(0, n, 20)]
            parts = ray.get([actors[j % 6].many.remote(ch) for j, ch in enumerate(chunks)])
            return [x for p in parts for x in p]
        res["6 GPU actors, 20 items per call"] = rate(n, batched)
        for a_ in actors:
            ray.kill(a_)
        time.sleep(1.0)

        fastgpu.init(emulate=True)
        ftiny = fastgpu.task(tiny)
        ray.get(ftiny.map(range(60)))  # warm: claims the 6 GPUs (starts their workers)
        fg = rate(n, lambda: ray.get(ftiny.map(range(n))))
        fastgpu.shutdown()
    finally:
        c.stop()
    print(f"\n{n} tiny subtasks on 6 emulated GPUs (3 nodes), {os.cpu_count()} CPU cores")
    print(f"{'way':<42}{'subtasks/s':>12}{'fastgpu ratio':>15}")
    for name, r in res.items():
        print(f"{name:<42}{r:>12.1f}{fg / r:>14.2f}x")
    print(f"{'fastgpu f.map':<42}{fg:>12.1f}{1.0:>14.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
