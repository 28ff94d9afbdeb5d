"""fastgpu-ray's placement core: a pure library (Python + numpy; no Ray import).

Request in, plan out::

    from placement import Snapshot, NodeSpec, GpuSpec, Demand, PlacementRequest, schedule
    plan = schedule(PlacementRequest(snapshot, demands), policy="fgd")

The same policies drive the live runtime (``fastgpu_ray``) and the trace simulator (``placement.sim``).
"""
from .model import (GPU_MILLI, Assignment, Candidate, Demand, Explanation, GpuSpec, NodeSpec, Plan,
                    PlacementRequest, Snapshot, Unplaced)
from .policy import Policy
from .registry import DEFAULT_POLICY, UnknownPolicyError, create, names
from .scheduler import Decision, Scheduler, schedule
from .state import ClusterState

__all__ = [
    "GPU_MILLI", "Assignment", "Candidate", "Demand", "Explanation", "GpuSpec", "NodeSpec", "Plan",
    "PlacementRequest", "Snapshot", "Unplaced", "Policy", "DEFAULT_POLICY", "UnknownPolicyError", "create",
    "names", "Decision", "Scheduler", "schedule", "ClusterState",
]
