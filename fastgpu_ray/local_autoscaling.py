"""A local autoscaling Ray cluster on one machine (Ray's fake multi-node provider), for the autoscaling
tests and ``benchmarks/autoscale.py``.

Why not ``ray.cluster_utils.AutoscalingCluster`` as is: it reads a defaults file that the Ray 2.60 wheel
does not ship (``autoscaler/_private/fake_multi_node/example.yaml``), and it runs ``ray stop --force``,
which stops every Ray process on the machine. This builds the whole config itself (nothing is written into
the Ray installation), starts the head on a free port, and stops only the processes of this cluster (those
whose command line names its GCS address or its temp dir).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

from .local_cluster import _free_port

# What the fake provider needs besides the node types (the content of the missing example.yaml).
BASE_CONFIG = {
    "cluster_name": "fastgpu-fake-autoscaling",
    "max_workers": 8,
    "upscaling_speed": 1.0,
    "idle_timeout_minutes": 1.0,
    "docker": {},
    "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                 "disable_launch_config_check": True},
    "auth": {"ssh_user": "ubuntu"},
    "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
    "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
    "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
    "worker_start_ray_commands": [],
    "head_node_type": "ray.head.default",
}


def gpu_node_type(gpus: int, cpus: int = 2, min_workers: int = 0, max_workers: int = 2) -> dict:
    """One node type of the fake provider: ``gpus`` logical GPUs per node."""
    return {"resources": {"CPU": cpus, "GPU": gpus, "object_store_memory": 100 * 2**20},
            "node_config": {}, "min_workers": min_workers, "max_workers": max_workers}


@dataclass
class LocalAutoscalingCluster:
    """A head with ``head_cpus`` CPUs and no GPUs, plus ``node_types`` the fake autoscaler launches
    (name -> ``gpu_node_type(...)``); ``idle_timeout_s``: the autoscaler removes a node idle that long."""

    node_types: dict
    head_cpus: int = 1
    idle_timeout_s: float = 10.0
    port: int = 0
    temp_dir: str = ""
    _config_path: str = ""
    env: dict = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def config(self) -> dict:
        cfg = json.loads(json.dumps(BASE_CONFIG))
        cfg["available_node_types"] = dict(self.node_types)
        cfg["available_node_types"]["ray.head.default"] = {"resources": {"CPU": self.head_cpus},
                                                           "node_config": {}, "max_workers": 0}
        cfg["max_workers"] = sum(t.get("max_workers", 0) for t in self.node_types.values())
        cfg["idle_timeout_minutes"] = self.idle_timeout_s / 60.0
        cfg["provider"]["gcs_address"] = self.address
        return cfg

    def start(self) -> "LocalAutoscalingCluster":
        self.port = self.port or _free_port()
        self.temp_dir = tempfile.mkdtemp(prefix="fgas-", dir="/tmp")
        fd, self._config_path = tempfile.mkstemp(suffix=".json", prefix="fastgpu-autoscaling-")
        with os.fdopen(fd, "w") as f:
            json.dump(self.config(), f)
        env = dict(os.environ, AUTOSCALER_UPDATE_INTERVAL_S="1", RAY_FAKE_CLUSTER="1",
                   RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", "disabled"), **self.env)
        cmd = ["ray", "start", "--head", f"--port={self.port}", f"--num-cpus={self.head_cpus}", "--num-gpus=0",
               f"--autoscaling-config={self._config_path}", "--include-dashboard=false",
               f"--temp-dir={self.temp_dir}", "--node-ip-address=127.0.0.1",
               "--object-store-memory=100000000", f"--dashboard-agent-listen-port={_free_port()}"]
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return self

    def stop(self) -> None:
        """Kill this cluster's processes only (head, autoscaler, launched nodes and their workers)."""
        marks = [self.address, f"--gcs_server_port={self.port}", self.temp_dir]
        for _ in range(3):
            pids = [p for p in _pids_matching([m for m in marks if m]) if p != os.getpid()]
            if not pids:
                break
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        if self._config_path:
            try:
                os.unlink(self._config_path)
            except OSError:
                pass
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> "LocalAutoscalingCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _pids_matching(marks: list[str]) -> list[int]:
    from .actors.autoscaler import proc_cmdlines

    return [pid for pid, args in proc_cmdlines() if any(m in " ".join(args) for m in marks)]
