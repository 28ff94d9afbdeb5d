"""A local multi-node Ray cluster with logical (emulated) GPUs for the benchmark scripts."""
from __future__ import annotations

import os
import socket

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(nodes: int = 3, gpus_per_node: int = 2, cpus_per_node: int = 2):
    """Head (0 GPUs) + ``nodes`` worker nodes; the driver is connected. Returns the Cluster."""
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "num_gpus": 0, "include_dashboard": False, "object_store_memory": 100 * 2**20,
        "gcs_server_port": _free_port(), "dashboard_agent_listen_port": _free_port()})
    for _ in range(nodes):
        c.add_node(num_cpus=cpus_per_node, num_gpus=gpus_per_node, object_store_memory=100 * 2**20,
                   dashboard_agent_listen_port=_free_port())
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    return c


def stop(c) -> None:
    import ray
    ray.shutdown()
    c.shutdown()
