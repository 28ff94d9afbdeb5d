"""Slots without Ray: which process runs a call (``SlotPool``), the per-GPU call cap and the CUDA context
each packed subtask's process costs (``DispatchCore``), our load told from outside load
(``telemetry.split_util``), and the memory cap a slot puts on torch (``gpu_memory``, with a fake torch)."""
from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from fastgpu_ray.core.dispatch import DispatchCore
from fastgpu_ray.errors import GpuOutOfMemoryError
from fastgpu_ray.actors.gpu_memory import cap, over_declaration
from fastgpu_ray.gpu_sources import EmulatedSource, GpuReading, NvmlSource
from fastgpu_ray.options import make_options
from fastgpu_ray.core.slots import Slot, SlotPool
from fastgpu_ray.core.telemetry import GpuHold, NodeInfo, NodeTelemetry, build_snapshot, split_util

from test_emulation_sources import H200, FakeNvml
from test_runtime_dispatch import FakeBackend, claim_gpus, started, sub


class Ray:
    """The Ray side of a pool: CPUs free per node, slot starts that may fail."""

    def __init__(self, cpus: float = 4.0):
        self.cpus, self.started, self.killed, self.fail = cpus, [], [], False
        self.pid = 100

    async def start(self, node, gpus, cpus):
        if self.fail:
            return None
        self.pid += 1
        self.cpus -= cpus
        s = Slot(f"h{self.pid}", node, gpus, cpus, self.pid)
        self.started.append(s)
        return s

    def kill(self, s):
        self.killed.append(s.pid)
        self.cpus += s.cpus

    async def free(self, node):
        return self.cpus


def pool_with(ray: Ray, clock=time.monotonic) -> SlotPool:
    p = SlotPool(ray.start, ray.kill, ray.free, clock=clock, idle_s=10.0)
    p.add_lease("n", 0, "lease0", 50)
    p.add_lease("n", 1, "lease1", 51)
    p.observe("f", 0.95, 1.0)  # "f" holds the CPU (pure Python): its packed runs get processes
    return p


def test_the_lease_runs_first_then_slot_processes_are_started_reused_and_trimmed():
    async def main():
        ray, now = Ray(cpus=2.0), [0.0]
        p = pool_with(ray, clock=lambda: now[0])
        a, na = await p.acquire("n", (0,), 1.0, "f")
        b, nb = await p.acquire("n", (0,), 1.0, "f")
        c, nc = await p.acquire("n", (0,), 1.0, "f")
        assert (a.lease, a.pid, na) == (True, 50, None)
        assert not b.lease and b.pid == 101 and nb is None and b.gpus == (0,)
        assert not c.lease and c.pid == 102 and ray.cpus == 0.0
        d, nd = await p.acquire("n", (0,), 1.0, "f")  # no CPU left for a fourth process: a thread in the lease
        assert d is a and "thread" in nd and "no free CPU" in nd
        for s in (a, b, c, d):
            p.release(s)
        e, _ = await p.acquire("n", (0,), 1.0, "f")
        f, _ = await p.acquire("n", (0,), 1.0, "f")
        assert (e.pid, f.pid, len(ray.started)) == (50, 101, 2)  # reused, nothing new started
        p.release(e)
        p.release(f)
        now[0] = 11.0
        assert {s.pid for s in p.trim()} == {101, 102} and ray.cpus == 2.0  # idle too long: CPUs back
        assert p.processes() == [((0,), 50, True), ((1,), 51, True)]
    asyncio.run(main())


def test_a_lost_slot_is_replaced_and_a_released_lease_takes_its_slots_along():
    async def main():
        ray = Ray()
        p = pool_with(ray)
        await p.acquire("n", (0,), 1.0, "f")
        s, _ = await p.acquire("n", (0,), 1.0, "f")
        p.lost(s)
        p.release(s)
        assert ray.killed == [s.pid] and s not in p.slots
        t, _ = await p.acquire("n", (0,), 1.0, "f")
        assert t.pid != s.pid and not t.lease
        multi, note = await p.acquire("n", (0, 1), 1.0, "f")  # a 2-GPU subtask: a process that sees both
        assert multi.gpus == (0, 1) and note is None
        gone = p.remove_lease("n", 1)
        assert gone == [multi] and multi.pid in ray.killed and t in p.slots
        with pytest.raises(KeyError):
            await p.acquire("n", (1,), 1.0, "f")
    asyncio.run(main())


