"""The duration model (placement.durations): learned beats declared beats unknown, observations are
normalised by the GPU's load, outliers move the estimate by a bounded factor, keys stay apart."""
from __future__ import annotations

import math

import numpy as np
import pytest

from placement.durations import UNKNOWN_WORK_S, DurationModel, duration_key


def test_unknown_then_declared_then_learned():
    m = DurationModel()
    assert m.estimate("f").source == "unknown" and m.estimate("f").seconds == UNKNOWN_WORK_S
    assert m.estimate("f", declared=2.0).source == "declared" and m.estimate("f", 2.0).seconds == 2.0
    m.observe("f", 0.3)
    e = m.estimate("f", declared=2.0)
    assert e.source == "learned" and e.runs == 1 and e.seconds == pytest.approx(0.3)
    assert "learned from 1 run" in e.describe()


def test_a_run_on_a_loaded_gpu_teaches_the_idle_duration():
    m = DurationModel()
    m.observe("f", 5.0, slowdown=5.0)  # 1 s of work on a GPU 80 % busy from outside
    m.observe("f", 1.0, slowdown=1.0)
    assert m.estimate("f").seconds == pytest.approx(1.0)


def test_a_minority_of_odd_runs_does_not_move_it_and_a_spread_gives_the_mean():
    m = DurationModel()
    for _ in range(20):
        m.observe("f", 0.2)
    for _ in range(4):
        m.observe("f", 1000.0)  # runs stuck for minutes
    assert m.estimate("f").seconds == pytest.approx(0.2)
    rng = np.random.default_rng(0)
    ln = DurationModel()
    xs = rng.lognormal(np.log(0.2), 1.0, 32)
    for x in xs:
        ln.observe("g", float(x))
    assert ln.estimate("g").seconds == pytest.approx(0.2 * np.exp(0.5), rel=0.35)  # the lognormal's mean
    for _ in range(32):  # the function changed: the window forgets the old runs
        ln.observe("g", 3.0)
    assert ln.estimate("g").seconds == pytest.approx(3.0)


def test_keys_do_not_touch_each_other_and_broken_measurements_teach_nothing():
    m = DurationModel()
    m.observe("good", 0.1)
    for bad in (float("nan"), float("inf"), -1.0):
        m.observe("bad", bad)
    m.observe("bad", 1.0, slowdown=0.0)
    assert m.estimate("bad").source == "unknown" and m.estimate("good").seconds == pytest.approx(0.1)
    assert duration_key("f", 1, 1000) != duration_key("f", 2, 1000) != duration_key("f", 2, 1000, 20.0)


def test_adopt_takes_estimates_learned_from_more_runs():
    here, there = DurationModel(), DurationModel()
    here.observe("f", 1.0)
    for _ in range(5):
        there.observe("f", 2.0)
    there.observe("g", 0.5)
    here.adopt(there.summary())
    assert here.estimate("f").seconds == pytest.approx(2.0) and here.estimate("f").runs == 5
    assert here.estimate("g").seconds == pytest.approx(0.5)
    mine = DurationModel()
    for _ in range(9):
        mine.observe("f", 3.0)
    mine.adopt(there.summary())  # fewer runs there: its own stays
    assert mine.estimate("f").seconds == pytest.approx(3.0)
    assert math.isfinite(mine.estimate("f").seconds)


def test_spread_gives_a_tail_that_a_slower_gpu_stretches_and_that_travels():
    from placement.cost import CostModel

    m = DurationModel()
    for x in np.random.default_rng(1).lognormal(np.log(0.2), 1.0, 32):
        m.observe("g", float(x))
    m.observe("fixed", 0.3)
    e = m.estimate("g")
    assert e.tail_s > 0.2 and m.estimate("fixed").tail_s == 0.0
    cost = CostModel()
    assert cost.compute_s(e.seconds, 0.0, e.tail_s) == pytest.approx(e.seconds)  # idle GPU: no tail term
    assert cost.compute_s(e.seconds, 0.8, e.tail_s) == pytest.approx(5 * e.seconds + 4 * e.tail_s)
    other = DurationModel()
    other.adopt(m.summary())
    assert other.estimate("g").tail_s == pytest.approx(e.tail_s)


def test_run_time_that_grows_with_input_bytes_is_scaled_to_each_subtask():
    rng = np.random.default_rng(1)
    m = DurationModel()
    for _ in range(24):  # 0.1 s per MiB, from 0.25 to 16 MiB, +-10 % noise, half of it on a loaded GPU
        mib = float(2 ** rng.uniform(-2, 4))
        load = float(rng.choice([1.0, 5.0]))
        m.observe("f", 0.1 * mib * load * rng.uniform(0.9, 1.1), slowdown=load, nbytes=int(mib * 2**20))
    small, big = m.estimate("f", nbytes=2**20), m.estimate("f", nbytes=8 * 2**20)
    assert small.seconds == pytest.approx(0.1, rel=0.15) and big.seconds == pytest.approx(0.8, rel=0.15)
    assert big.exponent == pytest.approx(1.0, abs=0.15) and big.nbytes == 8 * 2**20
    assert "for 8 MiB of input, run time ~ bytes^" in big.describe() and "learned from 24 runs" in big.describe()
    unsized = m.estimate("f")  # a subtask whose bytes are not known: the key's estimate
    assert unsized.nbytes == 0 and 0.1 < unsized.seconds < 1.6
    # Beyond the sizes seen it extrapolates at most SIZE_EXTRAPOLATE times: 1 GiB is priced as ~64 MiB.
    assert m.estimate("f", nbytes=2**30).seconds == pytest.approx(0.1 * 16 * 4, rel=0.3)


def test_sizes_that_do_not_predict_the_run_time_change_nothing():
    rng = np.random.default_rng(2)
    m, same = DurationModel(), DurationModel()
    for _ in range(32):  # run times lognormal, unrelated to the input's size
        run = float(rng.lognormal(np.log(0.2), 1.0))
        m.observe("f", run, nbytes=int(2 ** rng.uniform(10, 24)))
        same.observe("f", run, nbytes=2**20)  # every input the same size: nothing to fit
    assert m.size_line("f") is None and same.size_line("f") is None
    for model in (m, same):
        assert model.estimate("f", nbytes=2**24).seconds == model.estimate("f").seconds
        assert model.estimate("f", nbytes=2**24).nbytes == 0
    few = DurationModel()  # too few runs with sizes: not fitted yet
    for mib in (1, 2, 4):
        few.observe("f", 0.1 * mib, nbytes=mib * 2**20)
    assert few.size_line("f") is None
