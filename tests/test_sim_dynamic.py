"""The dynamic trace replay (`fastgpu simulate --dynamic`): the workload transform, the queue disciplines
it runs (the runtime's `placement.queue`), its figures, and its errors for bad input."""
import dataclasses
import json
import math

import numpy as np
import pytest

from fastgpu_ray.cli import main
from placement.model import Demand
from placement.queue import Scan, ShapeQueue, best_first
from placement.sim import dynamic
from placement.sim.dynamic_report import stats, worst_qos
from placement.sim.trace import Nodes, TraceError
from placement.sim.workload import TimedPods, Workload, build, load_timed_pods
from placement.state import ClusterState

HEADER = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time"


def nodes(n: int = 1, gpus: int = 2) -> Nodes:
    return Nodes([f"n{i}" for i in range(n)], np.full(n, 64000), np.full(n, 262144), np.full(n, gpus), ["T4"] * n)


def timed(pods: list[tuple[Demand, str, float, float]], cut=None) -> TimedPods:
    """(demand, qos, created, run_s) per pod; run_s nan = never ran."""
    run = np.array([p[3] for p in pods], dtype=float)
    return TimedPods(None, [p[0] for p in pods], np.array([p[2] for p in pods], dtype=float), run,
                     np.zeros(len(pods), bool) if cut is None else np.array(cut), [p[1] for p in pods])


def workload(tp: TimedPods, horizon: float = 1000.0) -> Workload:
    """The pods as given: arriving at their creation time, running their run time (no transform)."""
    order = np.argsort(tp.created, kind="stable")
    return Workload(tp, order, tp.created[order], tp.run_s[order], 1.0, 1.0, 100.0, horizon, 1, 0.0, 0.0)


def gpu(name, k=1, milli=1000, cpu=1000):
    return Demand(name, cpu_milli=cpu, memory_mib=1024, num_gpus=k, gpu_milli=milli)


def starts(tp, system, horizon=1000.0):
    """Each pod's start time (by name) on one node with 2 GPUs, and the result."""
    wl = workload(tp, horizon)
    r = dynamic.replay(nodes(), wl, dynamic.SYSTEMS[system], seed=1)
    return {tp.demands[j].id: s for j, s in zip(wl.pods, r.start)}, r


# ------------------------------------------------------------------------------------------ queue


def queue_of(entries, shape=lambda item: item[0]):
    q = ShapeQueue(shape)
    for e in entries:
        q.push(e)
    return q


def test_best_first_serves_shortest_estimate_of_the_top_priority_and_ages_waiting_ones():
    items = {"long": (0, 100.0), "short": (0, 10.0), "old-long": (-300, 100.0), "low": (0, 1.0)}
    q = queue_of([(-1, 0, "long"), (-1, 1, "short"), (-1, 2, "old-long"), (0, 3, "low")], shape=len)
    front = best_first(q, 0.0, lambda i: items[i][1], lambda i: i, lambda i: items[i][0], aging=0.5)
    # old-long: 100 - 0.5 * 300 = -50 (aged past the short one); the lower priority goes last
    assert [e[2] for e in front] == ["old-long", "short", "long", "low"] and len(q) == 0


def test_best_first_leaves_a_pinned_entry_in_its_queue_place():
    est = {"wide": 500.0, "a": 50.0, "b": 5.0, "c": 1.0}
    q = queue_of([(-1, i, k) for i, k in enumerate(["a", "wide", "b", "c"])], shape=len)
    front = best_first(q, 0.0, est.__getitem__, lambda i: i, lambda i: 0.0, pinned=lambda i: i == "wide")
    assert [e[2] for e in front] == ["c", "wide", "b", "a"]  # the others sorted around it


def test_the_shape_queue_pops_in_one_heaps_order_whatever_the_shapes():
    rng = np.random.default_rng(3)
    entries = [(-int(rng.integers(3)), i, f"{'abc'[rng.integers(3)]}{i}") for i in range(200)]
    q = queue_of(entries[:120])
    out = [q.pop() for _ in range(50)]
    for e in entries[120:] + out[::2]:  # (pushed back while others wait: heads change, stale copies)
        q.push(e)
    out = out[1::2] + [q.pop() for _ in range(len(q))]
    assert sorted(out) == sorted(entries)
    assert out[25:] == sorted(out[25:])  # after the 25 kept out, one heap's order