def test_a_slot_that_does_not_start_falls_back_to_a_thread_in_the_lease():
    async def main():
        ray = Ray()
        ray.fail = True
        p = pool_with(ray)
        await p.acquire("n", (0,), 1.0, "f")
        s, note = await p.acquire("n", (0,), 1.0, "f")
        assert s.lease and s.busy == 2 and "did not start" in note
        m, note = await p.acquire("n", (0, 1), 1.0, "f")
        assert m.lease and "seeing GPU 0 only" in note
    asyncio.run(main())


def test_functions_that_mostly_wait_share_the_lease_as_threads_and_cpu_bound_ones_get_processes():
    async def main():
        ray = Ray()
        p = pool_with(ray)
        await p.acquire("n", (0,), 1.0, "g")  # the lease
        s, note = await p.acquire("n", (0,), 1.0, "g")  # never run here: a thread, to learn
        assert s.lease and "not known yet" in note and not ray.started
        p.observe("g", 0.02, 1.0, sharing=2)  # it slept (waits on the GPU): threads suffice
        s, note = await p.acquire("n", (0,), 1.0, "g")
        assert s.lease and "4%" in note and not ray.started
        p.observe("h", 0.3, 1.2, sharing=4)  # pure Python beside 3 others: a quarter of the GIL is all of it
        assert p.cpu_share["h"] == pytest.approx(1.0)
        s, note = await p.acquire("n", (0,), 1.0, "h")
        assert not s.lease and note is None and len(ray.started) == 1
        p.release(s)
        s2, _ = await p.acquire("n", (0,), 1.0, "g")  # an idle slot process is free to use: any function
        assert s2 is s
        p.observe("g", 1.0, 1.0)
        assert p.cpu_share["g"] == pytest.approx(0.04 + 0.3 * 0.96)  # an average, not the last run
    asyncio.run(main())


def sleeper(s, v):
    async def run(w):
        await asyncio.sleep(s)
        return v
    return run


def peak_concurrency(runs) -> int:
    events = sorted([(r.start, 1) for r in runs] + [(r.end, -1) for r in runs])
    cur = peak = 0
    for _, d in events:
        cur += d
        peak = max(peak, cur)
    return peak


@pytest.mark.parametrize("kw, expect", [({"max_slots": 2}, 2), ({"slot_context_mib": 512}, 2),
                                        ({"slot_context_mib": 0}, 4)])
def test_calls_per_gpu_are_capped_and_each_packed_process_costs_its_cuda_context(kw, expect):
    """One 4 GiB GPU, six 1 GiB subtasks: 1.5 GiB each with a 512 MiB context (2 fit), 1 GiB without (4
    fit); a cap of 2 slots allows 2 whatever the memory."""
    async def main():
        b = FakeBackend({"a": [4096]})
        core = await started(b, **{"slot_context_mib": 0, **kw})
        await claim_gpus(core, 1)
        b.runs.clear()
        outs = await asyncio.gather(*(core.submit(sub(f"m{i}", sleeper(0.1, i), gpu_memory="1GiB", work_s=0.1,
                                                      batch=False)) for i in range(6)))
        await core.shutdown()
        return b, outs
    b, outs = asyncio.run(main())
    assert [o.value for o in outs] == list(range(6))
    assert peak_concurrency(b.runs) == expect


def test_bad_slot_settings_and_num_cpus_fail_with_the_reason():
    with pytest.raises(ValueError, match="max_slots_per_gpu=0"):
        DispatchCore(FakeBackend({}), max_slots=0)
    with pytest.raises(ValueError, match="slot_context_memory=-1"):
        DispatchCore(FakeBackend({}), slot_context_mib=-1)
    with pytest.raises(ValueError, match="num_cpus=-1"):
        make_options(num_cpus=-1)
    assert make_options().num_cpus == 1 and make_options(num_cpus=0.5).num_cpus == 0.5


def test_bad_init_slot_arguments_fail_before_ray_starts():
    import ray

    import fastgpu_ray as fastgpu
    was = ray.is_initialized()
    with pytest.raises(ValueError, match="max_slots_per_gpu=0"):
        fastgpu.init(max_slots_per_gpu=0)
    with pytest.raises(ValueError, match="slot_context_memory"):
        fastgpu.init(slot_context_memory="lots")
    assert ray.is_initialized() == was


