"""The packing behaviour of the ``fastgpu`` policy on hand-built nodes, against ``fgd`` on the same state.

Each scenario is built so that FGD's integer score ties (FGD then takes the node of lowest rank, put on
the wrong node on purpose) and asserts the property that makes ``fastgpu`` win on the openb traces.
"""
from __future__ import annotations

import numpy as np
import pytest

from placement import registry
from placement.frag import typical_workload
from placement.model import Demand
from placement.packing import (cpu_per_gpu_milli, model_pressure, packing_workload, stranding, stranding_growth,
                               tie_key)
from placement.scheduler import Scheduler
from placement.state import ClusterState


def cluster(cpu, gpus, rank=None):
    n = len(cpu)
    return ClusterState([f"n{i}" for i in range(n)], np.array(cpu), np.full(n, 1 << 20), np.array(gpus),
                        ["G"] * n, rank=None if rank is None else np.array(rank))


def gpu_task(i, cpu, ng=1, milli=1000):
    return Demand(f"t{i}", cpu_milli=cpu, num_gpus=ng, gpu_milli=milli)


def place(policy, state, d, workload):
    pol = registry.create(policy)
    pol.prepare(state, workload)
    return Scheduler(state, pol).place(d)


WORKLOAD = [gpu_task(i, 10_000) for i in range(50)]  # 10 CPU per GPU: c = 10 milli-CPU per milli-GPU


def test_cpu_heavy_work_goes_where_cpu_is_spare():
    # Both nodes still fit every typical demand afterwards (FGD ties); on n1 the GPUs left would lack CPU.
    d = gpu_task("heavy", 20_000)
    pick = {p: place(p, cluster([200_000, 80_000], [8, 8], rank=[1, 0]), d, WORKLOAD).node for p in ("fgd", "fastgpu")}
    assert pick == {"fgd": 1, "fastgpu": 0}


def test_cpu_light_work_is_not_pulled_onto_cpu_poor_nodes():
    # n1 has CPU for only 4 of its 8 GPUs at the typical ratio; a CPU-light task makes nothing worse on
    # either node, so only the rank decides (the tie-break counts growth of stranding, not its repair).
    d = gpu_task("light", 2_000)
    for rank in ([0, 1], [1, 0]):
        st = cluster([200_000, 40_000], [8, 8], rank=rank)
        assert place("fastgpu", st, d, WORKLOAD).node == int(np.argmin(rank))


def test_unrestricted_work_leaves_the_model_restricted_demands_need():
    # Same nodes but for the model; one demand in 51 may only use model "A": too few to move FGD's
    # integer score (FGD ties and takes the lower rank, n0), enough to make "A" the scarcer model.
    st = ClusterState(["a", "b"], np.array([96_000, 96_000]), np.full(2, 1 << 20), np.array([8, 8]), ["A", "B"],
                      rank=np.array([0, 1]))
    workload = WORKLOAD + [Demand(f"r{i}", cpu_milli=10_000, num_gpus=1, gpu_milli=1000, gpu_types=("A",))
                           for i in range(1)]
    d = gpu_task("any", 10_000)
    assert place("fgd", st, d, workload).node == 0
    st = ClusterState(["a", "b"], np.array([96_000, 96_000]), np.full(2, 1 << 20), np.array([8, 8]), ["A", "B"],
                      rank=np.array([0, 1]))
    assert place("fastgpu", st, d, workload).node == 1
    assert model_pressure(st, workload).tolist() == [pytest.approx(1_000 / 8_000), 0.0]


def test_share_fills_the_hole_rather_than_a_fresh_gpu():
    st = cluster([64_000], [2])
    st.bind(0, (1,), gpu_task("old", 1_000, milli=600))  # GPU 1 has a 400-milli hole, GPU 0 is fresh
    workload = [gpu_task(i, 1_000, milli=100) for i in range(20)]  # a 100 or a 700 hole: both usable
    d = gpu_task("share", 1_000, milli=300)
    assert place("fgd", st, d, workload).gpus == (0,)
    assert place("fastgpu", st, d, workload).gpus == (1,)


def test_rare_whole_node_demand_keeps_its_only_node_idle():
    # Only n0 can ever hold 8 GPUs with 120 CPU; that shape is 2 % of demands, below FGD's 95 % cut.
    workload = [gpu_task(i, 12_000) for i in range(100)] + [gpu_task(f"big{i}", 120_000, ng=8) for i in range(2)]
    st = cluster([128_000, 96_000], [8, 8], rank=[0, 1])
    d = gpu_task("small", 12_000)
    assert place("fgd", cluster([128_000, 96_000], [8, 8], rank=[0, 1]), d, workload).node == 0
    pol = registry.create("fastgpu")
    pol.prepare(st, workload)
    s = pol.score(st, d, np.array([0, 1]))
    assert np.floor(s[1]) > np.floor(s[0])  # the FGD-level score itself, not the tie-break, keeps n0 idle
    assert Scheduler(st, pol).place(d).node == 1
    assert st.feasible(workload[-1])[0]


