"""``fastgpu demo``: a decomposed workload on a multi-node cluster, fastgpu vs plain Ray side by side.

Without GPUs (no NVML) it starts a local 3-node cluster with 2 emulated GPUs per node and puts a 75 %
outside load on one of them; with real GPUs it starts Ray on this machine and uses them (emulated work
then sleeps according to the GPUs' live NVML utilisation). The same work runs three ways, one after the
other, on the same cluster and the same load model:

* plain Ray tasks with ``num_gpus=1`` (worker reuse, ``max_calls=0``: the fast way to write them),
* plain Ray tasks with ``num_gpus=0.2`` (Ray packs five per GPU, blind to load and memory),
* fastgpu with ``gpu_memory="3GiB"`` (packs by memory, placed by live load).
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

import ray

import fastgpu_ray as fastgpu

from .local_cluster import LocalCluster, has_real_gpus

WORK_S = 0.5  # GPU-seconds per subtask on an idle GPU
UTIL = 0.1  # what one subtask keeps its GPU busy
LOADED_UTIL = 0.75


def split(data: list[int], parts: int = 48) -> list[list[int]]:
    k = max(1, len(data) // parts)
    return [data[i:i + k] for i in range(0, len(data), k)]


def combine(partials: list[int]) -> int:
    return sum(partials)


def score(chunk: list[int]) -> int:
    """One subtask: ``WORK_S`` of (emulated) GPU work, then a checkable result."""
    fastgpu.emulate_work(WORK_S, util=UTIL)
    return sum(x * x for x in chunk)


def _nothing(x):
    return x


@dataclass
class Way:
    name: str
    seconds: float
    result: int


def run_plain_ray(num_gpus: float, chunks: list[list[int]]) -> Way:
    f = ray.remote(num_gpus=num_gpus, max_calls=0)(score)
    ray.get([f.remote([]) for _ in range(int(round(6 / num_gpus)))])  # warm the worker processes
    t0 = time.perf_counter()
    res = combine(ray.get([f.remote(c) for c in chunks]))
    return Way(f"plain Ray, num_gpus={num_gpus:g} (worker reuse)", time.perf_counter() - t0, res)


def main(items: int = 4800, parts: int = 48, nodes: int = 3, gpus_per_node: int = 2) -> int:
    real = has_real_gpus()
    local = None
    if real:
        fastgpu.init()
    else:
        print(f"No NVML GPU here: starting a local Ray cluster of {nodes} nodes x {gpus_per_node} EMULATED GPUs "
              "(about 30-60 s)...", flush=True)
        # 8 logical CPUs per node so plain Ray tasks (1 CPU each by default) are limited by GPUs only
        local = LocalCluster(nodes=nodes, gpus_per_node=gpus_per_node, cpus_per_node=8).start()
        fastgpu.init(emulate=True)
    try:
        gnodes = fastgpu.gpu_nodes()
        names = {n: f"node{i + 1}" for i, n in enumerate(gnodes)}
        loaded = None
        if not real:
            loaded = (gnodes[-1], gpus_per_node - 1)
            fastgpu.set_emulated_gpu(*loaded, util=LOADED_UTIL, processes=1)
        data = list(range(items))
        chunks = split(data, parts)
        kind = "REAL GPUs (NVML)" if real else "EMULATED GPUs (no NVML on this machine)"
        print(f"\nfastgpu demo: {len(gnodes)} nodes, {len(fastgpu.status().gpus)} {kind}")
        if loaded:
            print(f"outside load: {names[loaded[0]]} GPU {loaded[1]} is {LOADED_UTIL:.0%} busy with a process "
                  "outside Ray")
        print(f"workload: sum of squares of {items} numbers, split into {len(chunks)} subtasks of {WORK_S} GPU-s "
              f"each (each keeps its GPU {UTIL:.0%} busy), combined into one number\n")

        ways = []
        for g in (1, 0.2):
            print(f"running plain Ray with num_gpus={g:g} ...", flush=True)
            ways.append(run_plain_ray(g, chunks))

        # No work_s: fastgpu learns the run time from the first subtasks that finish (explain shows it).
        task = fastgpu.task(gpu_memory="3GiB", gpu_util=UTIL, split=lambda d: split(d, parts),
                            combine=combine)(score)
        claim = fastgpu.task(gpu_memory="3GiB")(_nothing)  # another function: it teaches nothing about score
        ray.get(claim.map([0] * len(fastgpu.status().gpus)))  # claim the GPUs (starts their workers)
        print("running fastgpu (gpu_memory=\"3GiB\", placed by live load, run time learned) ...", flush=True)
        t0 = time.perf_counter()
        refs = task.map(chunks)
        res = combine(fastgpu.get(refs, progress=True))
        ways.append(Way("fastgpu, gpu_memory=\"3GiB\"", time.perf_counter() - t0, res))
        recs = [fastgpu.explain(r) for r in refs]
        _report(ways, recs, names, loaded, sum(x * x for x in data))
    finally:
        fastgpu.shutdown()
        if local is not None:
            local.stop()
    return 0


def _report(ways, recs, names, loaded, expected) -> None:
    per_gpu = Counter((r.node, r.gpus[0]) for r in recs if r.node)
    st = {(g.node, g.gpu): g for g in fastgpu.status().gpus} if fastgpu.is_initialized() else {}
    print("\nwhere fastgpu ran the subtasks:")
    print(f"  {'node':<8}{'gpu':>4}{'subtasks':>10}{'outside load':>14}")
    for key in sorted(st, key=lambda k: (names.get(k[0], k[0]), k[1])):
        g = st[key]
        ext = f"{LOADED_UTIL:.0%}" if key == loaded else "0%" if g.emulated else f"{(g.util or 0):.0%}"
        note = "  <- loaded: avoided" if key == loaded and per_gpu[key] <= 1 else ""
        print(f"  {names.get(key[0], key[0][:8]):<8}{key[1]:>4}{per_gpu[key]:>10}{ext:>14}{note}")
    def spread(r):  # the subtask whose candidates differ most in estimated finish shows the reasoning best
        f = [c.terms.get("finish_s", 0.0) for c in (r.explanation.candidates if r.explanation else ())]
        return max(f) - min(f) if f else -1.0
    rec = max(recs, key=spread)
    text = rec.format()
    for n, short in names.items():
        text = text.replace(n, short).replace(n[:12], short)
    print("\nwhy (one subtask; candidates best first, with their score terms):\n" + text)
    fg = ways[-1].seconds
    print("\nside by side (same cluster, same work, same load model):")
    print(f"  {'way':<44}{'makespan':>10}{'fastgpu speed-up':>18}")
    for w in ways:
        print(f"  {w.name:<44}{w.seconds:>9.2f}s{w.seconds / fg:>17.2f}x")
    same = all(w.result == expected for w in ways)
    print(f"  results identical and correct: {'yes' if same else 'NO'}")
    if any(r.emulated for r in recs):
        print("  (EMULATED GPUs: work is a sleep scaled by placement.cost.slowdown of the GPU's load)")
