"""Write every node's object store once before a benchmark's systems run (``warm_stores``).

The kernel allocates a page of a store's shared memory the first time any process writes it; it then
stays allocated for later objects. In a fresh cluster that cost lands inside the clock of whichever
system first uses more of a store than the systems before it. Measured in ``benchmarks/pipeline.py``
(netns, ``Shmem`` in /proc/meminfo): Ray tasks, run first, grew it by 865 MiB, then the first fastgpu
session by 320 MiB (its relayed copies) and a second one by 48 MiB, at 2.73 and 2.04 s of CPU for the same
work; with the stores written once first, Ray tasks took 0.68-1.08 s instead of 1.6-2.4 s. A cluster in
use has warm stores. Below 0.8 of a store, Ray does not spill.
"""
from __future__ import annotations

import time

import numpy as np

MiB = 2**20


def warm_stores(fraction: float = 0.7, chunk_mib: int = 32) -> int:
    """Write ``fraction`` of every live node's object store once; returns the MiB written, a second after
    the objects went out of scope (Ray frees them by then)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)
    def fill(nbytes: int) -> int:
        held = [ray.put(np.zeros(chunk_mib * MiB // 8)) for _ in range(nbytes // (chunk_mib * MiB))]
        return len(held) * chunk_mib

    nodes = [x for x in ray.nodes() if x["Alive"] and x["Resources"].get("object_store_memory", 0) > 0]
    written = sum(ray.get([fill.options(scheduling_strategy=NodeAffinitySchedulingStrategy(x["NodeID"], soft=False))
                           .remote(int(fraction * x["Resources"]["object_store_memory"])) for x in nodes]))
    time.sleep(1.0)
    return written
