"""A reduced reproduction of the FGD paper's table (the full one is benchmarks/openb_paper.py).

Default trace, seeds 42-43, best-fit and fgd, against the paper's means over seeds 42-51 at arrived 100
and 130 %. Two seeds carry ~0.2 points of seed noise, so the tolerance is 0.4: a wrong implementation
misses by more (FGD scored without its truncated sigmoid loses ~1 point; best-fit without CPU ~0.5).
"""
import numpy as np
import pytest

from placement.sim import report
from placement.sim.run import run_many
from placement.sim.trace import trace_paths

TOL = 0.4


@pytest.fixture(scope="module")
def results():
    runs = run_many(*trace_paths("default"), ["best-fit", "fgd"], [42, 43], progress=False)
    return report.summarise(runs), report.load_paper(report.PAPER_CSV, "default")


@pytest.mark.parametrize("policy", ["best-fit", "fgd"])
@pytest.mark.parametrize("col", [100, 130])
def test_within_tolerance_of_the_paper(results, policy, col):
    summ, paper = results
    ours, theirs = summ[policy].mean(col), float(np.mean(paper[policy][:, col]))
    assert abs(ours - theirs) <= TOL, f"{policy} @{col}: ours {ours:.2f}, paper {theirs:.2f}"


def test_everything_fits_until_90_and_fgd_leads_best_fit(results):
    summ, _ = results
    for s in summ.values():
        assert s.mean(90) > 89.5
        assert sum(map(sum, s.failed_early.values())) == 0
    assert summ["fgd"].mean(130) - summ["best-fit"].mean(130) > 1.5
