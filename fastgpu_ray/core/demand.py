"""The one place a subtask's ``placement.Demand`` is built from its options.

The transfer model passed in adds the input-location fields (``input_bytes``, ``input_total``) here.
"""
from __future__ import annotations

from typing import Any

from placement import Demand

from ..options import TaskOptions


def build_demand(subtask_id: str, opts: TaskOptions, *, min_gpu_memory_mib: int = 0, payload: Any = None,
                 context_mib: int = 0, transfer: Any = None) -> Demand:
    """The Demand for one subtask. ``min_gpu_memory_mib`` raises the memory asked for (an out-of-memory
    retry asks for more free memory than the GPU it failed on had). ``context_mib``: what the CUDA context
    of the process it runs in takes, added to a subtask that declares memory (it packs: each packed
    subtask runs in a process of its own, ``fastgpu_ray.core.slots``). ``payload``: the subtask's arguments
    as the dispatcher holds them; ``transfer`` (a ``transfer.runtime_hooks.RuntimeTransfer``, or None)
    locates their large inputs (``input_bytes`` / ``input_total``). Without a payload or a transfer
    model, or with only small by-value arguments, there is no lookup."""
    est = transfer.inputs(payload) if payload is not None and transfer is not None else None
    inputs = est.demand_fields() if est is not None else {}  # (no refs nor large values: no lookup)
    memory = max(opts.gpu_memory_mib, min_gpu_memory_mib)
    return Demand(
        id=subtask_id,
        num_gpus=opts.gpu_count,
        gpu_milli=opts.gpu_milli,
        gpu_memory_mib=memory + context_mib if memory else 0,
        gpu_types=tuple(opts.gpu_types),
        priority=opts.priority,
        work_s=float(opts.work_s),
        **inputs,
    )
