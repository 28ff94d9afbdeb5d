"""The worked example: five tasks with compute demand, GPU load and priority, and where each went and why.

    python examples/five_tasks.py            # local 2-node cluster, 2 emulated GPUs per node
    python examples/five_tasks.py --address auto   # an existing Ray cluster (real GPUs if it has them)

Each task is (compute demand, GPU load %, priority):
    A 10/30/1, B 20/20/2, C 15/10/3, D 25/5/4, E 30/0/5
compute demand = tenths of GPU-seconds on an idle GPU (``work_s``); GPU load = the utilisation the
task puts on its GPU while it runs (``gpu_util``; co-tenants slow down by placement.cost.slowdown);
priority: higher starts first. Each declares 4 GiB of GPU memory, so tasks can share a GPU.
The cluster is busy when they arrive (a 1.5 s job holds every GPU) and one GPU carries 60 % load from
outside fastgpu, so the queue order (priority, then age) and the load-aware choice both show.
"""
from __future__ import annotations

import argparse
import time

import ray

import fastgpu_ray as fastgpu

TASKS = {"A": (10, 30, 1), "B": (20, 20, 2), "C": (15, 10, 3), "D": (25, 5, 4), "E": (30, 0, 5)}


@fastgpu.task(gpu_memory="4GiB")
def job(name: str):
    t0 = time.time()
    fastgpu.emulate_work()
    return name, ray.get_runtime_context().get_node_id(), fastgpu.gpu_ids()[0], t0, time.time()


@fastgpu.task(num_gpus=1, work_s=1.5, priority=100)
def occupy():
    fastgpu.emulate_work()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--address", default=None, help="Ray cluster address (default: start a local one)")
    a = ap.parse_args(argv)
    local = None
    if a.address is None:
        from fastgpu_ray.local_cluster import LocalCluster
        local = LocalCluster(nodes=2, gpus_per_node=2, cpus_per_node=1).start()
        fastgpu.init(emulate=True)
    else:
        fastgpu.init(address=a.address)
    try:
        nodes = fastgpu.gpu_nodes()
        names = {n: f"node{i + 1}" for i, n in enumerate(nodes)}
        emulated = fastgpu.status().emulated
        if emulated:
            fastgpu.set_emulated_gpu(nodes[-1], 1, util=0.6, processes=1)
        n_gpus = len(fastgpu.status().gpus)
        ray.get([occupy.remote() for _ in range(n_gpus)])  # claims every GPU (starts its worker)
        busy = [occupy.remote() for _ in range(n_gpus)]
        time.sleep(0.3)  # the five arrive while every GPU is busy
        refs = {}
        for name, (compute, load, prio) in TASKS.items():
            refs[name] = job.options(work_s=compute / 10, gpu_util=load / 100, priority=prio).remote(name)
        out = {r[0]: r for r in ray.get(list(refs.values()))}
        ray.get(busy)
        label = " (EMULATED GPUs)" if emulated else ""
        print(f"\nFive tasks{label}; every GPU was busy when they arrived; "
              f"{names[nodes[-1]]} GPU 1 has 60 % outside load" if emulated else "")
        print("(tasks in priority order; 'queued' = time from arrival to placement)")
        print(f"{'task':<5}{'compute':>8}{'load':>6}{'prio':>5}  {'where':<13}{'queued':>7}{'ran':>7}  why")
        for name in sorted(out, key=lambda k: -TASKS[k][2]):
            _, node, gpu, t0, t1 = out[name]
            compute, load, prio = TASKS[name]
            rec = fastgpu.explain(refs[name])
            win = next((c for c in rec.explanation.candidates if c.node == node), None) if rec.explanation else None
            why = (f"est. finish {win.terms.get('finish_s', 0):.2f}s (wait {win.terms.get('wait_s', 0):.2f}s + "
                   f"compute {win.terms.get('compute_s', 0):.2f}s)" if win and "finish_s" in win.terms
                   else rec.explanation.reason if rec.explanation else "")
            print(f"{name:<5}{compute:>8}{load:>5}%{prio:>5}  {names.get(node, node[:8]) + ' GPU ' + str(gpu):<13}"
                  f"{rec.queued_s:>6.2f}s{t1 - t0:>6.2f}s  {why}")
        print("\nPlacement explanations (candidates and score terms, best first):")
        for name in sorted(out, key=lambda k: -TASKS[k][2]):
            text = fastgpu.explain(refs[name]).format()
            for n, short in names.items():
                text = text.replace(n, short).replace(n[:12], short)
            print(f"--- task {name} (compute {TASKS[name][0]}, load {TASKS[name][1]} %, priority {TASKS[name][2]})")
            print(text)
    finally:
        fastgpu.shutdown()
        if local is not None:
            local.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
