"""Each published policy's score on hand-built nodes, against PROTOCOL test vectors where they exist."""
from types import SimpleNamespace

import numpy as np
import pytest

from placement import ClusterState, Demand, Scheduler, create
from placement.frag import TargetWorkload, fragmentation, typical_workload
from placement.policies.fgd import FgdPolicy, sigmoid_score
from placement.sim.trace import load_trace, trace_paths
from tests.helpers_placement import free_state, share, whole

ALL = np.array


def scores(policy, st, d, nodes=None):
    pol = create(policy) if isinstance(policy, str) else policy
    nodes = np.arange(st.n) if nodes is None else np.asarray(nodes)
    return list(pol.score(st, d, nodes))


# ---- gpu-packing (FGD simulator's gpu_packing_score_test.go vectors) --------------------------------
@pytest.mark.parametrize("free,d,expected", [
    ([200, 1000, 1000, 500], whole(2), 48),  # case 2: two fully free GPUs used
    ([1000] * 4, whole(2), 29),  # case 3: idle 4-GPU node
    ([1000] * 8, whole(2), 25),  # case 3: idle 8-GPU node
    # case 1: 2 x 200 milli (a shape the openb traces never have, so a plain object stands in for Demand)
    ([200, 1000, 1000, 500], SimpleNamespace(num_gpus=2, gpu_share=200), 93),
])
def test_gpu_packing_vectors(free, d, expected):
    assert scores("gpu-packing", free_state([free]), d) == [expected]


def test_gpu_packing_prefers_partly_used_gpus_then_partly_used_nodes():
    st = free_state([[1000] * 8, [1000, 1000, 1000, 300], [1000] * 4])
    s = scores("gpu-packing", st, share(200))
    assert s[1] > s[0] and s[1] > s[2]  # the node with a partly used GPU wins
    assert scores("gpu-packing", st, Demand("c", cpu_milli=100)) == [0, 0, 0]


# ---- gpu-clustering ----------------------------------------------------------------------------------
def test_gpu_clustering_cases():
    st = free_state([[1000] * 8, [1000] * 8, [1000] * 8, [1000] * 8])
    st.bind(1, (0,), share(300))  # only shares
    st.bind(2, (0,), share(300))
    st.bind(2, (1,), whole(1))  # shares and whole GPUs
    st.bind(3, (0,), whole(1))  # only whole GPUs
    base = [(25 * (8000 - f)) // 8000 for f in st.F]
    assert scores("gpu-clustering", st, share(100)) == [base[0] + 25, base[1] + 75, base[2] + 50, base[3]]


# ---- best-fit and dot-product ------------------------------------------------------------------------
def test_best_fit_prefers_least_leftover():
    st = free_state([[1000] * 8, [1000, 1000, 300, 300]])
    s = scores("best-fit", st, share(200, cpu=1000))
    assert s[1] > s[0]
    s_exact = ((1 - (((96000 - 1000) / 128000) * 0.5 + ((2600 - 200) / 8000) * 0.5)) * 100)
    assert s[1] == int(s_exact)


def test_dot_product_formula():
    st = free_state([[1000] * 2], cpu=64000)
    d = share(500, cpu=16000)
    dot = (64000 / 128000) * (16000 / 128000) + (2000 / 8000) * (500 / 8000)
    assert scores("dot-product", st, d) == [int(100 * (1 - dot / 2))]


# ---- FGD ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def default_workload():
    _, pods = load_trace(*trace_paths("default"))
    return pods.demands


def test_typical_workload_of_default_trace(default_workload):
    tw = typical_workload(default_workload)
    assert len(tw) == 35  # PROTOCOL 7.1: 91 keys, 35 kept, 95.26 % coverage
    assert abs(tw.freq.sum() - 1) < 1e-9
    assert (tw.cpu[0], tw.gm[0], tw.ng[0]) == (3152, 810, 1)
    assert [round(f * 100, 2) for f in tw.freq[:2]] == [13.48, 11.25]


def test_frag_single_target_q4_vector():
    tw = TargetWorkload(ALL([6000]), ALL([465]), ALL([1]), ALL([0.0933]), ((),))
    got = fragmentation(tw, tw.type_ok(["1080"]), ALL([1000]), ALL([[200, 1000, 1000, 500]]), ALL([0]))
    assert round(float(got[0]), 2) == 251.91


def test_frag_counts_only_too_small_gpus_when_target_fits():
    tw = TargetWorkload(ALL([1000]), ALL([600]), ALL([1]), ALL([1.0]), ((),))
    got = fragmentation(tw, tw.type_ok(["x"]), ALL([4000]), ALL([[200, 1000, 500, 700]]), ALL([0]))
    assert got[0] == 700  # 200 + 500 are too small for a 600-milli target; 1000 and 700 are usable


@pytest.mark.parametrize("model,gpus,cpu,frag", [("G2", 8, 96000, 1087.82), ("T4", 2, 104000, 271.95)])
def test_fgd_sanity_values(default_workload, model, gpus, cpu, frag):
    """PROTOCOL 7.5: empty nodes under the default trace's typical workload."""
    st = ClusterState(["a"], ALL([cpu]), ALL([10**6]), ALL([gpus]), [model])
    pol = FgdPolicy()
    pol.prepare(st, default_workload)
    assert round(float(pol._scorer_for(st).frag_now(ALL([0]))[0]), 2) == frag
    assert scores(pol, st, share(810, cpu=3152)) == [48]
    assert pol.select_gpus(st, 0, share(810, cpu=3152)) == (0,)
    assert scores(pol, st, whole(1, cpu=11300)) == [53]
    assert scores(pol, st, Demand("c", cpu_milli=12500)) == [50]


def test_fgd_score_truncates_the_sigmoid():
    assert list(sigmoid_score(ALL([0.0, 39.0, 41.0, -8000.0]))) == [50, 50, 51, 0]


def test_fgd_cache_tracks_node_changes(default_workload):
    st = free_state([[1000] * 8, [1000] * 8])
    pol = FgdPolicy()
    pol.prepare(st, default_workload)
    d = share(810, cpu=3152)
    first = scores(pol, st, d)
    st.bind(0, (0,), share(810, cpu=3152))
    cached = scores(pol, st, d)
    fresh = FgdPolicy()
    fresh.prepare(st, default_workload)
    assert cached == scores(fresh, st, d)  # recomputed for the changed node, not served stale
    assert cached[1] == first[1]


# ---- random ------------------------------------------------------------------------------------------
def test_random_spreads_over_feasible_nodes_and_gpus():
    st = free_state([[1000] * 2] * 4)
    pol = create("random", rng=np.random.default_rng(1))
    sched = Scheduler(st, pol)
    nodes, gpus = [], []
    for i in range(40):
        dec = sched.place(share(10, cpu=1, id=str(i)), bind=False)
        nodes.append(dec.node)
        gpus.append(dec.gpus[0])
    assert set(nodes) == {0, 1, 2, 3} and set(gpus) == {0, 1}


def test_ties_go_to_the_lowest_rank():
    st = free_state([[1000] * 8] * 3)
    st.rank = ALL([2, 0, 1])
    dec = Scheduler(st, create("gpu-packing")).place(share(100))
    assert dec.node == 1


def test_best_gpu_selection_takes_the_tightest_fitting_share():
    st = free_state([[1000, 300, 500, 250]])
    dec = Scheduler(st, create("best-fit")).place(share(260))
    assert dec.gpus == (1,)  # 300 is the smallest free value that holds 260