def test_tie_break_never_overrides_the_fgd_score():
    rng = np.random.default_rng(7)
    workload = [gpu_task(i, int(rng.choice([2_000, 6_000, 12_000])), milli=int(rng.choice([250, 500, 1000])))
                for i in range(60)]
    st = cluster(rng.choice([16_000, 64_000, 96_000], 12), rng.choice([2, 4, 8], 12))
    fgd, fast = registry.create("fgd"), registry.create("fastgpu")
    fgd.prepare(st, workload)
    fast.prepare(st, workload)
    sched = Scheduler(st, fast)
    for k in range(40):
        d = workload[int(rng.integers(len(workload)))]
        nodes = np.flatnonzero(st.feasible(d))
        if len(nodes) < 2:
            break
        np.testing.assert_array_equal(np.floor(fast.score(st, d, nodes)), fgd.score(st, d, nodes))
        sched.place(Demand(f"x{k}", d.cpu_milli, 0, d.num_gpus, d.gpu_milli))


def test_packing_workload_adds_every_multi_gpu_shape():
    workload = [gpu_task(i, 12_000) for i in range(97)] + [gpu_task("b", 120_000, ng=8),
                                                         gpu_task("c", 30_000, ng=2), gpu_task("e", 30_000, ng=2)]
    base, tw = typical_workload(workload), packing_workload(workload)
    assert not ((base.ng > 1).any())
    assert {(int(c), int(n)) for c, n in zip(tw.cpu, tw.ng) if n > 1} == {(120_000, 8), (30_000, 2)}
    assert tw.freq.sum() == pytest.approx(1.0)
    assert tw.freq[tw.ng == 8][0] == pytest.approx(0.01)
    single = [gpu_task(i, 12_000) for i in range(10)]
    assert len(packing_workload(single)) == len(typical_workload(single))
    assert len(packing_workload([])) == 0


def test_stranding_measure():
    assert stranding(np.array([8000, 8000, 0]), np.array([40_000, 200_000, 0]), 10.0).tolist() == [4000, 0, 0]
    assert stranding(np.array([1000]), np.array([0]), 0.0).tolist() == [0]
    st = cluster([40_000], [8])
    assert stranding_growth(st, gpu_task("x", 2_000), np.array([0]), 10.0)[0] == pytest.approx(-800)
    assert cpu_per_gpu_milli(WORKLOAD, st.cpu_cap, st.gpu_count) == pytest.approx(10.0)
    # No GPU demand asks for CPU: fall back to the cluster's own CPU per GPU milli.
    assert cpu_per_gpu_milli([], st.cpu_cap, st.gpu_count) == pytest.approx(5.0)


def test_spare_cpu_is_taken_from_a_node_that_cannot_host_multi_gpu_work():
    # A CPU-only pod strands nothing on either node (both have spare CPU) and FGD ties; n0 is the only node
    # still able to host the 8-GPU, 100-CPU shape, and the pod would take exactly the CPU that shape needs.
    workload = WORKLOAD + [gpu_task(f"big{i}", 100_000, ng=8) for i in range(2)]
    pod = Demand("pod", cpu_milli=30_000)
    st = cluster([128_000, 128_000], [8, 8], rank=[0, 1])
    st.bind(1, (0,), gpu_task("old", 10_000))  # n1 can no longer host 8 whole GPUs
    pol = registry.create("fastgpu")
    pol.prepare(st, workload)
    loss = pol.terms(st, pod, np.array([0, 1]))["capability_loss"]
    assert loss[0] > 0 and loss[1] == 0
    assert Scheduler(st, pol).place(pod).node == 1


def test_tie_key_is_lexicographic_and_keeps_exact_ties():
    key = tie_key(np.array([0.0, 0.0, 5.0, 0.0, -3.0]), np.array([0.0, 0.5, 0.0, 0.5, 9.0]),
                  np.array([1.0, 0.0, 0.0, 0.0, 0.0]))
    # Growth below zero counts as none; then pressure; then loss.
    assert key[0] > key[1] == key[3] > key[4] > key[2]
    assert tie_key(np.zeros(2), np.zeros(2), np.array([0.5, 0.0])).tolist() == [-1.0, 0.0]
