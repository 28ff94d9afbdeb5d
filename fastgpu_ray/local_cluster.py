"""A local multi-node Ray cluster on one machine (``ray.cluster_utils.Cluster``) with logical GPUs, for
``fastgpu demo``, the examples and the benchmarks on machines without GPUs (fastgpu emulates them)."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalCluster:
    """Head (no GPUs, runs the driver) + ``nodes`` nodes with ``gpus_per_node``
    logical GPUs each (and the custom ``resources``, if any). ``node_ids``: the GPU nodes, in the order
    they were added."""

    nodes: int = 3
    gpus_per_node: int = 2
    cpus_per_node: int = 2
    object_store_mib: int = 100
    resources: dict = field(default_factory=dict)
    cluster: object = None
    node_ids: list = field(default_factory=list)

    def start(self) -> "LocalCluster":
        import ray
        from ray.cluster_utils import Cluster

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private throwaway cluster
        store = self.object_store_mib * 2**20
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "num_gpus": 0, "include_dashboard": False, "object_store_memory": store,
            "gcs_server_port": _free_port(), "dashboard_agent_listen_port": _free_port(),
            "_system_config": {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000,
                               "health_check_failure_threshold": 3}})
        for _ in range(self.nodes):
            n = self.cluster.add_node(num_cpus=self.cpus_per_node, num_gpus=self.gpus_per_node,
                                      object_store_memory=store, dashboard_agent_listen_port=_free_port(),
                                      resources=dict(self.resources))
            self.node_ids.append(n.node_id)
        self.cluster.wait_for_nodes()
        ray.init(address=self.cluster.address, log_to_driver=False)
        return self

    def stop(self) -> None:
        import ray
        if ray.is_initialized():
            ray.shutdown()
        if self.cluster is not None:
            self.cluster.shutdown()
            self.cluster = None

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def has_real_gpus() -> bool:
    """True when NVML sees at least one GPU on this machine."""
    from .gpu_sources import open_nvml
    return open_nvml() is not None