def test_a_strict_scan_stops_at_the_first_miss_and_close_puts_everything_back():
    q = queue_of([(0, i, f"p{i}") for i in range(5)])
    scan = Scan(q, limit=1)
    seen = []
    for e in scan:
        seen.append(e[2])
        scan.did_not_fit(e)
    scan.close()
    assert seen == ["p0"] and sorted(e[2] for e in q) == [f"p{i}" for i in range(5)]


def test_a_shape_that_did_not_fit_is_set_aside_whole_or_passed_over_pod_by_pod():
    """fastgpu's round sets the rest of a failed shape aside without a miss per queued entry; a per-pod
    queue (kube-scheduler's) passes over each entry of it, and its miss limit ends the round first."""
    entries = [(0, i, f"a{i}") for i in range(300)] + [(0, 300 + i, f"b{i}") for i in range(3)]
    seen = {}
    for free in (True, False):
        q = queue_of(entries)
        scan = Scan(q, limit=256, free_skips=free)
        seen[free] = []
        for e in scan:
            seen[free].append(e[2])
            if e[2].startswith("a"):
                scan.did_not_fit(e)
        scan.close()
        left = [e for e in entries if e[2] not in seen[free] or e[2].startswith("a")]  # (the "b"s tried started)
        assert sorted(q) == left  # everything else back, once
    assert seen[True] == ["a0", "b0", "b1", "b2"]  # one attempt for shape "a", then the "b"s
    assert seen[False] == ["a0"]  # 255 more "a"s passed over, one miss each: the limit ends the round


def test_a_hold_goes_to_a_node_whose_gpus_could_hold_the_demand_and_keeps_equal_priorities_off():
    st = ClusterState(["small", "big"], np.array([64000, 8000]), np.array([262144] * 2), np.array([4, 2]),
                      ["T4", "A100"], gpu_mem=np.array([[16384] * 4, [81920, 81920, 0, 0]]))
    wide = Demand("wide", 1000, 1024, 2, 1000, gpu_memory_mib=40000, priority=1)
    assert st.hold_for(wide) == 1  # "small" has more GPUs and CPU free, but 16 GiB ones
    one = Demand("one", 1000, 1024, 1, 1000, priority=1)
    assert not st.feasible(one)[1] and st.feasible(dataclasses.replace(one, priority=2))[1]
    assert st.rejections(one).get("held for a waiting multi-GPU demand of its priority or above") == 1
    st.unhold(1)
    assert st.feasible(one)[1] and not st.holding


def test_removing_entries_keeps_the_order_and_what_is_set_aside():
    q = queue_of([(0, i, f"{'ab'[i % 2]}{i}") for i in range(10)])
    q.set_aside("a")
    gone = q.remove(lambda e: e[1] in (1, 4, 7))
    assert sorted(e[2] for e in gone) == ["a4", "b1", "b7"]
    assert [q.pop()[2] for _ in range(3)] == ["b3", "b5", "b9"] and q.peek() is None
    q.restore()
    assert [q.pop()[2] for _ in range(4)] == ["a0", "a2", "a6", "a8"] and len(q) == 0


# ------------------------------------------------------------------------------- the disciplines


def test_strict_fifo_blocks_behind_a_pod_that_does_not_fit_and_the_k8s_queue_skips_it():
    tp = timed([(gpu("busy"), "LS", 0.0, 100.0), (gpu("wide", k=2), "LS", 1.0, 10.0),
                (gpu("small"), "LS", 2.0, 10.0)])
    fifo, _ = starts(tp, "fifo-best-fit")
    k8s, _ = starts(tp, "k8s-best-fit")
    assert fifo["wide"] == 100.0 and fifo["small"] == 110.0  # nothing passes the 2-GPU pod
    assert k8s["small"] == 2.0 and k8s["wide"] == 100.0  # the small one ran beside the busy one


