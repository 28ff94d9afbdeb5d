"""A Ray cluster on the namespaced hosts: head on host 0 (no GPUs), workers on hosts 1.. (logical GPUs).

    with NetnsHosts(4) as hosts:
        address = start_ray(hosts, worker_gpus=2)
        hosts.run(0, [python, driver.py, "--address", address])   # the driver lives on the head host

Each host gets its own ``--temp-dir`` (they share /dev/shm and the CPUs). Token auth is turned off for
this private cluster (``RAY_AUTH_MODE=disabled``). Nothing here ever runs ``ray stop`` (it would stop every
Ray on the machine): ``NetnsHosts.down`` ends the Ray processes by the pids in our namespaces.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from .hosts import NetnsHosts

PORT = 6379


def temp_root(hosts: NetnsHosts) -> Path:
    """Where the hosts' Ray sessions write (logs, sockets); ``remove_temp`` deletes it after teardown."""
    return Path(f"/tmp/fgray{hosts.tag}")  # short: Ray's socket paths have a length limit


def remove_temp(hosts: NetnsHosts) -> None:
    shutil.rmtree(temp_root(hosts), ignore_errors=True)


def ray_env() -> dict[str, str]:
    env = dict(os.environ)
    env["RAY_AUTH_MODE"] = "disabled"
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return env


def _ray_cli() -> str:
    return str(Path(sys.executable).with_name("ray")) if Path(sys.executable).with_name("ray").exists() else "ray"


def start_ray(hosts: NetnsHosts, worker_gpus: int = 2, worker_cpus: int = 4, head_cpus: int = 2,
              object_store_mib: int = 1024, timeout_s: float = 90.0) -> str:
    """Start the cluster and wait until every worker node has joined. Returns the GCS address."""
    root = temp_root(hosts)
    shutil.rmtree(root, ignore_errors=True)
    env, ray = ray_env(), _ray_cli()
    head = hosts.addrs[0]
    common = ["--disable-usage-stats", f"--object-store-memory={object_store_mib * 2**20}"]
    hosts.run(0, [ray, "start", "--head", f"--node-ip-address={head}", f"--port={PORT}",
                  "--include-dashboard=false", f"--temp-dir={root}/h0", f"--num-cpus={head_cpus}",
                  "--num-gpus=0", *common], env=env, check=True, capture_output=True, timeout=timeout_s)
    for i in range(1, hosts.n):
        hosts.run(i, [ray, "start", f"--address={head}:{PORT}", f"--node-ip-address={hosts.addrs[i]}",
                      f"--num-cpus={worker_cpus}", f"--num-gpus={worker_gpus}", *common],
                  env=env, check=True, capture_output=True, timeout=timeout_s)
    _wait_nodes(hosts, hosts.n, timeout_s)
    return f"{head}:{PORT}"


def _wait_nodes(hosts: NetnsHosts, n: int, timeout_s: float) -> None:
    code = ("import ray, sys\n"
            f"ray.init(address='{hosts.addrs[0]}:{PORT}', _node_ip_address='{hosts.addrs[0]}', "
            "logging_level='ERROR')\n"
            "print(sum(1 for x in ray.nodes() if x['Alive']))\n")
    end = time.time() + timeout_s
    alive = 0
    while time.time() < end:
        res = hosts.run(0, [sys.executable, "-c", code], env=ray_env(), capture_output=True, text=True,
                        timeout=timeout_s)
        lines = res.stdout.split()
        alive = int(lines[-1]) if res.returncode == 0 and lines else 0
        if alive >= n:
            return
        time.sleep(1)
    raise RuntimeError(f"only {alive} of {n} Ray nodes joined within {timeout_s}s")


def run_driver_on_head(hosts: NetnsHosts, script: Path, argv: list[str], timeout_s: float) -> None:
    """Run ``script --inside ADDRESS --node-ip HEAD --veths h=v,... ARGV`` inside the head's namespace (the
    driver lives on the head host), with the project on its path. Raises if it fails."""
    root = Path(__file__).resolve().parents[2]
    address = start_ray(hosts, worker_gpus=2, worker_cpus=4)
    print(f"netns hosts {hosts.addrs} up; Ray at {address}", flush=True)
    cmd = [sys.executable, str(script), "--inside", address, "--node-ip", hosts.addrs[0],
           "--veths", ",".join(f"{h}={v}" for h, v in zip(hosts.hosts, hosts.veths)), *argv]
    env = ray_env()
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    res = hosts.run(0, cmd, env=env, timeout=timeout_s)
    if res.returncode != 0:
        raise SystemExit(f"the driver inside the head namespace failed ({res.returncode})")


def link_counters(veths_arg: str):
    """A function returning {host: {"up": bytes, "down": bytes}} for ``--veths h=v,...`` (read from
    ``/proc/1/net/dev``: the root namespace's devices, where the veths are; PID 1 lives there)."""
    veths = dict(kv.split("=") for kv in veths_arg.split(","))

    def counters():
        stats = {}
        for line in Path("/proc/1/net/dev").read_text().splitlines()[2:]:
            name, data = line.split(":", 1)
            f = data.split()
            stats[name.strip()] = (int(f[0]), int(f[8]))
        return {h: {"up": stats[v][0], "down": stats[v][1]} for h, v in veths.items()}

    return counters


def run_on_netns_hosts(script: Path, argv: list[str], rate: str, timeout_s: float, name: str):
    """Four netns hosts on ``rate`` links, Ray on them, ``script --inside ... ARGV --json OUT`` as the
    driver on the head; everything torn down after. Returns what the driver wrote to OUT (JSON)."""
    import json

    out = Path(f"/tmp/fastgpu-{name}-{os.getpid()}.json")
    hosts = NetnsHosts(4, rate=rate)
    try:
        with hosts:
            run_driver_on_head(hosts, script, [*argv, "--json", str(out)], timeout_s)
    finally:
        hosts.down()
        remove_temp(hosts)
    data = json.loads(out.read_text())
    out.unlink()
    return data
