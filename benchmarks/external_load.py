"""Makespan with half the GPUs busy with outside work: fastgpu (placed by live load) vs plain Ray.

    python benchmarks/external_load.py [--n 12] [--work 0.3,1,3] [--load 0.9] [--waves 3] [--declared]
                                       [--power 1]

Local cluster: 3 nodes x 2 emulated GPUs; GPU 1 of every node carries ``--load`` utilisation from a
process outside Ray (so half the GPUs are loaded). Per ``--work`` setting, ``--waves`` waves of ``--n``
subtasks of that many GPU-seconds each, one whole GPU per subtask on both sides (no packing: only
placement differs). By default nothing declares ``work_s``, as users write it: fastgpu starts each
setting with a fresh session (no learned run times) and learns from the waves it runs; ``--declared``
declares ``work_s`` instead. Emulated work runs ``work * slowdown(load) ** power`` on either side;
``--power 1`` is the cost model's own formula (``placement.cost.slowdown``); another power is work that
does not follow the model the estimator divides out (not circular). Baseline:
``@ray.remote(num_gpus=1, max_calls=0)`` tasks (worker reuse, so process start-up does not count against
Ray), warm. Prints every wave, the ratio to plain Ray's median wave, and the run time fastgpu learned.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def job(i, work, power):
    import fastgpu_ray as fastgpu
    from placement.cost import slowdown
    if power == 1.0:
        fastgpu.emulate_work(work, util=0.0)
    else:  # emulate_work slows by slowdown(u); ask for work * slowdown(u) ** (power - 1) of it
        fastgpu.emulate_work(work * slowdown(_outside_load()) ** (power - 1.0), util=0.0)
    return i


def _outside_load() -> float:
    """This task's GPU's load from outside Ray, as its node's monitor emulates it."""
    import ray

    import fastgpu_ray as fastgpu
    from fastgpu_ray.actors.monitor import monitor_for

    g = fastgpu.gpu_ids()[0]
    tel = ray.get(monitor_for(ray.get_runtime_context().get_node_id()).read.remote())
    return next(r.external_util for r in tel.gpus if r.index == g)


def warm(i):
    return i


def works(text: str) -> list[float]:
    try:
        out = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--work {text!r}: a comma-separated list of seconds") from None
    if not out or any(not (x > 0) for x in out):
        raise argparse.ArgumentTypeError(f"--work {text!r}: every value must be > 0 seconds")
    return out


def setting(a, work: float, plain) -> tuple[list[float], list[float], list[str], str]:
    """Ray's waves, fastgpu's waves (fresh session), where fastgpu's subtasks ran, its learned estimate."""
    import ray

    import fastgpu_ray as fastgpu

    expected = list(range(a.n))
    fastgpu.init(emulate=True)  # (the emulated load lives in its nodes' monitors: Ray's tasks see it too)
    try:
        for n in fastgpu.gpu_nodes():
            fastgpu.set_emulated_gpu(n, 1, util=a.load, processes=1)
        ray_s = []  # first, while fastgpu holds no GPU
        for _ in range(a.waves):
            t0 = time.perf_counter()
            assert ray.get([plain.remote(i, work, a.power) for i in range(a.n)]) == expected
            ray_s.append(time.perf_counter() - t0)
        fwarm = fastgpu.task(num_gpus=1)(warm)  # another function: it teaches nothing about `job`
        ray.get([fwarm.remote(i) for i in range(6)])  # warm: claims the 6 GPUs
        fjob = fastgpu.task(num_gpus=1, **({"work_s": work} if a.declared else {}))(job)
        fg_s, spread = [], []
        for _ in range(a.waves):
            t0 = time.perf_counter()
            refs = [fjob.remote(i, work, a.power) for i in range(a.n)]
            assert ray.get(refs) == expected
            fg_s.append(time.perf_counter() - t0)
            recs = [fastgpu.explain(r) for r in refs]
            loaded = sum(1 for r in recs if r.gpus and r.gpus[0] == 1)
            spread.append(f"{a.n - loaded} idle / {loaded} loaded")
        learned = recs[-1].estimate
    finally:
        fastgpu.shutdown()
    return ray_s, fg_s, spread, learned


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--work", type=works, default=[0.3, 1.0, 3.0], help="seconds per subtask (comma list)")
    ap.add_argument("--load", type=float, default=0.9)
    ap.add_argument("--waves", type=int, default=3, help="waves per side and setting")
    ap.add_argument("--declared", action="store_true", help="fastgpu declares work_s (default: learns it)")
    ap.add_argument("--power", type=float, default=1.0, help="work slows by slowdown(load) ** power")
    a = ap.parse_args(argv)
    if a.n < 1 or a.waves < 1 or not (0 <= a.load < 1) or not (a.power > 0):
        ap.error("--n and --waves must be >= 1, --load in [0, 1), --power > 0")
    import ray

    from fastgpu_ray.local_cluster import LocalCluster

    c = LocalCluster(nodes=3, gpus_per_node=2, cpus_per_node=4).start()
    rows = []
    try:
        plain = ray.remote(num_gpus=1, max_calls=0)(warm)
        ray.get([plain.remote(i) for i in range(12)])  # warm Ray's worker processes (reused: max_calls=0)
        plain = ray.remote(num_gpus=1, max_calls=0)(job)
        for work in a.work:
            rows.append((work, *setting(a, work, plain)))
    finally:
        c.stop()
    how = "work_s declared" if a.declared else "no work_s (learned)"
    print(f"\n{a.n} subtasks per wave on 6 emulated GPUs (3 nodes), GPU 1 of each node {a.load:.0%} busy outside "
          f"Ray, work slowed by slowdown(load)^{a.power:g}; {os.cpu_count()} CPU cores; fastgpu: {how}")
    print(f"{'work':>6}  {'wave':>4}  {'plain Ray':>10}  {'fastgpu':>9}  {'ratio':>6}  fastgpu spread")
    for work, ray_s, fg_s, spread, learned in rows:
        base = statistics.median(ray_s)
        for k, (r, f, s) in enumerate(zip(ray_s, fg_s, spread), 1):
            print(f"{work:>5g}s  {k:>4}  {r:>9.2f}s  {f:>8.2f}s  {f / base:>6.2f}  {s}")
        print(f"        fastgpu's estimate after the last wave: {learned}; true {work:g} s per subtask")
    print("ratio = fastgpu wave / plain Ray's median wave (target <= 0.70 by the second wave)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
