"""Small builders for placement tests (no Ray)."""
from __future__ import annotations

import numpy as np

from placement import ClusterState, Demand, GpuSpec, NodeSpec, Snapshot


def node(name, gpus=2, model="T4", cpu=32000, mem=128000, gpu_mem=0, used=(), util=(), **kw) -> NodeSpec:
    """A node with ``gpus`` GPUs; ``used`` gives milli in use per GPU, ``util`` live load per GPU."""
    specs = []
    for i in range(gpus):
        specs.append(GpuSpec(model, memory_mib=gpu_mem, milli_used=used[i] if i < len(used) else 0,
                             util=util[i] if i < len(util) else None))
    return NodeSpec(name, cpu, mem, tuple(specs), **kw)


def state(*nodes: NodeSpec) -> ClusterState:
    return ClusterState.from_snapshot(Snapshot(tuple(nodes)))


def free_state(free_rows, model="G2", cpu=96000) -> ClusterState:
    """A state whose node i has per-GPU free milli ``free_rows[i]``."""
    width = max(len(r) for r in free_rows)
    st = ClusterState([f"n{i}" for i in range(len(free_rows))], np.full(len(free_rows), cpu),
                      np.full(len(free_rows), 10**6), np.array([len(r) for r in free_rows]),
                      [model] * len(free_rows))
    for i, r in enumerate(free_rows):
        st.free[i, : len(r)] = r
        st.free[i, len(r):width] = -1
    st._refresh(np.arange(st.n))
    return st


def share(milli, cpu=1000, id="d") -> Demand:
    return Demand(id, cpu_milli=cpu, num_gpus=1, gpu_milli=milli)


def whole(n, cpu=1000, id="d") -> Demand:
    return Demand(id, cpu_milli=cpu, num_gpus=n, gpu_milli=1000)
