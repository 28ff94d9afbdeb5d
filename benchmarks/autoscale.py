"""Scaling from zero GPU nodes: fastgpu against plain Ray tasks on Ray's fake autoscaling provider.

    python benchmarks/autoscale.py [--n 8] [--work-s 1] [--reps 3] [--max-nodes 2] [--node-idle-s 5]

Per run, a fresh local autoscaling cluster (``fastgpu_ray.local_autoscaling``): a head without GPUs and
one node type of 2 logical GPUs, ``min_workers: 0``, ``max_workers: --max-nodes``, the autoscaler's idle
timeout ``--node-idle-s``. The driver submits ``--n`` subtasks of ``--work-s`` seconds that each need a
GPU (plain Ray: ``@ray.remote(num_gpus=1)`` tasks; fastgpu: ``@fastgpu.task(num_gpus=1)`` with ``.map``,
each system with its defaults) at zero GPU nodes, and measures the time from submitting to the first
result and to the last, then from the last result (refs dropped) to every GPU node being removed. The
systems alternate run by run; medians and the fastgpu / Ray ratios are printed.
Target (issue 10): first and last result at most 1.2x plain Ray's.
"""
from __future__ import annotations

import argparse
import statistics
import time

import ray


def gpu_nodes() -> int:
    return sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU"))


def run_once(system: str, n: int, work_s: float, max_nodes: int, node_idle_s: float) -> dict:
    import fastgpu_ray as fastgpu
    from fastgpu_ray.local_autoscaling import LocalAutoscalingCluster, gpu_node_type

    c = LocalAutoscalingCluster({"gpu2": gpu_node_type(2, max_workers=max_nodes)}, idle_timeout_s=node_idle_s)
    c.start()
    try:
        ray.init(address=c.address, log_to_driver=False, logging_level="ERROR")

        def work(x):
            time.sleep(work_s)
            return x * x

        if system == "fastgpu":
            fastgpu.init(emulate=True)
            f = fastgpu.task(num_gpus=1)(work)
            t0 = time.monotonic()
            refs = f.map(range(n))
        else:
            f = ray.remote(num_gpus=1)(work)
            t0 = time.monotonic()
            refs = [f.remote(i) for i in range(n)]
        ray.wait(refs, num_returns=1, fetch_local=False)
        first = time.monotonic() - t0
        out = ray.get(refs)
        last = time.monotonic() - t0
        assert out == [i * i for i in range(n)], out
        peak = gpu_nodes()
        del refs, out
        t1 = time.monotonic()
        while gpu_nodes() and time.monotonic() - t1 < 300:
            time.sleep(0.25)
        down = time.monotonic() - t1 if not gpu_nodes() else float("nan")
        if system == "fastgpu":
            fastgpu.shutdown()
        return {"first": first, "last": last, "down": down, "peak_nodes": peak}
    finally:
        ray.shutdown()
        c.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--work-s", type=float, default=1.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--max-nodes", type=int, default=2)
    ap.add_argument("--node-idle-s", type=float, default=5.0)
    a = ap.parse_args()
    if a.n < 1 or a.reps < 1 or a.max_nodes < 1 or a.work_s < 0 or a.node_idle_s <= 0:
        ap.error("--n, --reps, --max-nodes must be >= 1; --work-s >= 0; --node-idle-s > 0")
    res: dict[str, list[dict]] = {"ray": [], "fastgpu": []}
    for rep in range(a.reps):
        for system in ("ray", "fastgpu") if rep % 2 == 0 else ("fastgpu", "ray"):
            r = run_once(system, a.n, a.work_s, a.max_nodes, a.node_idle_s)
            res[system].append(r)
            print(f"rep {rep} {system:8s} first {r['first']:6.2f}s  last {r['last']:6.2f}s  "
                  f"GPU nodes {r['peak_nodes']}  removed {r['down']:6.2f}s after the last result", flush=True)
    med = {s: {k: statistics.median(r[k] for r in rs) for k in ("first", "last", "down")} for s, rs in res.items()}
    for s in ("ray", "fastgpu"):
        print(f"median {s:8s} first {med[s]['first']:6.2f}s  last {med[s]['last']:6.2f}s  "
              f"nodes removed {med[s]['down']:6.2f}s after the last result")
    print(f"fastgpu / Ray: first result {med['fastgpu']['first'] / med['ray']['first']:.2f}x, last result "
          f"{med['fastgpu']['last'] / med['ray']['last']:.2f}x (target <= 1.2x), nodes removed "
          f"{med['fastgpu']['down'] - med['ray']['down']:+.2f}s later than Ray's")


if __name__ == "__main__":
    main()