def reading(util, procs=(), putil=(), emulated=False, external=0.0):
    return GpuReading(0, "G", 1000, 0, util, processes=tuple(procs), process_util=tuple(putil), emulated=emulated,
                      external_util=external)


def test_our_load_is_told_from_outside_load():
    ours = frozenset({7, 8})
    assert split_util(reading(0.9, (7, 9), (0.6, 0.3)), ours) == pytest.approx((0.6, 0.3))  # per-process samples
    assert split_util(reading(0.9, (7, 8)), ours) == (0.9, 0.0)  # no samples, only our processes
    assert split_util(reading(0.9, (7, 9)), ours) == (0.0, 0.9)  # no samples, mixed: all counted outside
    assert split_util(reading(0.9), ours) == (0.0, 0.9)
    # emulated: fastgpu's emulated work (its pid) is ours; a plain Ray task's is outside load, as on NVML
    src = EmulatedSource(1, 16384)
    src.set_gpu(0, util=0.2)
    src.work_begin(0, 0.5, pid=7)
    src.work_begin(0, 0.1, pid=99)
    r = src.read()[0]
    assert r.processes == (7, 99) and split_util(r, ours) == pytest.approx((0.5, 0.3))
    src.set_gpu(0, util=0.9)  # the total shows 1.0 (capped); outside is still the set load + others' work
    assert src.read()[0].util == 1.0 and split_util(src.read()[0], ours) == pytest.approx((0.5, 1.0))
    # a GPU busy with our own slots is not priced as loaded: the snapshot's util is outside + ours (declared
    # or live, whichever is more), and the dispatcher's outside load is the outside part only
    tel = NodeTelemetry("n", False, (reading(0.8, (7,), (0.8,)),), ours)
    snap = build_snapshot([NodeInfo("n", True, 4, 4, 1 << 30, 1, 0)], {"n": tel}, {("n", 0): GpuHold(running=1)})
    assert snap.nodes[0].gpus[0].util == pytest.approx(0.8)
    core = DispatchCore(FakeBackend({}))
    core.telemetry = {"n": tel}
    assert core.external_util("n", 0) == 0.0


class ProcNvml(FakeNvml):
    def __init__(self, gpus, samples):
        super().__init__(gpus)
        self.samples = samples

    def nvmlDeviceGetProcessUtilization(self, h, since):
        fresh = [s for s in self.samples if s.timeStamp > since]
        if not fresh:
            raise RuntimeError("NVML_ERROR_NOT_FOUND: Not Found")
        return fresh


def test_nvml_per_process_utilisation_is_read_where_the_driver_gives_it():
    nv = ProcNvml([H200], [SimpleNamespace(pid=111, smUtil=30, timeStamp=5),
                           SimpleNamespace(pid=222, smUtil=7, timeStamp=6)])
    src = NvmlSource(nv)
    r = src.read()[0]
    assert r.processes == (111, 222) and r.process_util == pytest.approx((0.30, 0.07))
    assert split_util(r, frozenset({222})) == pytest.approx((0.07, 0.30))
    again = src.read()[0]  # no new sample since (NVML: "not found"): no split from samples this time
    assert again.process_util == () and split_util(again, frozenset({111, 222})) == (0.37, 0.0)
    assert NvmlSource(FakeNvml([H200])).read()[0].process_util == ()  # not supported: no split from samples


class FakeTorch:
    """The torch.cuda calls a slot makes."""

    def __init__(self, total_mib=80_000, peak_mib=5000):
        self.fraction, self.total, self.peak = None, total_mib << 20, peak_mib << 20
        self.cuda = SimpleNamespace(
            is_available=lambda: True, get_device_properties=lambda i: SimpleNamespace(total_memory=self.total),
            set_per_process_memory_fraction=lambda f, i: setattr(self, "fraction", f),
            reset_peak_memory_stats=lambda i: None, max_memory_reserved=lambda i: self.peak)


