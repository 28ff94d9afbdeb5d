"""Per-subtask overhead: tiny subtasks on emulated GPUs, fastgpu vs plain-Ray ways, in one run.

    python benchmarks/overhead.py [--n 2000] [--default-tasks 30]     # rates, 3 nodes x 2 GPUs
    python benchmarks/overhead.py --result-mib 4 --n 500               # results of 4 MiB, gathered
    python benchmarks/overhead.py --scaling --n 20000                  # submit rates with 1 and 3 GPU nodes
    python benchmarks/overhead.py --uss 10000 --result-mib 1           # scheduler memory over a long run
    python benchmarks/overhead.py --uss 1000000 --uss-map              # the same, 1M tiny subtasks via f.map

Baselines, on the same local multi-node cluster in the same run:
  1. ``@ray.remote(num_gpus=1)`` as users write it (max_calls=1: a fresh worker process per GPU task; so
     slow that only ``--default-tasks`` of them are timed),
  2. the same with worker reuse (``max_calls=0``),
  3. round-robin calls to one GPU actor per GPU,
  4. the same actors, 20 items per call.
fastgpu: ``f.map(range(N))`` and ``f.remote`` in a loop (warm: its GPU workers already exist, as the
actors of 3/4 do). Prints subtasks/s for each and fastgpu's ratio to each.

``--scaling``: with 1 and then 3 GPU nodes, the rate at which ``f.map`` and a ``.remote()`` loop submit
(calls returned) and complete, against Ray tasks with worker reuse and round-robin actor calls.
``--uss N``: N subtasks in waves of 500 whose refs are released as the run goes; prints the unique memory
(USS) of the driver and the node schedulers before and after, and on the way (every tenth of the run).
``--uss-map`` submits each wave as one ``f.map`` of tiny subtasks (waves of 5,000) instead of a
``.remote()`` loop, so that a million subtasks take minutes, not hours.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time

import numpy as np

RESULT_BYTES = 0  # set from --result-mib before the cluster starts (functions are pickled by value)


def tiny(x):
    return x + 1


def sized(x, nbytes):
    a = np.empty(nbytes // 8)
    a[0] = x + 1
    return a


def value(r) -> float:
    return float(r[0]) if isinstance(r, np.ndarray) else r


def rate(n: int, fn) -> float:
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    assert [value(r) for r in out] == [x + 1 for x in range(n)], "wrong results"
    return n / dt


def baselines(n: int, k_default: int, gpus: int, nbytes: int) -> dict:
    import ray

    res = {}
    if nbytes:
        reuse_task = ray.remote(num_gpus=1, max_calls=0)(sized)
        ray.get([reuse_task.remote(i, nbytes) for i in range(2 * gpus)])
        res["ray task, worker reuse (max_calls=0)"] = rate(
            n, lambda: ray.get([reuse_task.remote(i, nbytes) for i in range(n)]))
        return res
    default_task = ray.remote(num_gpus=1)(tiny)
    reuse_task = ray.remote(num_gpus=1, max_calls=0)(tiny)
    ray.get([default_task.remote(i) for i in range(gpus)])  # warm
    if k_default:
        res["ray task num_gpus=1 (max_calls=1)"] = rate(
            k_default, lambda: ray.get([default_task.remote(i) for i in range(k_default)]))
    ray.get([reuse_task.remote(i) for i in range(2 * gpus)])
    res["ray task, worker reuse (max_calls=0)"] = rate(n, lambda: ray.get([reuse_task.remote(i) for i in range(n)]))

    @ray.remote(num_gpus=1)
    class Gpu:
        def f(self, x):
            return x + 1

        def many(self, xs):
            return [x + 1 for x in xs]

    actors = [Gpu.remote() for _ in range(gpus)]
    ray.get([a_.f.remote(0) for a_ in actors])
    res[f"{gpus} GPU actors, round-robin calls"] = rate(
        n, lambda: ray.get([actors[i % gpus].f.remote(i) for i in range(n)]))

    def batched():
        chunks = [list(range(i, min(i + 20, n))) for i in range(0, n, 20)]
        parts = ray.get([actors[j % gpus].many.remote(ch) for j, ch in enumerate(chunks)])
        return [x for p in parts for x in p]

    res[f"{gpus} GPU actors, 20 items per call"] = rate(n, batched)
    for a_ in actors:
        ray.kill(a_)
    time.sleep(1.0)
    return res


def fastgpu_rates(n: int, nbytes: int) -> dict:
    import ray

    import fastgpu_ray as fastgpu

    fastgpu.init(emulate=True)
    try:
        f = fastgpu.task(tiny) if not nbytes else fastgpu.task(sized)
        args = (lambda i: (i,)) if not nbytes else (lambda i: (i, nbytes))
        ray.get([f.remote(*args(i)) for i in range(60)])  # warm: claims the GPUs (starts their workers)
        out = {}
        if not nbytes:
            out["fastgpu f.map"] = rate(n, lambda: ray.get(f.map(range(n))))
        out["fastgpu .remote() loop"] = rate(n, lambda: ray.get([f.remote(*args(i)) for i in range(n)]))
        return out
    finally:
        fastgpu.shutdown()


def submit_rates(n: int) -> dict:
    """Calls returned per second (submission) and results per second (completion), for each way."""
    import ray

    import fastgpu_ray as fastgpu

    out = {}

    def both(name, submit):
        t0 = time.perf_counter()
        refs = submit()
        t1 = time.perf_counter()
        vals = ray.get(refs)
        t2 = time.perf_counter()
        assert vals == [x + 1 for x in range(n)], "wrong results"
        out[name] = (n / (t1 - t0), n / (t2 - t0))
        del refs, vals

    gpus = int(ray.cluster_resources().get("GPU", 0))
    reuse = ray.remote(num_gpus=1, max_calls=0)(tiny)
    ray.get([reuse.remote(i) for i in range(2 * gpus)])
    both("ray task, worker reuse", lambda: [reuse.remote(i) for i in range(n)])

    @ray.remote(num_gpus=1)
    class Gpu:
        def f(self, x):
            return x + 1

    actors = [Gpu.remote() for _ in range(gpus)]
    ray.get([a_.f.remote(0) for a_ in actors])
    both("GPU actors, round-robin calls", lambda: [actors[i % gpus].f.remote(i) for i in range(n)])
    for a_ in actors:
        ray.kill(a_)
    time.sleep(1.0)
    fastgpu.init(emulate=True)
    try:
        f = fastgpu.task(tiny)
        ray.get(f.map(range(200)))
        both("fastgpu f.map", lambda: f.map(range(n)))
        both("fastgpu .remote() loop", lambda: [f.remote(i) for i in range(n)])
    finally:
        fastgpu.shutdown()
    return out


def uss_bytes(pid: int) -> int:
    """Unique set size: the private pages of ``pid`` (``/proc/PID/smaps_rollup``; local cluster only)."""
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1]) * 1024
    return total


def uss_run(n: int, nbytes: int, use_map: bool = False) -> None:
    import ray

    import fastgpu_ray as fastgpu

    def pids():
        s = fastgpu.session.current()
        return ray.get([h.__ray_call__.remote(lambda self: os.getpid()) for h in s.schedulers.values()])

    def uss(ps, nodes):
        return [uss_bytes(p) for p in ps]

    fastgpu.init(emulate=True)
    try:
        f = fastgpu.task(tiny if use_map else sized)
        s = fastgpu.session.current()
        nodes = list(s.schedulers)
        wave = 5000 if use_map else 500

        def submit(k):
            if use_map:
                return list(f.map(range(k)))
            return [f.remote(i, nbytes) for i in range(k)]

        ray.get(submit(wave))
        gc.collect()
        ps = pids()
        before, d0 = uss(ps, nodes), uss_bytes(os.getpid())
        done, mark = 0, max(n // 10, 1)
        t0 = time.perf_counter()
        while done < n:
            k = min(wave, n - done)
            refs = submit(k)
            ray.wait(refs, num_returns=len(refs), fetch_local=False)
            del refs
            done += k
            if done % mark < k:
                now, dn = uss(ps, nodes), uss_bytes(os.getpid()) - d0
                grow = " ".join(f"{(a - b) / 2**20:+.1f}" for a, b in zip(now, before))
                print(f"  {done:>9} done, {time.perf_counter() - t0:7.1f}s: node schedulers {grow} MiB, "
                      f"driver {dn / 2**20:+.1f} MiB", flush=True)
        gc.collect()
        time.sleep(2.0)
        after, d1 = uss(ps, nodes), uss_bytes(os.getpid())
        what = "tiny results (f.map)" if use_map else f"{nbytes / 2**20:.1f} MiB results"
        print(f"\n{n} subtasks with {what} in {time.perf_counter() - t0:.1f}s, refs released")
        for nd, b, a in zip(nodes, before, after):
            print(f"  node scheduler {nd[:12]}: USS {b / 2**20:.1f} -> {a / 2**20:.1f} MiB ({(a - b) / 2**20:+.1f})")
        print(f"  driver: USS {d0 / 2**20:.1f} -> {d1 / 2**20:.1f} MiB ({(d1 - d0) / 2**20:+.1f})")
        worst = max(max(a - b for a, b in zip(after, before)), d1 - d0) / 2**20
        print(f"  [{'PASS' if worst <= 100 else 'FAIL'}] largest growth {worst:+.1f} MiB (target <= 100)")
    finally:
        fastgpu.shutdown()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--default-tasks", type=int, default=30)
    ap.add_argument("--result-mib", type=float, default=0.0, help="each subtask returns an array this large")
    ap.add_argument("--scaling", action="store_true", help="submit rates with 1 and 3 GPU nodes")
    ap.add_argument("--uss", type=int, default=0, help="run this many subtasks and print scheduler memory")
    ap.add_argument("--uss-map", action="store_true", help="with --uss: tiny subtasks submitted by f.map")
    a = ap.parse_args(argv)
    if a.n < 1 or a.result_mib < 0 or a.uss < 0:
        ap.error("--n must be >= 1, --result-mib and --uss >= 0")
    if a.uss_map and not a.uss:
        ap.error("--uss-map needs --uss N")
    import ray  # noqa: F401

    from fastgpu_ray.local_cluster import LocalCluster

    nbytes = int(a.result_mib * 2**20)
    store = max(200, int(3 * a.n * a.result_mib) + 200)  # every result fits: nothing spills
    if a.scaling:
        rows = {}
        for nodes in (1, 3):
            c = LocalCluster(nodes=nodes, gpus_per_node=2, object_store_mib=store).start()
            try:
                rows[nodes] = submit_rates(a.n)
            finally:
                c.stop()
        print(f"\n{a.n} tiny subtasks; submit rate (calls returned/s) and completion rate (results/s), "
              f"{os.cpu_count()} CPU cores")
        print(f"{'way':<32}{'1 node submit':>14}{'done':>9}{'3 nodes submit':>16}{'done':>9}{'growth':>8}")
        for name in rows[1]:
            (s1, d1), (s3, d3) = rows[1][name], rows[3][name]
            print(f"{name:<32}{s1:>14.0f}{d1:>9.0f}{s3:>16.0f}{d3:>9.0f}{d3 / d1:>7.2f}x")
        return 0
    c = LocalCluster(nodes=3, gpus_per_node=2, object_store_mib=store).start()
    try:
        if a.uss:
            uss_run(a.uss, nbytes or 2**20, a.uss_map)
            return 0
        res = baselines(a.n, a.default_tasks, 6, nbytes)
        fg = fastgpu_rates(a.n, nbytes)
    finally:
        c.stop()
    what = f"results of {a.result_mib:g} MiB gathered with ray.get" if nbytes else "tiny subtasks"
    print(f"\n{a.n} {what}, 6 emulated GPUs (3 nodes), {os.cpu_count()} CPU cores")
    print(f"{'way':<42}{'subtasks/s':>12}" + "".join(f"{k[8:]:>24}" for k in fg))
    for name, r in res.items():
        print(f"{name:<42}{r:>12.1f}" + "".join(f"{v / r:>23.2f}x" for v in fg.values()))
    for name, v in fg.items():
        print(f"{name:<42}{v:>12.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
