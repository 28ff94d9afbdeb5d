"""fastgpu and plain Ray work on one cluster: GPUs a fastgpu session holds idle go back to Ray as soon as
plain Ray work waits for a GPU (not after the 60 s idle timeout)."""
from __future__ import annotations

import time

import pytest
import ray

import fastgpu_ray as fastgpu

pytestmark = pytest.mark.cluster


def test_idle_fastgpu_gpus_go_back_when_a_plain_ray_task_waits(ray_cluster):
    total = int(ray.cluster_resources()["GPU"])
    fastgpu.init(emulate=True)  # idle timeout: the default 60 s
    try:
        f = fastgpu.task(work_s=0.3)(lambda i: (time.sleep(0.3), i)[1])
        ray.get([f.remote(i) for i in range(2 * total)], timeout=120)  # claims every GPU
        deadline = time.monotonic() + 30
        while ray.available_resources().get("GPU", 0) > 0:
            assert time.monotonic() < deadline, "fastgpu never held every GPU"
            time.sleep(0.2)

        @ray.remote(num_gpus=1, num_cpus=0)
        def plain():
            return ray.get_gpu_ids()

        t0 = time.monotonic()
        assert len(ray.get(plain.remote(), timeout=30)) == 1
        took = time.monotonic() - t0
    finally:
        fastgpu.shutdown()
    # the idle workers see Ray's pending demand within a telemetry period (1 s) and go back after 0.5 s
    # idle; then the task's worker process starts
    assert took < 10, f"the plain Ray task waited {took:.1f}s for a GPU fastgpu held idle"
