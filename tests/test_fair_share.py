"""The fair-share rule between jobs (fastgpu_ray.core.fair_share): Ray-free."""
import pytest

from fastgpu_ray.core.fair_share import JobNode, fair_shares, node_caps, whole_gpus

NODES = {"n1": 2, "n2": 2, "n3": 2}


def rows(job, held, want):
    return [JobNode(job, n, h, w) for n, h, w in zip(sorted(NODES), held, want)]


def totals(caps):
    out = {}
    for (j, _), c in caps.items():
        out[j] = out.get(j, 0) + c
    return out


def test_water_filling_is_weighted_and_work_conserving():
    assert fair_shares({"a": 1, "b": 1}, {"a": 10, "b": 10}, 6) == pytest.approx({"a": 3, "b": 3})
    assert fair_shares({"a": 2, "b": 1}, {"a": 10, "b": 10}, 6) == pytest.approx({"a": 4, "b": 2})
    # a job wanting less than its share leaves the rest to the others
    assert fair_shares({"a": 1, "b": 1, "c": 1}, {"a": 10, "b": 1, "c": 0}, 6) == pytest.approx(
        {"a": 5, "b": 1, "c": 0})


def test_rounding_keeps_the_total_and_favours_the_holder():
    assert whole_gpus({"a": 2.5, "b": 2.5}, 5, {"a": 0, "b": 3}, {"a": 0, "b": 1}) == {"a": 2, "b": 3}
    assert sum(whole_gpus({"a": 2, "b": 2, "c": 2}, 6, {}, {}).values()) == 6


def test_a_late_job_gets_its_share_from_the_holder_on_every_node():
    caps = node_caps(rows("a", [2, 2, 2], [2, 2, 2]) + rows("b", [0, 0, 0], [2, 2, 2]), NODES, {"a": 1, "b": 1},
                     {"a": 0, "b": 1})
    assert totals(caps) == {"a": 3, "b": 3}
    for n in NODES:  # never more than the node has
        assert caps[("a", n)] + caps[("b", n)] <= NODES[n]


def test_weights_two_to_one():
    caps = node_caps(rows("a", [2, 2, 2], [2, 2, 2]) + rows("b", [0, 0, 0], [2, 2, 2]), NODES, {"a": 2, "b": 1})
    assert totals(caps) == {"a": 4, "b": 2}
    caps = node_caps(rows("a", [0, 0, 0], [2, 2, 2]) + rows("b", [2, 2, 2], [2, 2, 2]), NODES, {"a": 2, "b": 1})
    assert totals(caps) == {"a": 4, "b": 2}


def test_idle_holder_gives_way_and_keeps_gpus_nobody_wants():
    # a holds everything but has no work; b wants one node's GPUs: b gets them, a keeps the rest (warm)
    caps = node_caps(rows("a", [2, 2, 2], [0, 0, 0]) + rows("b", [0, 0, 0], [2, 0, 0]), NODES, {"a": 1, "b": 1})
    assert caps[("b", "n1")] == 2 and caps[("a", "n1")] == 0
    assert caps[("a", "n2")] == 2 and caps[("a", "n3")] == 2


def test_work_conserving_when_the_other_job_wants_only_one_node():
    # a is above its share but b's work sits on n1 only: b gets n1, a keeps n2 and n3 (nobody else wants them)
    caps = node_caps(rows("a", [2, 2, 2], [2, 2, 2]) + rows("b", [0, 0, 0], [2, 0, 0]), NODES, {"a": 1, "b": 1})
    assert caps[("b", "n1")] == 2
    assert totals(caps) == {"a": 4, "b": 2}


def test_hand_overs_only_down_to_the_share():
    # a already at its share: b (at its share too) gets nothing more from a, even if it wants more
    caps = node_caps(rows("a", [1, 1, 1], [2, 2, 2]) + rows("b", [1, 1, 1], [2, 2, 2]), NODES, {"a": 1, "b": 1})
    assert all(c == 1 for c in caps.values())


def test_three_jobs_equal_split():
    r = rows("a", [2, 2, 2], [2, 2, 2]) + rows("b", [0, 0, 0], [2, 2, 2]) + rows("c", [0, 0, 0], [1, 1, 0])
    caps = node_caps(r, NODES, {"a": 1, "b": 1, "c": 1}, {"a": 0, "b": 1, "c": 2})
    assert totals(caps) == {"a": 2, "b": 2, "c": 2}


def test_a_job_whose_work_is_on_one_node_gets_it_by_moving_another_job_elsewhere():
    nodes = {"n1": 1, "n2": 1}
    r = [JobNode("a", "n1", 1, 1), JobNode("a", "n2", 0, 1), JobNode("c", "n1", 0, 1), JobNode("c", "n2", 0, 0)]
    caps = node_caps(r, nodes, {"a": 1, "c": 1})
    assert caps == {("a", "n1"): 0, ("a", "n2"): 1, ("c", "n1"): 1, ("c", "n2"): 0}


def test_nothing_wanted_nothing_moves():
    r = rows("a", [2, 1, 0], [0, 0, 0]) + rows("b", [0, 1, 2], [0, 0, 0])
    caps = node_caps(r, NODES, {"a": 1, "b": 1})
    assert caps == {(x.job, x.node): x.held for x in r}


def test_a_job_keeps_its_gpus_where_its_backlog_is_longest():
    # a must come down from 6 to 3 GPUs: it keeps them where most of its work waits
    r = [JobNode("a", "n1", 2, 2, 30), JobNode("a", "n2", 2, 2, 2), JobNode("a", "n3", 2, 2, 10)]
    r += [JobNode("b", n, 0, 2, 5) for n in NODES]
    caps = node_caps(r, NODES, {"a": 1, "b": 1}, {"a": 0, "b": 1})
    assert totals(caps) == {"a": 3, "b": 3}
    assert caps[("a", "n1")] == 2 and caps[("a", "n2")] == 0


def test_free_gpus_nobody_wants_go_to_the_job_with_work_on_that_node():
    # one subtask queued on n1: the job may claim both GPUs of n1 at once (one claim, one start-up), not
    # one now and one at the next subtask; n2 stays with nobody (no work there)
    caps = node_caps([JobNode("a", "n1", 0, 1, 1), JobNode("a", "n2", 0, 0, 0)], {"n1": 2, "n2": 2}, {"a": 1})
    assert caps == {("a", "n1"): 2, ("a", "n2"): 0}
    # with another job waiting on n1 too, each gets what it wants first
    caps = node_caps([JobNode("a", "n1", 0, 1, 1), JobNode("b", "n1", 0, 1, 5)], {"n1": 2}, {"a": 1, "b": 1})
    assert caps == {("a", "n1"): 1, ("b", "n1"): 1}