def test_a_multi_gpu_pod_holds_the_node_against_work_queued_behind_it_but_not_against_a_higher_priority():
    tp = timed([(gpu("a"), "BE", 0.0, 100.0), (gpu("b"), "BE", 0.0, 50.0), (gpu("wide", k=2), "BE", 1.0, 10.0)]
               + [(gpu(f"s{i}"), "BE", 2.0 + i, 100.0) for i in range(3)] + [(gpu("ls"), "LS", 60.0, 100.0)])
    fast, _ = starts(tp, "fastgpu")
    k8s, _ = starts(tp, "k8s-best-fit")
    # fastgpu: from t=50 the node is held for "wide"; "ls" (higher) passes the hold at 60; "wide" starts
    # when "ls" leaves, before every 1-GPU pod queued behind it
    assert fast["ls"] == 60.0 and fast["wide"] == 160.0 and min(fast[f"s{i}"] for i in range(3)) == 170.0
    # without holds, the 1-GPU pods take each GPU as it frees and "wide" waits for all of them
    assert k8s["s0"] == 50.0 and k8s["wide"] > 250.0


def test_a_hold_that_ends_in_a_round_lets_what_waited_behind_it_start_in_that_round():
    """The replay skips a pod that did not fit last round unless a node that gained room could hold it; a
    node whose hold ends counts as one at once (review finding: "b" waited until "a" left, at 900)."""
    two = Nodes(["N", "M"], np.array([64000, 8000]), np.array([262144, 262144]), np.array([4, 4]), ["T4"] * 2)
    tp = timed([(gpu("xn", k=2, cpu=20000), "BE", 0.0, 1000.0), (gpu("xm", k=4), "BE", 0.0, 100.0),
                (gpu("a", k=4), "BE", 1.0, 800.0), (gpu("b", cpu=20000), "BE", 2.0, 10.0)])
    wl = workload(tp, 2000.0)
    r = dynamic.replay(two, wl, dynamic.SYSTEMS["fastgpu"], seed=1)
    got = {tp.demands[j].id: s for j, s in zip(wl.pods, r.start)}
    assert got["a"] == 100.0 and got["b"] == 100.0  # "b" only fits on N, held for "a" until it started on M


def test_priorities_from_qos_put_ls_ahead_of_an_earlier_be_pod():
    tp = timed([(gpu("busy1"), "BE", 0.0, 50.0), (gpu("busy2"), "BE", 0.0, 100.0),
                (gpu("be"), "BE", 1.0, 10.0), (gpu("ls"), "LS", 2.0, 10.0)])
    k8s, _ = starts(tp, "k8s-fgd")
    fifo, _ = starts(tp, "fifo-best-fit")
    assert k8s["ls"] == 50.0 and k8s["be"] == 60.0
    assert fifo["be"] == 50.0 and fifo["ls"] == 60.0  # FIFO ignores qos


def test_fastgpu_serves_the_template_it_learned_is_short_first_and_never_reads_a_pods_own_run_time():
    def pods(short_run, long_run):
        out = [(gpu("warm-short", cpu=1000), "LS", 0.0, 5.0), (gpu("warm-long", cpu=2000), "LS", 0.0, 500.0),
               (gpu("hog1", cpu=3000), "LS", 6.0, 2000.0), (gpu("hog2", cpu=3000), "LS", 501.0, 600.0)]
        # queued behind the hogs once both templates' first runs have finished: long first in arrival order
        out += [(gpu(f"long{i}", cpu=2000), "LS", 510.0 + i, long_run) for i in range(3)]
        out += [(gpu(f"short{i}", cpu=1000), "LS", 520.0 + i, short_run) for i in range(3)]
        return timed(out)

    fast, _ = starts(pods(5.0, 500.0), "fastgpu", horizon=5000)
    k8s, _ = starts(pods(5.0, 500.0), "k8s-fgd", horizon=5000)
    assert max(fast[f"short{i}"] for i in range(3)) < min(fast[f"long{i}"] for i in range(3))
    assert min(k8s[f"long{i}"] for i in range(3)) < min(k8s[f"short{i}"] for i in range(3))
    # The queued pods' own run times changed (templates keep their learned durations): same order
    swapped, _ = starts(pods(50.0, 400.0), "fastgpu", horizon=5000)
    order = lambda s: sorted((v, k) for k, v in s.items() if k[:4] in ("shor", "long"))  # noqa: E731
    assert [k for _, k in order(swapped)][:3] == [k for _, k in order(fast)][:3]


