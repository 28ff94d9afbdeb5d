"""The dispatch core's books, each an object of its own (no Ray): GPU reservations, the worker pool, the
explain records."""
from __future__ import annotations

import pytest

from placement import Demand

from fastgpu_ray.core.records import Record, RecordBook
from fastgpu_ray.core.reservations import Reservations, time_left
from fastgpu_ray.core.telemetry import NodeInfo
from fastgpu_ray.core.worker_pool import WorkerInfo, WorkerPool
from helpers_noray import RAY_LOADED, run_without_ray


def test_a_batch_reserves_one_share_and_its_release_frees_it_only_on_the_worker_it_ran_on():
    r = Reservations(slot_cap=8)
    r.open(("n", 0))
    quarter = Demand(id="a", num_gpus=1, gpu_milli=250, gpu_memory_mib=2048)
    r.reserve("n", (0,), quarter, call=1, subtasks=3, util=0.1, duration_key="f", now=10.0, load=1.0, runs=[0.6])
    h = r.holds[("n", 0)]
    assert (h.milli_used, h.memory_reserved_mib, h.running, h.calls) == (250, 2048, 3, 1)
    assert r.fits(("n", 0), 750) and not r.fits(("n", 0), 751)
    assert r.free_in(("n", 0), 10.2) == pytest.approx(0.4) and r.started("f") == {1: (10.0, 1.0)}
    # its worker was replaced meanwhile: the new worker's books are not touched
    assert r.release("n", (0,), quarter, 1, 3, 0.1, "f", held=lambda key: False) == []
    assert h.milli_used == 250 and r.free_in(("n", 0), 10.2) == 0.0 and r.started("f") == {}
    r.reserve("n", (0,), quarter, call=2, subtasks=1, util=0.0, duration_key="f", now=11.0, load=1.0, runs=[0.5])
    assert r.release("n", (0,), quarter, 2, 1, 0.0, "f", held=lambda key: True) == []  # 3 still counted
    r.close(("n", 0))
    assert ("n", 0) not in r.holds and r.free_in(("n", 0), 11.0) == 0.0


def test_a_gpu_at_its_call_cap_takes_nothing_more_and_an_overdue_run_still_has_time_left():
    r = Reservations(slot_cap=2)
    tiny = Demand(id="t", num_gpus=1, gpu_milli=1, gpu_memory_mib=512)
    for call in (1, 2):
        r.reserve("n", (0,), tiny, call=call, subtasks=1, util=0.0, duration_key="g", now=0.0, load=1.0, runs=[1.0])
    assert not r.fits(("n", 0), 1)
    assert r.release("n", (0,), tiny, 1, 1, 0.0, "g", held=lambda key: True) == []
    assert r.fits(("n", 0), 1)
    assert time_left(1.0, 1.0, 3.0) == pytest.approx(0.25 * 3.0)  # 2 s late: a quarter of its 3 s so far
    assert time_left(2.0, 2.0, 1.9) == pytest.approx(0.1)  # before its end: what is left of the estimate
    assert r.release("n", (0,), tiny, 2, 1, 0.0, "g", held=lambda key: True) == [("n", 0)]


def test_runs_started_on_a_guess_get_their_ends_from_the_run_time_learned_later():
    r = Reservations(slot_cap=8)
    whole = Demand(id="w", num_gpus=1)
    # a batch of 2 started at 0 on the 0.5 s guess, on a GPU slowed 2x; a declared one of the same key
    r.reserve("n", (0,), whole, call=1, subtasks=2, util=0.0, duration_key="f", now=0.0, load=2.0, runs=[2.0],
              guess=0.5)
    r.reserve("n", (1,), whole, call=2, subtasks=1, util=0.0, duration_key="f", now=0.0, load=1.0, runs=[3.0])
    assert r.free_in(("n", 0), 3.0) == pytest.approx(0.25 * 3.0)  # overdue: a quarter of its elapsed time
    r.relearn("f", 2.0)  # the function takes 2 s: 2 x 2 s at 2x = 8 s
    assert r.free_in(("n", 0), 3.0) == pytest.approx(5.0)
    assert r.free_in(("n", 1), 1.0) == pytest.approx(2.0)  # not started on a guess: untouched
    r.relearn("f", 4.0)  # corrected once: later estimates move the learned one, not this call's again
    assert r.free_in(("n", 0), 3.0) == pytest.approx(5.0) and r.guessed == {}
    r.reserve("n", (0,), whole, call=3, subtasks=1, util=0.0, duration_key="f", now=5.0, load=1.0, runs=[0.5],
              guess=0.5)
    r.release("n", (0,), whole, 3, 1, 0.0, "f", held=lambda key: True)
    assert r.guessed == {}  # an ended call leaves nothing behind


def test_the_pool_drops_a_worker_once_and_shows_claims_on_gpus_it_does_not_hold():
    pool = WorkerPool()
    w = WorkerInfo(handle=None, node_id="n", gpu_index=0)
    pool.add(w)
    stale = WorkerInfo(handle=None, node_id="n", gpu_index=0)  # an older worker of the same GPU
    assert not pool.remove(stale) and pool.live(("n", 0)) and not stale.alive
    pool.count_claim("n", 2)
    pool.count_claim("n", -1)
    assert pool.claiming == {"n": 1} and pool.held("n") == 1
    node = NodeInfo("n", True, 4, 4, 1 << 30, 3, 2)
    assert list(pool.claim_holds([node], {("n", 0): object()})) == [("n", 1)]
    assert pool.remove(w) and not pool.workers and not w.alive
    pool.count_claim("n", -1)
    assert pool.claiming == {}


def test_records_keep_the_newest_and_say_which_ended():
    book = RecordBook(keep=3)
    for i in range(5):
        book.add(Record(f"s{i}", state="finished" if i % 2 else "running"))
    assert [r.id for r in book.values()] == ["s2", "s3", "s4"] and "s1" not in book
    book.add(Record("s2", state="failed"))  # given again (a hand-off came back): newest now
    book.add(Record("s5"))
    assert [r.id for r in book.values()] == ["s4", "s2", "s5"] and sorted(book.ended()) == ["s2"]
    assert book["s2"].state == "failed" and book.get("s0") is None and len(book) == 3


def test_the_scheduling_core_imports_without_ray_and_without_the_actors():
    """``fastgpu_ray.core`` is Ray-free, as ``placement`` is: every module of it imports with Ray unavailable,
    and none pulls in ``fastgpu_ray.actors`` (the Ray side depends on the core, never the reverse)."""
    code = (
        "import pkgutil, importlib\n"
        "import fastgpu_ray.core as core\n"
        "names = [m.name for m in pkgutil.iter_modules(core.__path__, 'fastgpu_ray.core.')]\n"
        "[importlib.import_module(n) for n in names]\n"
        "assert len(names) >= 10, names\n"
        f"assert not {RAY_LOADED}\n"
        "assert not [m for m in sys.modules if m.startswith('fastgpu_ray.actors')]\n"
    )
    r = run_without_ray(code)
    assert r.returncode == 0, r.stderr
