"""The driver's fastgpu session: ``init`` / ``shutdown`` and the handle of this session's dispatcher."""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from placement import registry

from .errors import NotInitializedError
from .gpu_sources import DEFAULT_EMULATED_MEMORY_MIB
from .monitor import NAMESPACE
from .options import parse_memory_mib


@dataclass
class Session:
    id: str
    dispatcher: Any
    started_ray: bool
    policy: str
    sids: dict = field(default_factory=dict)  # ObjectRef hex -> subtask id (for explain)
    fn_refs: dict = field(default_factory=dict)  # function key -> ObjectRef of its cloudpickle


_session: Session | None = None


def init(address: str | None = None, *, policy: str = registry.DEFAULT_POLICY, emulate: bool | None = None,
         emulated_gpu_memory: Any = DEFAULT_EMULATED_MEMORY_MIB * (1 << 20), idle_timeout_s: float = 60.0,
         link_bandwidth: str | float | None = None, **ray_init_kwargs: Any) -> str:
    """Start fastgpu on a Ray cluster; returns the session id.

    ``address``: as ``ray.init`` (None: connect to the running cluster if there is one, else start an
    embedded local Ray). If Ray is already initialised in this process, that connection is used.
    ``policy``: a placement policy name (``placement.names()``). ``emulate``: True forces emulated GPUs,
    None (default) uses NVML where it works. ``emulated_gpu_memory``: memory of each emulated GPU
    ("16GiB"; per GPU with ``fastgpu.set_emulated_gpu``). ``idle_timeout_s``: a GPU worker idle that long
    gives its GPU back to Ray. ``link_bandwidth``: the network bandwidth between nodes that the transfer
    cost uses ("1Gbit", "125MB/s", or bytes/s); default: ``FASTGPU_LINK_BANDWIDTH`` or a measurement.
    """
    global _session
    if _session is not None:
        return _session.id
    registry.policy_class(policy)  # unknown policy -> ValueError naming the valid ones
    mem = parse_memory_mib(emulated_gpu_memory, "emulated_gpu_memory")
    env = {}
    if link_bandwidth is not None:
        from transfer import ENV_VAR, parse_bandwidth

        # Validated here, so a typo fails in the user's process; the dispatcher reads it from its env.
        env[ENV_VAR] = repr(parse_bandwidth(link_bandwidth))
    started = False
    if not ray.is_initialized():
        ray.init(address=address, **ray_init_kwargs)
        started = True
    from .dispatcher import Dispatcher

    sid = uuid.uuid4().hex[:8]
    here = ray.get_runtime_context().get_node_id()
    d = Dispatcher.options(
        name=f"dispatcher-{sid}", namespace=NAMESPACE,
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
        runtime_env={"env_vars": env} if env else None,
    ).remote(sid, policy, idle_timeout_s, mem, bool(emulate))
    ray.get(d.ready.remote())
    _session = Session(sid, d, started, policy)
    return sid


def shutdown(timeout_s: float = 30.0) -> None:
    """Release every GPU fastgpu holds (waits until Ray has them back), stop the dispatcher, and stop Ray
    if ``init`` started it."""
    global _session
    s = _session
    if s is None:
        return
    _session = None
    try:
        before = ray.available_resources().get("GPU", 0.0)
        held = ray.get(s.dispatcher.shutdown.remote(), timeout=timeout_s)
        total = alive_gpu_total()
        target = min(total, before + held)
        deadline = time.monotonic() + min(timeout_s, 10.0)
        while ray.available_resources().get("GPU", 0.0) < target - 1e-6 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        try:
            ray.kill(s.dispatcher, no_restart=True)
        except Exception:
            pass
        if s.started_ray:
            ray.shutdown()


def alive_gpu_total() -> float:
    """GPUs of the live nodes (``ray.cluster_resources`` still counts a node that just died)."""
    return sum(n.get("Resources", {}).get("GPU", 0.0) for n in ray.nodes() if n.get("Alive"))


def current() -> Session:
    if _session is None:
        raise NotInitializedError("fastgpu is not initialised in this process: call fastgpu.init() first")
    return _session


def dispatcher():
    return current().dispatcher


def is_initialized() -> bool:
    return _session is not None
