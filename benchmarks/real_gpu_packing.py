"""Real-GPU check: packing small-batch inference on one GPU through fastgpu's runtime, against plain Ray.

    python benchmarks/real_gpu_packing.py                 # Ray + torch with CUDA + nvidia-ml-py, one GPU
    python benchmarks/real_gpu_packing.py --device cpu    # dry run of the logic (emulated GPU, CPU torch)
    python benchmarks/real_gpu_packing.py --no-ray        # the layers only, where Ray cannot be carried

Default (the runtime path): an embedded local Ray with the machine's GPU; for each workload (an MLP of
width 1024 at batch 32, and width 2048 at batch 256) ``--jobs`` inference subtasks of ``--iters``
forward passes each, run three ways in one run:
  fastgpu        ``@fastgpu.task(gpu_memory=...)``: packed on the GPU, one slot process each (warm: the
                 slots were started by a first wave, reported separately as cold)
  Ray num_gpus=1 ``@ray.remote(num_gpus=1, max_calls=0)`` (worker reuse): one at a time
  Ray 1/jobs     ``@ray.remote(num_gpus=1/jobs)`` as users write it (a worker process per task)
Prints aggregate throughput (passes/s), fastgpu's ratio to each (target >= 4x num_gpus=1), the readings
fastgpu's node monitor took meanwhile (utilisation split into fastgpu's and outside load, processes),
and which NVML calls work on this machine.

``--no-ray`` exercises the two layers the runtime relies on, without Ray:
* telemetry: ``fastgpu_ray/gpu_sources.NvmlSource`` (loaded by path: no Ray import) sampled every 0.5 s;
* execution: ``--jobs`` small-batch inference subtasks (each ``--iters`` forward passes, batch ``--batch``)
  run three ways on one GPU:
    exclusive  one after another (what ``num_gpus=1`` subtasks get: one per GPU at a time),
    threads    all at once as threads of one process (what fastgpu's GPU worker does today with
               subtasks that share a GPU by ``gpu_memory``),
    processes  all at once, one process each (the alternative worker design, see design-runtime.md).
Prints aggregate throughput (forward passes/s) of each and the ratios to exclusive (target >= 4x).
"""
from __future__ import annotations

import argparse
import importlib.util
import multiprocessing as mp
import os
import statistics
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_gpu_sources():
    sys.path.insert(0, ROOT)  # placement/ (pure Python) for gpu_sources' import of placement.cost
    spec = importlib.util.spec_from_file_location("gpu_sources", os.path.join(ROOT, "fastgpu_ray", "gpu_sources.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_sources"] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


_BUILD = threading.Lock()  # torch's global RNG: build every job's model and input identically


def make_model_and_input(device, batch):
    import torch
    with _BUILD:
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(1024, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 2048),
                                torch.nn.ReLU(), torch.nn.Linear(2048, 10)).eval()
        x = torch.randn(batch, 1024)
    return m.to(device), x.to(device)


def job(device: str, iters: int, batch: int) -> float:
    """One inference subtask; returns a checksum so the work cannot be skipped."""
    import torch
    m, x = make_model_and_input(device, batch)
    acc = 0.0
    with torch.inference_mode():
        for _ in range(iters):
            acc += float(m(x)[0, 0])  # a host sync per pass, as small-batch serving does
    return acc


def _proc(args):
    return job(*args)


class Sampler:
    """Samples NVML every 0.5 s while a mode runs (mean util, peak memory, processes seen)."""

    def __init__(self, source):
        self.source, self.samples, self._stop = source, [], threading.Event()

    def __enter__(self):
        if self.source is not None:
            self.t = threading.Thread(target=self._run, daemon=True)
            self.t.start()
        return self

    def _run(self):
        while not self._stop.wait(0.5):
            self.samples.append(self.source.read()[0])

    def __exit__(self, *exc):
        self._stop.set()

    def summary(self) -> str:
        if not self.samples:
            return "no NVML"
        return (f"util mean {statistics.mean(s.util for s in self.samples):.0%}, "
                f"memory peak {max(s.memory_used_mib for s in self.samples)} MiB, "
                f"processes up to {max(len(s.processes) for s in self.samples)}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8, help="--no-ray only")
    ap.add_argument("--no-ray", action="store_true", help="the layers only (NVML source, threads vs processes)")
    a = ap.parse_args(argv)
    if a.jobs < 1 or a.iters < 1:
        ap.error("--jobs and --iters must be >= 1")
    if not a.no_ray:
        from real_gpu_runtime import run_runtime
        return run_runtime(a.device, a.jobs, a.iters)
    gs = load_gpu_sources()
    nvml = gs.open_nvml()
    source = gs.NvmlSource(nvml) if nvml is not None else None
    if source is not None:
        for r in source.read():
            print(f"GPU {r.index}: {r.model}, {r.memory_used_mib}/{r.memory_total_mib} MiB, util {r.util:.0%}, "
                  f"{len(r.processes)} process(es), {r.temperature_c} C, {r.power_w} W")
    else:
        print("NVML not available: telemetry not measured")
    job(a.device, 5, a.batch)  # warm-up (CUDA context, kernels)
    total = a.jobs * a.iters
    res = {}

    with Sampler(source) as s:
        t0 = time.perf_counter()
        sums = [job(a.device, a.iters, a.batch) for _ in range(a.jobs)]
        res["exclusive (one at a time)"] = (total / (time.perf_counter() - t0), s)

    with Sampler(source) as s:
        out = [None] * a.jobs
        ths = [threading.Thread(target=lambda i=i: out.__setitem__(i, job(a.device, a.iters, a.batch)))
               for i in range(a.jobs)]
        t0 = time.perf_counter()
        for t in ths:
            t.start()
        for t in ths:
            t.join()
        res["threads of one worker (fastgpu today)"] = (total / (time.perf_counter() - t0), s)
        assert all(abs(o - sums[0]) < 1e-3 * max(1.0, abs(sums[0])) for o in out), "results differ"

    with Sampler(source) as s:
        ctx = mp.get_context("spawn")
        with ctx.Pool(a.jobs) as pool:
            pool.map(_proc, [(a.device, 5, a.batch)] * a.jobs)  # warm the processes' CUDA contexts
            t0 = time.perf_counter()
            outp = pool.map(_proc, [(a.device, a.iters, a.batch)] * a.jobs)
            res["one process per subtask"] = (total / (time.perf_counter() - t0), s)
        assert all(abs(o - sums[0]) < 1e-3 * max(1.0, abs(sums[0])) for o in outp), "results differ"

    base = res["exclusive (one at a time)"][0]
    print(f"\n{a.jobs} inference subtasks x {a.iters} passes (batch {a.batch}) on {a.device}")
    print(f"{'way':<40}{'passes/s':>10}{'vs exclusive':>14}  telemetry")
    for name, (rate, s) in res.items():
        print(f"{name:<40}{rate:>10.1f}{rate / base:>13.2f}x  {s.summary()}")
    print("target: packed >= 4x exclusive")
    return 0


if __name__ == "__main__":
    sys.exit(main())
