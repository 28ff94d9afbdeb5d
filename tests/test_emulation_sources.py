"""GPU sources: NVML through a fake ``pynvml`` module, emulated GPUs and their load model, the node
monitor, and how readings become a placement Snapshot."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from placement import GPU_MILLI
from placement.cost import slowdown
from fastgpu_ray.gpu_sources import EmulatedSource, NvmlSource
from fastgpu_ray.actors.monitor import NodeMonitor
from fastgpu_ray.core.telemetry import GpuHold, NodeInfo, NodeTelemetry, build_snapshot


class FakeNvml:
    """The pynvml calls NvmlSource makes, over a fixed table of GPUs."""

    def __init__(self, gpus):
        self.gpus = gpus
        self.inited = 0

    def nvmlInit(self):
        self.inited += 1

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return self.gpus[h]["name"].encode()

    def nvmlDeviceGetMemoryInfo(self, h):
        g = self.gpus[h]
        return SimpleNamespace(total=g["total"] << 20, used=g["used"] << 20, free=(g["total"] - g["used"]) << 20)

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=self.gpus[h]["util"], memory=0)

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [SimpleNamespace(pid=p, usedGpuMemory=m << 20) for p, m in self.gpus[h]["procs"]]

    def nvmlDeviceGetTemperature(self, h, sensor):
        return 61

    def nvmlDeviceGetPowerUsage(self, h):
        if "power" not in self.gpus[h]:
            raise RuntimeError("not supported")
        return self.gpus[h]["power"]


H200 = {"name": "NVIDIA H200", "total": 143771, "used": 30000, "util": 37,
        "procs": [(111, 20000), (222, 10000)], "power": 250500}


def test_nvml_source_reads_util_memory_processes_temperature_power():
    nv = FakeNvml([H200, {**H200, "used": 0, "util": 0, "procs": [], "power": None}])
    del nv.gpus[1]["power"]
    r = NvmlSource(nv).read()
    assert nv.inited == 1 and len(r) == 2
    g = r[0]
    assert (g.model, g.memory_total_mib, g.memory_used_mib, g.util) == ("NVIDIA H200", 143771, 30000, 0.37)
    assert g.processes == (111, 222) and g.process_memory_mib == (20000, 10000)
    assert g.temperature_c == 61 and g.power_w == pytest.approx(250.5) and not g.emulated
    assert r[1].power_w is None  # a figure the GPU does not report is None, not an error


def test_real_gpu_snapshot_separates_fastgpu_processes_from_outside_ones():
    nv = FakeNvml([H200])
    mon = NodeMonitor("n1", 1, 0, force_emulation=False, nvml=nv)
    mon.register_pids([222])  # pid 222 is a fastgpu worker using 10000 MiB
    tel = mon.read()
    node = NodeInfo("n1", True, 8, 8, 64 << 30, 1, 0)
    snap = build_snapshot([node], {"n1": tel}, {("n1", 0): GpuHold(milli_used=1, memory_reserved_mib=12000)})
    g = snap.nodes[0].gpus[0]
    assert g.external_processes == 1 and g.util == 0.37 and not g.emulated
    # outside use 20000 MiB + fastgpu's reservation 12000 (more than its live 10000)
    assert g.memory_free_mib == 143771 - 20000 - 12000


def test_emulated_gpus_load_model_uses_the_shared_slowdown():
    src = EmulatedSource(2, [4096, 16384])
    src.set_gpu(1, util=0.5, memory_used_mib=1000, processes=2)
    t1, f1 = src.work_begin(1, 0.25)
    assert f1 == pytest.approx(slowdown(0.5))
    t2, f2 = src.work_begin(1, 0.1)  # another tenant is now running there too
    assert f2 == pytest.approx(slowdown(0.75))
    r = src.read()
    assert r[1].util == pytest.approx(0.85) and r[1].external_util == 0.5 and r[1].emulated
    assert (r[0].memory_total_mib, r[1].external_memory_mib, r[1].external_processes) == (4096, 1000, 2)
    src.work_end(1, t1)
    src.work_end(1, t2)
    assert src.read()[1].util == 0.5
    with pytest.raises(ValueError, match="no emulated GPU 5"):
        src.set_gpu(5, util=0.1)
    with pytest.raises(ValueError, match="util=1.5"):
        src.set_gpu(0, util=1.5)


def test_monitor_emulates_when_forced_and_refuses_to_fake_real_gpus():
    mon = NodeMonitor("n1", 3, 8192, force_emulation=True, nvml=FakeNvml([H200]))
    tel = mon.read()
    assert tel.emulated and [g.memory_total_mib for g in tel.gpus] == [8192] * 3
    real = NodeMonitor("n2", 1, 8192, force_emulation=False, nvml=FakeNvml([H200]))
    with pytest.raises(ValueError, match="real GPUs"):
        real.set_emulated(0, util=0.5)


def test_snapshot_marks_gpus_other_ray_work_holds_and_keeps_fastgpus_reservations():
    src = EmulatedSource(4, 16384)
    src.set_gpu(3, util=0.6, memory_used_mib=4000, processes=1)
    tel = NodeTelemetry("n1", True, tuple(src.read()))
    # Ray: 4 GPUs, 1 available. fastgpu holds GPU 0 (a 2 GiB subtask) -> 2 of GPUs 1..3 are other Ray work.
    node = NodeInfo("n1", True, 8, 8, 64 << 30, 4, 1)
    snap = build_snapshot([node, NodeInfo("dead", False, 1, 1, 1 << 30, 0, 0)], {"n1": tel},
                          {("n1", 0): GpuHold(milli_used=1, memory_reserved_mib=2048, running=1)})
    gpus = snap.nodes[0].gpus
    assert [g.milli_used for g in gpus] == [1, 0, GPU_MILLI, GPU_MILLI]
    assert gpus[0].memory_free_mib == 16384 - 2048
    assert gpus[3].util == 0.6 and gpus[3].external_processes == 1 and gpus[3].emulated
    assert not snap.nodes[1].alive
