"""A map of work of unknown, widely varying duration on partly loaded GPUs: fastgpu vs plain Ray.

    python benchmarks/heterogeneous.py [--n 200] [--median 0.2] [--sigma 1.0] [--load 0.8] [--seeds 5]
                                       [--sized [--mib-per-s 4]]

Local cluster: 3 nodes x 2 emulated GPUs; GPU 1 of the first two nodes carries ``--load`` utilisation
from outside Ray (2 of 6 GPUs loaded). Per seed, ``--n`` subtasks whose durations are lognormal (median
``--median`` s, ``--sigma``), emulated as ``d * placement.cost.slowdown(load)`` on either side. Nothing
declares ``work_s``; each seed's fastgpu run starts a fresh session (nothing learned before it) and
submits the whole map with ``.map()``. Baseline: ``@ray.remote(num_gpus=1, max_calls=0)`` tasks (worker
reuse), warm. Lower bound per seed: the larger of the total work over the cluster's capacity at its load
(an idle GPU counts 1, a loaded one ``1 / slowdown(load)``) and the longest subtask on an idle GPU.
Targets (issue 11): median over seeds of fastgpu's makespan <= 1.2x the lower bound and <= plain Ray's.

``--sized``: run time follows input size. Each subtask takes a numpy array of ``d * --mib-per-s`` MiB
(by value) and works ``nbytes / (--mib-per-s MiB/s)`` seconds, so the function's run times spread as
widely as above but a subtask's own input says how long it is. fastgpu runs twice per seed, each in a
cluster of its own: learning run time per input byte (``placement.durations``' size line) and with it
turned off (``FASTGPU_DURATIONS_BY_SIZE=0``: one estimate per function), to measure whether it helps.
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


def job_sized(x):
    import fastgpu_ray as fastgpu
    fastgpu.emulate_work(x.nbytes / BYTES_PER_S, util=0.0)
    return x.nbytes


BYTES_PER_S = 4 * 2**20  # --sized: bytes of input per second of work (--mib-per-s)


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
    ap.add_argument("--sized", action="store_true", help="run time follows input size (module doc)")
    ap.add_argument("--mib-per-s", type=float, default=4.0, help="--sized: MiB of input per second of work")
    a = ap.parse_args(argv)
    if a.n < 1 or a.seeds < 1 or not (a.median > 0) or not (a.sigma >= 0) or not (0 <= a.load < 1):
        ap.error("--n and --seeds must be >= 1, --median > 0, --sigma >= 0, --load in [0, 1)")
    if not (a.mib_per_s > 0):
        ap.error("--mib-per-s must be > 0")
    global BYTES_PER_S
    BYTES_PER_S = int(a.mib_per_s * 2**20)
    if a.sized:
        return sized(a)
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
            nodes = _loaded_session(a.load)  # fresh: nothing learned (the load lives in its nodes' monitors)
            try:
                t0 = time.perf_counter()  # plain Ray first, while fastgpu holds no GPU
                assert ray.get([plain.remote(x) for x in d]) == d
                ray_s = time.perf_counter() - t0
                fg_s, on_loaded, learned = _timed_map(job, d, d, nodes)
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


def sized(a) -> int:
    """``--sized`` (module doc): per seed, plain Ray and fastgpu in one cluster, then fastgpu without the
    size line in a second one (the switch is read where the node schedulers start)."""
    from placement.cost import slowdown

    capacity = 6 - len(LOADED) + len(LOADED) / slowdown(a.load)
    works = [np.random.default_rng(seed).lognormal(np.log(a.median), a.sigma, a.n) for seed in range(a.seeds)]
    sizes = [[max(1, int(w * BYTES_PER_S)) for w in ws] for ws in works]
    true = [[n / BYTES_PER_S for n in ns] for ns in sizes]  # the work each subtask really does
    rows = {seed: {"bound": max(sum(t) / capacity, max(t))} for seed, t in enumerate(true)}
    for mode in ("by_size", "per_function"):
        os.environ["FASTGPU_DURATIONS_BY_SIZE"] = "1" if mode == "by_size" else "0"
        for seed, ns in enumerate(sizes):
            r, loaded_runs, learned = _sized_seed(a, ns, with_ray=mode == "by_size")
            rows[seed].update(r)
            rows[seed][mode + "_loaded"] = loaded_runs
            rows[seed][mode + "_learned"] = learned
    os.environ.pop("FASTGPU_DURATIONS_BY_SIZE", None)
    print(f"\n--sized: {a.n} subtasks, input bytes = work x {a.mib_per_s:g} MiB/s, work lognormal (median "
          f"{a.median:g} s, sigma {a.sigma:g}) on 6 emulated GPUs, {len(LOADED)} of them {a.load:.0%} busy outside "
          f"Ray; no work_s; {os.cpu_count()} CPU cores")
    print(f"{'seed':>4}  {'bound':>7}  {'plain Ray':>9}  {'by size':>8}  {'per fn':>8}  {'size/bound':>10}  "
          f"{'fn/bound':>8}  {'size/Ray':>8}  {'on loaded (size, fn)':>20}")
    for seed, r in rows.items():
        print(f"{seed:>4}  {r['bound']:>6.2f}s  {r['ray']:>8.2f}s  {r['by_size']:>7.2f}s  {r['per_function']:>7.2f}s  "
              f"{r['by_size'] / r['bound']:>10.2f}  {r['per_function'] / r['bound']:>8.2f}  "
              f"{r['by_size'] / r['ray']:>8.2f}  {r['by_size_loaded']:>9} {r['per_function_loaded']:>10}")
    last = rows[len(rows) - 1]
    print(f"learned (last seed), by size: {last['by_size_learned']}\n"
          f"                    per function: {last['per_function_learned']}")
    med = {k: statistics.median(r[k] / r["bound"] for r in rows.values()) for k in ("by_size", "per_function", "ray")}
    ratio = statistics.median(r["by_size"] / r["per_function"] for r in rows.values())
    print(f"median over {a.seeds} seeds, makespan / lower bound: by size {med['by_size']:.2f}, per function "
          f"{med['per_function']:.2f}, plain Ray {med['ray']:.2f}; by size / per function {ratio:.2f}")
    return 0


def _sized_seed(a, sizes: list[int], with_ray: bool) -> tuple[dict, int, str]:
    import ray

    import fastgpu_ray as fastgpu
    from fastgpu_ray.local_cluster import LocalCluster

    c = LocalCluster(nodes=3, gpus_per_node=2, cpus_per_node=4, object_store_mib=1024).start()
    out: dict = {}
    try:
        xs = [np.zeros(n, dtype=np.uint8) for n in sizes]
        if with_ray:
            plain = ray.remote(num_gpus=1, max_calls=0)(warm)
            ray.get([plain.remote(i) for i in range(12)])  # warm Ray's worker processes (reused)
        nodes = _loaded_session(a.load)
        try:
            if with_ray:
                plain = ray.remote(num_gpus=1, max_calls=0)(job_sized)
                t0 = time.perf_counter()  # plain Ray first, while fastgpu holds no GPU
                assert ray.get([plain.remote(x) for x in xs]) == sizes
                out["ray"] = time.perf_counter() - t0
            mode = "by_size" if os.environ.get("FASTGPU_DURATIONS_BY_SIZE") != "0" else "per_function"
            out[mode], on_loaded, learned = _timed_map(job_sized, xs, sizes, nodes)
        finally:
            fastgpu.shutdown()
    finally:
        c.stop()
    return out, on_loaded, learned


def _loaded_session(load: float) -> list[str]:
    """A fresh fastgpu session on emulated GPUs, the ``LOADED`` ones carrying ``load`` from outside Ray;
    returns its GPU nodes."""
    import fastgpu_ray as fastgpu

    fastgpu.init(emulate=True)
    nodes = fastgpu.gpu_nodes()
    for pos, g in LOADED:
        fastgpu.set_emulated_gpu(nodes[pos], g, util=load, processes=1)
    return nodes


def _timed_map(fn, items: list, expected: list, nodes: list[str]) -> tuple[float, int, str]:
    """fastgpu's run: its workers claimed by another function (which teaches nothing about ``fn``), then
    ``fn.map(items)`` timed. Returns (seconds, subtasks run on loaded GPUs, the last one's estimate)."""
    import ray

    import fastgpu_ray as fastgpu

    fwarm = fastgpu.task(num_gpus=1)(warm)
    ray.get([fwarm.remote(i) for i in range(6)])  # claims the 6 GPUs
    f = fastgpu.task(num_gpus=1)(fn)
    t0 = time.perf_counter()
    refs = f.map(items)
    assert ray.get(refs) == expected
    secs = time.perf_counter() - t0
    recs = [fastgpu.explain(r) for r in refs]
    on_loaded = sum(1 for r in recs if r.node and (nodes.index(r.node), r.gpus[0]) in LOADED)
    return secs, on_loaded, recs[-1].estimate


if __name__ == "__main__":
    sys.exit(main())
