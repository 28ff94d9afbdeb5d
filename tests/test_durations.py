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