def test_a_qos_class_that_never_starts_counts_as_waiting_to_the_end_in_the_worst_qos_ratio():
    tp = timed([(gpu("hog", k=2), "LS", 0.0, 5000.0), (gpu("be"), "BE", 100.0, 10.0),
                (gpu("ls"), "LS", 200.0, 10.0)])
    r = dynamic.replay(nodes(), workload(tp, 1000.0), dynamic.SYSTEMS["k8s-best-fit"], seed=1)
    r.warmup_s = 50.0
    s = stats(r)
    assert s["wait_by_qos"]["BE"]["n"] == 0 and s["wait_all_by_qos"]["BE"] == pytest.approx(900.0)
    other = {"wait_by_qos.BE.mean": [None], "wait_all_by_qos.BE": [900.0], "wait_by_qos.LS.mean": [80.0],
             "wait_all_by_qos.LS": [80.0]}
    base = {"wait_by_qos.BE.mean": [100.0], "wait_all_by_qos.BE": [100.0], "wait_by_qos.LS.mean": [80.0],
            "wait_all_by_qos.LS": [80.0]}
    assert worst_qos(other, base) == pytest.approx(9.0)  # BE never started: judged over all that arrived


def test_departures_free_the_gpus_and_allocation_is_time_weighted_while_pods_queue():
    tp = timed([(gpu("a", k=2), "LS", 0.0, 100.0), (gpu("b", k=2), "LS", 0.0, 100.0)])
    r = dynamic.replay(nodes(), workload(tp, 300.0), dynamic.SYSTEMS["k8s-best-fit"], seed=1)
    assert sorted(r.start) == [0.0, 100.0] and sorted(r.end) == [100.0, 200.0]
    r.warmup_s = 0.0
    s = stats(r)
    assert s["alloc_busy"] == pytest.approx(1.0)  # queue non-empty only while "b" waited: both GPUs held
    assert s["alloc"] == pytest.approx(200 / 300)
    assert s["pods_per_hour"] == pytest.approx(2 / (300 / 3600))
    assert s["wait"]["mean"] == pytest.approx(50.0) and s["never_placed"] == 0


# ----------------------------------------------------------------------------------- the transform


def test_transform_draws_never_ran_pods_from_their_class_caps_runs_and_meets_the_offered_load():
    pods = [(gpu(f"r{i}"), "LS", float(i), float(r)) for i, r in enumerate([10, 20, 30, 5000])]
    pods += [(gpu("pending"), "BE", 4.0, math.nan), (gpu("cut", k=2), "LS", 5.0, 7.0),
             (gpu("done2", k=2), "LS", 6.0, 40.0), (gpu("done2b", k=2), "LS", 7.0, 3.0)]
    tp = timed(pods, cut=[False] * 5 + [True, False, False])
    wl = build(tp, gpus=4, seed=3, load=0.5, cap_s=100.0, horizon_s=5000.0)
    first = {tp.demands[j].id: r for j, r in zip(wl.pods, wl.run_s)}  # (the last pass's draws)
    assert first["pending"] in (10.0, 20.0, 30.0, 100.0)  # a 1-GPU class run time, capped
    assert first["cut"] == 40.0  # the only finished 2-GPU pod that ran at least 7 s
    assert first["r3"] == 100.0  # capped
    assert wl.load == pytest.approx(0.5) and wl.passes > 1 and wl.arrive.max() < 5000.0
    assert np.all(np.diff(wl.arrive) >= 0)
    again = build(tp, gpus=4, seed=3, load=0.5, cap_s=100.0, horizon_s=5000.0)
    assert np.array_equal(again.run_s, wl.run_s)  # seeded
    with pytest.raises(ValueError, match="--rate must be > 0"):
        build(tp, gpus=4, seed=3, rate=0.0)


