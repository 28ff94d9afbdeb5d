"""The runtime path of ``real_gpu_packing.py``: fastgpu's slots against plain Ray on one (real) GPU.

Called by ``python benchmarks/real_gpu_packing.py [--device cpu] [--jobs 8] [--iters 300]``.
"""
from __future__ import annotations

import os
import statistics
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

WORKLOADS = ((1024, 32), (2048, 256))  # (MLP width, batch)
NVML_CALLS = ("nvmlDeviceGetUtilizationRates", "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetComputeRunningProcesses",
              "nvmlDeviceGetProcessUtilization", "nvmlDeviceGetTemperature", "nvmlDeviceGetPowerUsage")


def infer(width: int, batch: int, iters: int, device: str) -> float:
    """One inference subtask: ``iters`` forward passes of a 3-layer MLP; a host sync per pass (as
    small-batch serving does). Returns a checksum so the work cannot be skipped."""
    import torch
    dev = "cuda:0" if device == "cuda" else device  # a slot sees its GPU as device 0
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, width),
                            torch.nn.ReLU(), torch.nn.Linear(width, 10)).eval().to(dev)
    x = torch.randn(batch, width).to(dev)
    acc = 0.0
    with torch.inference_mode():
        for _ in range(iters):
            acc += float(m(x)[0, 0])
    return acc


def nvml_calls() -> list[str]:
    """Which NVML calls work here (GPU 0), in words."""
    try:
        import pynvml
        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
    except Exception as e:
        return [f"NVML unavailable: {type(e).__name__}: {e}"]
    out = []
    for name in NVML_CALLS:
        args = {"nvmlDeviceGetProcessUtilization": (h, 0), "nvmlDeviceGetTemperature": (h, 0)}.get(name, (h,))
        try:
            r = getattr(pynvml, name)(*args)
            out.append(f"{name}: ok ({len(r)} entries)" if isinstance(r, list) else f"{name}: ok")
        except Exception as e:
            out.append(f"{name}: {type(e).__name__}: {e}")
    return out


class MonitorSampler:
    """Reads fastgpu's node monitor every 0.5 s while a way runs (the readings placement sees); with
    ``node=None`` (plain Ray's ways, after fastgpu shut its monitor down) NVML in this process."""

    def __init__(self, node: str | None):
        self.node, self.rows, self._stop = node, [], threading.Event()
        self.local = None
        if node is None:
            from fastgpu_ray.gpu_sources import NvmlSource, open_nvml
            nv = open_nvml()
            self.local = NvmlSource(nv) if nv is not None else None

    def __enter__(self):
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self):
        import ray

        from fastgpu_ray.actors.monitor import monitor_for
        from fastgpu_ray.core.telemetry import split_util
        while not self._stop.wait(0.5):
            try:
                if self.node is None:
                    if self.local is None:
                        return
                    g, pids = self.local.read()[0], frozenset()
                else:
                    tel = ray.get(monitor_for(self.node).read.remote(), timeout=5)
                    g, pids = tel.gpus[0], tel.fastgpu_pids
            except Exception:
                continue
            own, outside = split_util(g, pids)
            self.rows.append((g.util, own, outside, len(g.processes), g.memory_used_mib,
                              sum(1 for p in g.processes if p in pids)))

    def __exit__(self, *exc):
        self._stop.set()

    def summary(self) -> str:
        if not self.rows:
            return "no monitor readings"
        r = self.rows
        return (f"util mean {statistics.mean(x[0] for x in r):.0%} (fastgpu {statistics.mean(x[1] for x in r):.0%}, "
                f"outside {statistics.mean(x[2] for x in r):.0%}), processes up to {max(x[3] for x in r)} "
                f"({max(x[5] for x in r)} fastgpu's), memory peak {max(x[4] for x in r)} MiB")


def run_runtime(device: str, jobs: int, iters: int) -> int:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    import fastgpu_ray as fastgpu
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this module
    emulate = device != "cuda"
    print("\n".join(nvml_calls()) if not emulate else "dry run: emulated GPU, torch on " + device, flush=True)
    ray.init(num_gpus=1, num_cpus=max(jobs + 1, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    node = ray.get_runtime_context().get_node_id()
    results = []
    try:
        for width, batch in WORKLOADS:
            total = jobs * iters
            rates, notes = {}, {}
            fastgpu.init(emulate=emulate or None, max_slots_per_gpu=max(jobs, 1))
            try:
                task = fastgpu.task(gpu_memory="1GiB", batch=False)(infer)
                t0 = time.perf_counter()
                cold = ray.get([task.remote(width, batch, iters, device) for _ in range(jobs)], timeout=600)
                rates["fastgpu cold"] = total / (time.perf_counter() - t0)
                with MonitorSampler(node) as s:
                    t0 = time.perf_counter()
                    warm = ray.get([task.remote(width, batch, iters, device) for _ in range(jobs)], timeout=600)
                    rates["fastgpu warm"] = total / (time.perf_counter() - t0)
                notes["fastgpu warm"] = s.summary()
                procs = fastgpu.session.current().processes()
                notes["fastgpu cold"] = f"{len(procs)} fastgpu processes on the GPU after"
            finally:
                fastgpu.shutdown()
            whole = ray.remote(num_gpus=1, max_calls=0)(infer)
            ray.get(whole.remote(width, batch, 5, device))  # its worker is up (as fastgpu's were)
            with MonitorSampler(None) as s:
                t0 = time.perf_counter()
                seq = ray.get([whole.remote(width, batch, iters, device) for _ in range(jobs)], timeout=600)
                rates["Ray num_gpus=1"] = total / (time.perf_counter() - t0)
            notes["Ray num_gpus=1"] = s.summary()
            frac = ray.remote(num_gpus=1 / jobs)(infer)
            with MonitorSampler(None) as s:
                t0 = time.perf_counter()
                par = ray.get([frac.remote(width, batch, iters, device) for _ in range(jobs)], timeout=600)
                rates[f"Ray num_gpus=1/{jobs}"] = total / (time.perf_counter() - t0)
            notes[f"Ray num_gpus=1/{jobs}"] = s.summary()
            ref = seq[0]
            assert all(abs(v - ref) < 1e-3 * max(1.0, abs(ref)) for v in cold + warm + seq + par), "results differ"
            results.append((width, batch, rates, notes))
    finally:
        ray.shutdown()
    for width, batch, rates, notes in results:
        base = rates["Ray num_gpus=1"]
        print(f"\n{jobs} inference subtasks x {iters} passes, MLP width {width}, batch {batch}, on {device}")
        print(f"{'way':<22}{'passes/s':>10}{'vs num_gpus=1':>15}  monitor readings")
        for k, v in rates.items():
            print(f"{k:<22}{v:>10.1f}{v / base:>14.2f}x  {notes.get(k, '')}")
        frac_rate = next(v for k, v in rates.items() if k.startswith("Ray num_gpus=1/"))
        print(f"fastgpu warm / Ray num_gpus=1: {rates['fastgpu warm'] / base:.2f}x (target >= 4); "
              f"/ Ray fractional: {rates['fastgpu warm'] / frac_rate:.2f}x")
    return 0
