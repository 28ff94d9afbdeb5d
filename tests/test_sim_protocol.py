"""The replay protocol: arrival order, tuning to 1.3x, bucketed metric, failure accounting."""
import numpy as np

from placement import Demand
from placement.sim.replay import RunResult, arrival_order, replay
from placement.sim.trace import Nodes, Pods


def pods_of(*demands):
    return Pods([d.id for d in demands], list(demands))


def test_tune_up_appends_resamples_after_the_whole_shuffled_trace():
    pool = [Demand(f"p{i}", cpu_milli=1, num_gpus=1, gpu_milli=500) for i in range(10)]
    order = arrival_order(pods_of(*pool), capacity=10_000, tune=1.3, rng=np.random.default_rng(3))
    assert {d.id for d in order[:10]} == {d.id for d in pool}  # the whole trace first
    total = sum(d.total_gpu_milli for d in order)
    assert 13_000 - 500 < total <= 13_000  # stops at the first resample that would pass the target


def test_tune_up_stop_rule_uses_one_gpu_share_for_multi_gpu_pods():
    pool = [Demand("eight", cpu_milli=1, num_gpus=8, gpu_milli=1000)]
    order = arrival_order(pods_of(*pool), capacity=10_000, tune=1.3, rng=np.random.default_rng(0))
    # 8000, then 16000 is allowed because the check adds only one GPU's share (8000 + 1000 <= 13000)
    assert sum(d.total_gpu_milli for d in order) == 16_000


def test_tune_down_removes_random_pods_until_at_or_below_target():
    pool = [Demand(f"p{i}", cpu_milli=1, num_gpus=1, gpu_milli=1000) for i in range(20)]
    order = arrival_order(pods_of(*pool), capacity=10_000, tune=1.3, rng=np.random.default_rng(0))
    assert sum(d.total_gpu_milli for d in order) == 13_000
    assert len({d.id for d in order}) == 13


def test_buckets_are_event_weighted_means_with_neighbour_fallback():
    r = RunResult("x", 0, arrived=np.array([0, 1000, 1000, 3000]), allocated=np.array([0, 1000, 500, 2000]),
                  capacity=100_000)
    b = r.buckets(top=4)
    assert b[0] == 0 and b[1] == 0.75  # two events in bucket 1: 1.0 % and 0.5 %
    assert b[2] == round(np.mean([1.0, 0.5, 2.0]), 2)  # empty: the events of buckets 1..3
    assert b[3] == 2.0


def small_cluster():
    return Nodes(["a", "b"], np.array([8000, 8000]), np.array([64000, 64000]), np.array([2, 2]), ["T4", "T4"])


def test_replay_drops_what_does_not_fit_and_counts_early_failures_by_kind():
    pool = [Demand(f"w{i}", cpu_milli=1000, num_gpus=2, gpu_milli=1000) for i in range(3)]
    r = replay(small_cluster(), pods_of(*pool), "best-fit", seed=1, tune=1.5)  # 6000 = 1.5 x 4000: no tuning
    assert r.failed == 1 and r.allocated[-1] == 4000
    assert sum(r.failed_early.values()) == 0  # the third pod arrives at 150 %, not before 90 %
    four = Nodes(["a", "b", "c", "d"], np.full(4, 8000), np.full(4, 64000), np.full(4, 2), ["T4"] * 4)
    pool = [Demand("big", cpu_milli=1, num_gpus=4, gpu_milli=1000), Demand("ok", cpu_milli=1, num_gpus=2,
                                                                            gpu_milli=1000)]
    r = replay(four, pods_of(*pool), "fgd", seed=0, tune=0.75)
    assert r.failed_early == {"share": 0, "1": 0, "2": 0, "4": 1, "8": 0}


def test_replay_is_deterministic_per_seed_and_differs_across_seeds():
    pool = [Demand(f"p{i}", cpu_milli=500 * (i % 5 + 1), num_gpus=1, gpu_milli=100 * (i % 9 + 1))
            for i in range(40)]
    a = replay(small_cluster(), pods_of(*pool), "fgd", seed=5)
    b = replay(small_cluster(), pods_of(*pool), "fgd", seed=5)
    c = replay(small_cluster(), pods_of(*pool), "fgd", seed=6)
    assert (a.allocated == b.allocated).all()
    assert len(a.allocated) != len(c.allocated) or (a.allocated != c.allocated).any()
