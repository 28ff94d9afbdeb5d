"""Shared fixtures. ``ray_cluster``: a real multi-node ``ray.cluster_utils.Cluster`` (head with 0 GPUs +
worker nodes with logical GPUs), one per test module, shut down after it. Tests that need a fresh driver
connection use ``ray_cluster.connect()``; the fixture never touches clusters it did not start."""
from __future__ import annotations

import os
import socket

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # test clusters: no token auth
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """A started Cluster plus the ids of its GPU nodes (in the order they were added)."""

    def __init__(self, gpu_nodes: int = 3, gpus_per_node: int = 2, cpus_per_node: int = 1) -> None:
        from ray.cluster_utils import Cluster

        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "num_gpus": 0, "include_dashboard": False, "object_store_memory": 80 * 2**20,
            "gcs_server_port": _free_port(), "dashboard_agent_listen_port": _free_port(),
            # a killed node is declared dead within ~3 s (default: ~30 s)
            "_system_config": {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000,
                               "health_check_failure_threshold": 3},
        })
        self.nodes = []
        for _ in range(gpu_nodes):
            self.add_node(gpus_per_node, cpus_per_node)
        self.cluster.wait_for_nodes()

    def add_node(self, gpus: int, cpus: int = 1):
        n = self.cluster.add_node(num_cpus=cpus, num_gpus=gpus, object_store_memory=80 * 2**20,
                                  dashboard_agent_listen_port=_free_port())
        self.nodes.append(n)
        return n

    @property
    def address(self) -> str:
        return self.cluster.address

    def node_ids(self) -> list[str]:
        return [n.node_id for n in self.nodes]

    def connect(self):
        import ray
        if not ray.is_initialized():
            ray.init(address=self.address, log_to_driver=False)

    def shutdown(self) -> None:
        import ray
        if ray.is_initialized():
            ray.shutdown()
        self.cluster.shutdown()


@pytest.fixture(scope="module")
def ray_cluster():
    """Head (0 GPUs) + 3 nodes x 2 logical GPUs; the driver is connected. Module-scoped."""
    c = LocalCluster()
    c.connect()
    yield c
    c.shutdown()
