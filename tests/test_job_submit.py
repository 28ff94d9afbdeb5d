"""examples/cluster_job.py submitted as a Ray job to a real head node (`ray start --head`, dashboard on).

The head is started by this test alone: its own free ports, its own --temp-dir, token auth off, and
``--block`` in a new session so that stopping it means signalling the process group this test started
(never `ray stop`, which would stop every Ray on the machine).
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

ray = pytest.importorskip("ray")

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen) -> None:
    import urllib.request
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited early with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s")


@pytest.fixture(scope="module")
def head():
    """A one-node head with 2 CPUs and 2 logical GPUs; yields (dashboard/job server URL, GCS address)."""
    gcs, dash, agent, agent_grpc, client, metrics, rt_env, nm, om = free_ports(9)
    temp = tempfile.mkdtemp(prefix="fgjob")  # short: Ray's unix socket paths must stay < 108 chars
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    cmd = [shutil.which("ray") or "ray", "start", "--head", "--block", f"--port={gcs}", "--num-cpus=2", "--num-gpus=2",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
           f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
           f"--ray-client-server-port={client}", f"--metrics-export-port={metrics}",
           f"--runtime-env-agent-port={rt_env}", f"--node-manager-port={nm}", f"--object-manager-port={om}",
           f"--temp-dir={temp}", "--disable-usage-stats"]
    log = open(os.path.join(temp, "ray_start.log"), "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        wait_http(url + "/api/version", 90, proc)
        yield url, f"127.0.0.1:{gcs}"
    finally:
        stop_head(proc)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def stop_head(proc: subprocess.Popen) -> None:
    """SIGTERM to `ray start --block` (it then stops its Ray processes), SIGKILL the group if needed."""
    pgid = os.getpgid(proc.pid)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(pgid, signal.SIGKILL)  # anything of this head left in the session we created
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


def job_dir() -> str:
    """The job's working dir: the examples (fastgpu-ray itself is installed on the cluster, as the
    cluster_configs' setup_commands install it)."""
    d = tempfile.mkdtemp(prefix="fgjobwd")
    shutil.copytree(ROOT / "examples", pathlib.Path(d) / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    return d


def parse_result(output: str) -> dict:
    line = next(ln for ln in output.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_cluster_job_runs_under_ray_job_submit(head):
    from ray.job_submission import JobStatus, JobSubmissionClient
    client = JobSubmissionClient(head[0])
    wd = job_dir()
    try:
        job = client.submit_job(entrypoint=f"{sys.executable} examples/cluster_job.py --workers 2 --n 100000",
                                runtime_env={"working_dir": wd, "env_vars": {"RAY_AUTH_MODE": "disabled"}})
        end, status = time.monotonic() + 180, None
        while time.monotonic() < end:
            status = client.get_job_status(job)
            if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
                break
            time.sleep(1)
        logs = client.get_job_logs(job)
        if status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            client.stop_job(job)
        assert status == JobStatus.SUCCEEDED, f"job {job} ended {status}; logs:\n{logs[-3000:]}"
    finally:
        shutil.rmtree(wd, ignore_errors=True)
    result = parse_result(logs)
    assert result["ok"] and result["total"] == 100000 * 99999 // 2
    assert result["world_size"] == 2 and result["gpus"] == 2 and result["nodes"] == 1
    assert "connected via" in logs and "rank 1: node" in logs
    assert len(result["ranks_nodes"]) == 2
    assert result["snapshot_source"] == "fastgpu live telemetry"


def test_cluster_job_runs_as_a_plain_driver_on_the_head(head):
    """What `ray submit` does after copying the file: `python cluster_job.py` on the head node. The test
    points it at this head explicitly (RAY_ADDRESS) because "auto" would pick whichever Ray on this
    shared machine started last."""
    env = {**os.environ, "RAY_ADDRESS": head[1], "RAY_AUTH_MODE": "disabled"}
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "cluster_job.py"), "--workers", "2", "--n", "1000"],
                       env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    result = parse_result(r.stdout)
    assert result["ok"] and result["total"] == 1000 * 999 // 2 and result["world_size"] == 2
