"""``fastgpu.init()`` with no cluster to join starts an embedded local Ray (logical GPUs, emulated), and
``fastgpu.shutdown()`` stops it again. Runs in a subprocess: it must own its Ray instance."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.cluster

SCRIPT = textwrap.dedent('''
    import ray, fastgpu_ray as fastgpu

    # address="local": never join another cluster running on this machine (address=None would)
    fastgpu.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, emulated_gpu_memory="8GiB")

    @fastgpu.task(gpu_memory="1GiB")
    def f(x):
        return x * 2, fastgpu.gpu_ids()

    out = ray.get(f.map(range(8)))
    assert [v for v, _ in out] == [x * 2 for x in range(8)], out
    assert all(g[0] in (0, 1) for _, g in out), out
    st = fastgpu.status()
    assert [g.memory_total_mib for g in st.gpus] == [8192, 8192] and st.emulated
    fastgpu.shutdown()
    assert not ray.is_initialized()  # fastgpu started this Ray, so it stopped it

    # ray.shutdown() without fastgpu.shutdown(): the session's housekeeping stops quietly (it must not
    # start a Ray of its own), and the next fastgpu.init() starts a new session instead of the dead one
    import time
    first = fastgpu.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False)
    ray.get(f.remote(1))
    ray.shutdown()
    time.sleep(1.5)
    assert not ray.is_initialized()
    second = fastgpu.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False)
    assert second != first and ray.get(f.remote(2))[0] == 4
    fastgpu.shutdown()
    print("EMBEDDED-OK")
''')


def test_init_starts_and_shutdown_stops_an_embedded_ray():
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=240, env=env)
    assert "EMBEDDED-OK" in out.stdout, out.stdout[-2000:] + out.stderr[-3000:]