def _csv(tmp_path, rows):
    p = tmp_path / "pods.csv"
    p.write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    return p


def test_bad_time_rows_name_file_line_and_field(tmp_path):
    p = _csv(tmp_path, ["a,1000,1024,1,1000,,LS,Running,0,100,10", "b,1000,1024,1,1000,,LS,Running,0,5,10"])
    with pytest.raises(TraceError, match=r"pods.csv:3: field 'deletion_time': 5 precedes scheduled_time 10"):
        load_timed_pods(p)
    p.write_text("name,cpu_milli,memory_mib,num_gpu,gpu_milli\na,1000,1024,1,1000\n")
    with pytest.raises(TraceError, match="missing column.*creation_time"):
        load_timed_pods(p)


def test_cli_dynamic_prints_the_table_and_json_and_rejects_a_bad_rate(tmp_path, capsys):
    n = tmp_path / "nodes.csv"
    n.write_text("sn,cpu_milli,memory_mib,gpu,model\n" + "".join(f"n{i},64000,262144,4,T4\n" for i in range(4)))
    rows = [f"p{i},{1000 * (1 + i % 3)},1024,{(1, 1, 2, 0)[i % 4]},{(1000, 500, 1000, 0)[i % 4]},,"
            f"{('LS', 'BE')[i % 2]},Running,{i * 10},{i * 10 + 50 + (i * 37) % 200},{i * 10}" for i in range(200)]
    p = _csv(tmp_path, rows)
    out = tmp_path / "d.json"
    rc = main(["simulate", "--dynamic", "--nodes", str(n), "--pods", str(p), "--load", "1.2", "--cap", "300",
               "--json", str(out), "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0 and "k8s-fgd" in text and "fifo-best-fit" in text and "changed" in text
    data = json.loads(out.read_text())
    assert {r["system"] for r in data["runs"]} == set(dynamic.SYSTEMS)
    assert all(r["mean"]["arrived"] > 0 for r in data["runs"])
    assert main(["simulate", "--dynamic", "--nodes", str(n), "--pods", str(p), "--rate", "-1"]) == 2
    assert "--rate must be > 0" in capsys.readouterr().err


def test_host_memory_is_part_of_the_fit_and_a_pod_no_node_can_hold_is_dropped_not_queued():
    """Pods that differ only in host memory are not skipped together: a pod too big for any node is
    dropped at arrival (counted apart), one too big for the free memory now does not hold back a
    same-shaped smaller one."""
    big = Demand("huge", cpu_milli=1000, memory_mib=10**9, num_gpus=1, gpu_milli=1000)
    mid = Demand("mid", cpu_milli=1000, memory_mib=200000, num_gpus=1, gpu_milli=1000)
    tp = timed([(big, "LS", 0.0, 10.0), (gpu("hold", cpu=1000), "LS", 0.0, 100.0),
                (Demand("mem", cpu_milli=2000, memory_mib=100000, num_gpus=0), "LS", 0.0, 100.0),
                (mid, "LS", 1.0, 10.0), (gpu("small"), "LS", 2.0, 10.0)])
    s, r = starts(tp, "fifo-best-fit")
    assert math.isnan(s["huge"]) and s["small"] == 100.0 and s["mid"] == 100.0  # FIFO: small waits behind mid
    s, r = starts(tp, "k8s-best-fit")
    assert s["small"] == 2.0 and s["mid"] == 100.0  # mid lacks host memory until "mem" leaves
    r.warmup_s = 0.0
    st = stats(r)
    assert st["never_fits"] == 1 and st["never_placed"] == 0 and st["arrived"] == 4


def test_a_horizon_not_longer_than_the_cap_is_rejected():
    tp = timed([(gpu("a"), "LS", 0.0, 10.0), (gpu("b"), "LS", 5.0, 10.0)])
    with pytest.raises(ValueError, match="--horizon .* must be longer than --cap"):
        build(tp, gpus=2, seed=1, load=1.0, cap_s=100.0, horizon_s=100.0)
