"""Reading Ray's autoscaler, and asking it for nodes. Runs in the arbiter, on the head node.

What the autoscaler can launch is read, in order, from:

1. the cluster config the autoscaler publishes in the GCS (autoscaler v2: node groups, their resources
   and ``max_count``);
2. the autoscaling config file of the autoscaler process on this (head) node: the
   ``--autoscaling-config=...`` argument of Ray's ``monitor.py`` (autoscaler v1, ``ray up`` clusters,
   ``ray start --head --autoscaling-config``);
3. ``FASTGPU_AUTOSCALING_CONFIG`` (a path to that file), for autoscalers running outside the head's
   process table (KubeRay's sidecar with autoscaler v1).

An autoscaler runs when its status key in the GCS was written within ``STATUS_FRESH_S`` (v1 writes it
every update) or when the GCS holds a published cluster config (v2). Demand goes to the autoscaler as a
resource request (``ray.autoscaler.sdk.request_resources``): one request per cluster, written by the
arbiter for every fastgpu job together (the last request wins in Ray, so one writer is needed).
"""
from __future__ import annotations

import json
import logging
import os
import time

from ..core.scaling import DEFAULT_NODE_IDLE_S, NodeType, Scaling, parse_idle_timeout, parse_node_types

log = logging.getLogger("fastgpu.autoscaler")

STATUS_FRESH_S = 60.0
ENV_CONFIG = "FASTGPU_AUTOSCALING_CONFIG"


def read_scaling() -> Scaling:
    """One reading of the cluster's autoscaler (never raises: an unreadable part is reported unknown)."""
    status = _status()
    types, source = _types_from_gcs()
    idle = DEFAULT_NODE_IDLE_S
    if types is None and (status or os.environ.get(ENV_CONFIG)):  # (no autoscaler: no file to look for)
        path = os.environ.get(ENV_CONFIG)
        if not path:
            seen, path = _monitor_config_path(_gcs_address())
            if seen and not path:  # Ray's autoscaler process in read-only mode: a cluster of fixed size
                return Scaling(autoscaler=False, types=())
        if path:
            types, source, idle = _types_from_file(path)
    running = bool(status) or types is not None
    if not running:
        return Scaling(autoscaler=False, types=())
    nodes, launching = _counts(status)
    return Scaling(autoscaler=True, types=types, nodes=nodes, launching=launching, source=source,
                   idle_timeout_s=idle)


def request(bundles: list[dict]) -> None:
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=bundles)


# ---------------------------------------------------------------------------------------- sources
def _status() -> dict:
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get

    try:
        raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        st = json.loads(raw) if raw else {}
    except Exception:
        return {}
    if not st or time.time() - float(st.get("time", 0)) > STATUS_FRESH_S:
        return {}
    return st


def _counts(status: dict) -> tuple[dict, dict]:
    rep = status.get("autoscaler_report") or {}
    nodes = {str(k): int(v) for k, v in (rep.get("active_nodes") or {}).items()}
    for k, v in (rep.get("idle_nodes") or {}).items():
        nodes[str(k)] = nodes.get(str(k), 0) + int(v)
    launching = {str(k): int(v) for k, v in (rep.get("pending_launches") or {}).items()}
    for p in rep.get("pending_nodes") or ():  # (ip, type, status): launched, Ray not up on it yet
        if isinstance(p, (list, tuple)) and len(p) >= 2:
            launching[str(p[1])] = launching.get(str(p[1]), 0) + 1
    return nodes, launching


def _types_from_gcs() -> tuple[tuple[NodeType, ...] | None, str]:
    try:
        from ray._private.state import state

        cfg = state.get_cluster_config()
    except Exception:
        return None, ""
    if cfg is None or not cfg.node_group_configs:
        return None, ""
    types = tuple(NodeType(g.name, int(g.resources.get("GPU", 0)), int(g.max_count) if g.max_count >= 0 else 1 << 30,
                           float(g.resources.get("CPU", 0))) for g in cfg.node_group_configs)
    return types, "the cluster config the autoscaler published in the GCS"


def _types_from_file(path: str) -> tuple[tuple[NodeType, ...] | None, str, float]:
    try:
        with open(os.path.expanduser(path)) as f:
            text = f.read()
        try:
            cfg = json.loads(text)
        except ValueError:
            import yaml

            cfg = yaml.safe_load(text)
        return parse_node_types(cfg), f"the autoscaling config {path}", parse_idle_timeout(cfg)
    except Exception as e:
        log.warning("could not read the autoscaling config %s: %s", path, e)
        return None, "", DEFAULT_NODE_IDLE_S


def _gcs_address() -> str:
    import ray

    return ray.get_runtime_context().gcs_address


def _monitor_config_path(gcs_address: str) -> tuple[bool, str | None]:
    """(whether the autoscaler process of this cluster, the one given ``gcs_address``, runs on this node;
    its ``--autoscaling-config``). Found without one: it runs read-only (``ray start --head`` without an
    autoscaling config: the cluster has the nodes it was given)."""
    for _, args in proc_cmdlines():
        if not any(os.path.basename(a) == "monitor.py" for a in args) or f"--gcs-address={gcs_address}" not in args:
            continue
        for i, a in enumerate(args):
            if a.startswith("--autoscaling-config="):
                return True, a.split("=", 1)[1]
            if a == "--autoscaling-config" and i + 1 < len(args):
                return True, args[i + 1]
        return True, None
    return False, None


def proc_cmdlines():
    """(pid, argument list) of every process of this machine that can be read."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                yield int(d), f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
