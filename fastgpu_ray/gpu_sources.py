"""Where per-GPU live figures come from: NVML (``nvidia-ml-py``) or emulation. Both give ``GpuReading``s.

The monitor actor polls one source about once a second. Tests pass a fake ``pynvml``-like module to
``NvmlSource``; machines without NVML get an ``EmulatedSource`` over Ray's logical GPUs.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Iterable

from placement.cost import slowdown

DEFAULT_EMULATED_MEMORY_MIB = 16 * 1024
EMULATED_MODEL = "EmulatedGPU"


@dataclass(frozen=True)
class GpuReading:
    """One GPU at one instant. ``processes``: pids of compute processes on it (Ray's or not)."""

    index: int
    model: str
    memory_total_mib: int
    memory_used_mib: int
    util: float  # 0..1
    processes: tuple[int, ...] = ()
    process_memory_mib: tuple[int, ...] = ()  # per entry of ``processes``, where known
    process_util: tuple[float, ...] = ()  # per entry of ``processes`` (0..1), where the driver samples it
    temperature_c: float | None = None
    power_w: float | None = None
    emulated: bool = False
    external_util: float = 0.0  # emulation only: the externally set load
    external_memory_mib: int = 0  # emulation only
    external_processes: int = 0  # emulation only: processes outside fastgpu that were declared


class NvmlSource:
    """Live readings through NVML. ``nvml`` is the ``pynvml`` module (or a fake with the same calls)."""

    emulated = False

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        nvml.nvmlInit()
        self.count = nvml.nvmlDeviceGetCount()
        self.handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(self.count)]
        self._seen = [0] * self.count  # per GPU: timestamp of the newest per-process sample read

    def read(self) -> list[GpuReading]:
        n = self.nvml
        out = []
        for i, h in enumerate(self.handles):
            name = n.nvmlDeviceGetName(h)
            name = name.decode() if isinstance(name, bytes) else str(name)
            mem = n.nvmlDeviceGetMemoryInfo(h)
            util = n.nvmlDeviceGetUtilizationRates(h).gpu / 100.0
            procs = list(n.nvmlDeviceGetComputeRunningProcesses(h))
            pids = tuple(int(p.pid) for p in procs)
            pmem = tuple(int((getattr(p, "usedGpuMemory", None) or 0) // (1 << 20)) for p in procs)
            per = self._process_util(i, h)
            putil = tuple(per.get(p, 0.0) for p in pids) if per is not None else ()
            out.append(GpuReading(
                index=i, model=name, memory_total_mib=int(mem.total // (1 << 20)),
                memory_used_mib=int(mem.used // (1 << 20)), util=util, processes=pids,
                process_memory_mib=pmem, process_util=putil, temperature_c=_try(lambda: float(n.nvmlDeviceGetTemperature(h, 0))),
                power_w=_try(lambda: n.nvmlDeviceGetPowerUsage(h) / 1000.0)))
        return out

    def _process_util(self, i: int, h) -> dict[int, float] | None:
        """pid -> SM utilisation (0..1) from the samples since the last read; None where there are none
        (NVML_ERROR_NOT_FOUND: no new sample) or the driver does not give them: the split then falls back
        to which processes run there (``telemetry.split_util``)."""
        try:
            samples = self.nvml.nvmlDeviceGetProcessUtilization(h, self._seen[i])
        except Exception:
            return None
        out: dict[int, float] = {}
        if not samples:
            return None
        for s in samples:
            out[int(s.pid)] = max(out.get(int(s.pid), 0.0), float(s.smUtil) / 100.0)
            self._seen[i] = max(self._seen[i], int(s.timeStamp))
        return out

    def close(self) -> None:
        _try(self.nvml.nvmlShutdown)


def _try(f):
    try:
        return f()
    except Exception:  # a figure this GPU/driver does not report
        return None


@dataclass
class _EmuGpu:
    memory_mib: int
    model: str = EMULATED_MODEL
    util: float = 0.0
    memory_used_mib: int = 0
    processes: int = 0
    tenants: dict[int, tuple[float, int]] = field(default_factory=dict)  # running work: token -> (util, pid)


class EmulatedSource:
    """Emulated GPUs: Ray's logical GPUs of this node, with a memory size and a settable external load.

    The load model (documented in docs/design-runtime.md): an emulated GPU's utilisation is its external
    load plus the ``util`` of every emulated work item running on it (capped at 1). Emulated work of
    ``s`` seconds takes ``s * placement.cost.slowdown(util of the others at its start)``.
    """

    emulated = True

    def __init__(self, count: int, memory_mib: int | Iterable[int] = DEFAULT_EMULATED_MEMORY_MIB) -> None:
        mems = [memory_mib] * count if isinstance(memory_mib, int) else list(memory_mib)
        if len(mems) != count:
            raise ValueError(f"{count} emulated GPUs but {len(mems)} memory sizes")
        self.gpus = [_EmuGpu(int(m)) for m in mems]
        self.count = count
        self._lock = threading.Lock()
        self._token = 0

    def set_gpu(self, index: int, *, util: float | None = None, memory_used_mib: int | None = None,
                processes: int | None = None, memory_mib: int | None = None) -> None:
        """Set the external (outside fastgpu) load of GPU ``index``, or its memory size."""
        if not 0 <= index < self.count:
            raise ValueError(f"no emulated GPU {index} on this node (it has {self.count})")
        if util is not None and not 0.0 <= util <= 1.0:
            raise ValueError(f"util={util!r}: must be between 0 and 1")
        with self._lock:
            g = self.gpus[index]
            if util is not None:
                g.util = float(util)
            if memory_used_mib is not None:
                g.memory_used_mib = int(memory_used_mib)
            if processes is not None:
                g.processes = int(processes)
            if memory_mib is not None:
                g.memory_mib = int(memory_mib)

    def work_begin(self, index: int, util: float, pid: int = 0) -> tuple[int, float]:
        """Register emulated work of process ``pid`` on GPU ``index``; returns (token, slowdown factor it
        runs at)."""
        with self._lock:
            g = self.gpus[index]
            others = g.util + sum(u for u, _ in g.tenants.values())
            self._token += 1
            g.tenants[self._token] = (float(util), int(pid))
            return self._token, slowdown(min(others, 1.0))

    def work_end(self, index: int, token: int) -> None:
        with self._lock:
            self.gpus[index].tenants.pop(token, None)

    def read(self) -> list[GpuReading]:
        with self._lock:
            return [self._reading(i, g) for i, g in enumerate(self.gpus)]

    @staticmethod
    def _reading(i: int, g: _EmuGpu) -> GpuReading:
        """Running emulated work appears as NVML shows compute processes: per pid, with its utilisation."""
        per: dict[int, float] = {}
        for u, pid in g.tenants.values():
            per[pid] = per.get(pid, 0.0) + u
        return GpuReading(
            index=i, model=g.model, memory_total_mib=g.memory_mib, memory_used_mib=g.memory_used_mib,
            util=min(1.0, g.util + sum(per.values())), processes=tuple(per), process_util=tuple(per.values()),
            emulated=True, external_util=g.util, external_memory_mib=g.memory_used_mib,
            external_processes=g.processes)

    def close(self) -> None:
        pass


def open_nvml() -> Any | None:
    """The ``pynvml`` module when NVML works on this machine, else None."""
    try:
        import pynvml
        pynvml.nvmlInit()
        if pynvml.nvmlDeviceGetCount() == 0:
            return None
        return pynvml
    except Exception:  # no driver, no library, no GPU: emulate
        return None