def test_a_slot_caps_torch_at_the_declared_memory_and_names_what_was_used():
    t = FakeTorch()
    assert cap(20_000, torch=t) and t.fraction == pytest.approx(0.25)
    assert not cap(0, torch=t) and t.fraction == 1.0  # nothing declared: no cap
    err = over_declaration("s1", 4096, RuntimeError("CUDA out of memory"), torch=t)
    assert isinstance(err, GpuOutOfMemoryError) and (err.declared_mib, err.used_mib) == (4096, 5000)
    assert "declared 4096 MiB, used 5000 MiB" in str(err) and "gpu_memory=" in str(err)
    no_cuda = SimpleNamespace(cuda=SimpleNamespace(is_available=lambda: False))
    assert not cap(4096, torch=no_cuda)
    assert "unknown" in str(over_declaration("s2", 4096, RuntimeError("oom"), torch=no_cuda))


def test_cancelling_a_packed_running_subtask_asks_the_backend_to_stop_its_process_only():
    from fastgpu_ray.core.dispatch import SlotLost

    class StoppingBackend(FakeBackend):
        def __post_init__(self):
            super().__post_init__()
            self.stopped, self.events = [], {}

        def stop(self, sid):
            self.stopped.append(sid)
            self.events[sid].set()
            return True

        async def run(self, worker, batch):
            if batch[0].id in self.events:  # its slot process: killed by stop(), so the call fails
                await self.events[batch[0].id].wait()
                raise SlotLost("killed")
            return await super().run(worker, batch)

    def until_stopped(sid):
        async def run(w):
            raise AssertionError("runs only through the backend's own run")
        return run

    b = StoppingBackend({"a": [16384]})

    async def main():
        core = await started(b, slot_context_mib=0)
        await claim_gpus(core, 1)
        b.events = {"v": asyncio.Event()}
        other = asyncio.ensure_future(core.submit(sub("n", sleeper(0.4, "n"), gpu_memory="1GiB", batch=False)))
        victim = asyncio.ensure_future(core.submit(sub("v", until_stopped("v"), fn="g", gpu_memory="1GiB",
                                                       batch=False)))
        while core.explain("v") is None or core.explain("v").state != "running":
            await asyncio.sleep(0.01)
        victim.cancel()
        out = await other
        await asyncio.sleep(0.05)
        rec, released = core.explain("v"), list(b.released)
        await core.shutdown()
        return out, rec, released

    out, rec, released = asyncio.run(main())
    assert out.value == "n" and b.stopped == ["v"] and released == []  # the GPU's lease was kept
    assert rec.state == "cancelled" and any("slot process" in h for h in rec.history), rec.history


def test_a_lost_slot_process_retries_its_subtask_and_keeps_the_gpu():
    from fastgpu_ray.core.dispatch import SlotLost

    class LosingBackend(FakeBackend):
        lose = {"x"}

        async def run(self, worker, batch):
            if batch[0].id in self.lose:
                self.lose.discard(batch[0].id)
                raise SlotLost("slot process 4242 ActorDiedError")
            return await super().run(worker, batch)

    b = LosingBackend({"a": [16384]})

    async def main():
        core = await started(b)
        await claim_gpus(core, 1)
        out = await core.submit(sub("x", sleeper(0.05, "x"), gpu_memory="1GiB", batch=False))
        rec, released = core.explain("x"), list(b.released)
        await core.shutdown()
        return out, rec, released

    out, rec, released = asyncio.run(main())
    assert out.ok and out.value == "x" and rec.retries == 1 and released == []
    assert any("slot process 4242" in h and "retried" in h for h in rec.history), rec.history


def test_a_subtask_over_its_declaration_is_retried_asking_for_what_it_used_not_the_whole_gpu():
    tries = []

    async def greedy(w):
        tries.append(w.gpu_index)
        if len(tries) == 1:  # its slot capped torch at 1 GiB; it used 1.5 GiB
            raise over_declaration("g", 1024, RuntimeError("CUDA out of memory"),
                                   torch=FakeTorch(peak_mib=1536), capped=True)
        return "done"

    async def main():
        b = FakeBackend({"a": [16384]})
        core = await started(b)
        await claim_gpus(core, 1)
        st = sub("g", greedy, gpu_memory="1GiB", batch=False)
        out = await core.submit(st)
        rec = core.explain("g")
        await core.shutdown()
        return out, rec, st

    out, rec, st = asyncio.run(main())
    assert out.ok and rec.retries == 1 and st.min_memory_mib == 2048  # twice 1 GiB (> 1536 + 256)
    assert any("went over its 1024 MiB" in h and "asking for 2048 MiB" in h for h in rec.history), rec.history
