"""fastgpu-ray: run GPU subtasks on a Ray cluster, placed by live GPU load, packed by GPU memory.

    import fastgpu_ray as fastgpu

    fastgpu.init()

    @fastgpu.task(gpu_memory="2GiB", priority=5)
    def infer(batch): ...

    refs = infer.map(batches)
    results = fastgpu.get(refs, progress=True)
    print(fastgpu.explain(refs[0]).format())
    fastgpu.shutdown()

Names are imported on first use, so ``import fastgpu_ray`` (and the ``fastgpu simulate`` CLI, which
needs no Ray) stays cheap and works where Ray is not installed.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "api": ("RemoteFunction", "cancel", "explain", "get", "gpu_nodes", "set_emulated_gpu", "status", "task"),
    "context": ("emulate_work", "gpu_ids", "gpu_memory_total_mib"),
    "errors": ("FastgpuError", "GpuOutOfMemoryError", "NeverFitsError", "NotInitializedError",
               "RetriesExhaustedError"),
    "options": ("TaskOptions",),
    "session": ("cluster_snapshot", "init", "is_initialized", "shutdown"),
    "training": ("train", "get_context", "TrainError", "TrainFnError", "TrainPlacementError", "TrainWorkerDied"),
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)

if TYPE_CHECKING:  # static checkers see the real names and signatures
    from .api import RemoteFunction, cancel, explain, get, gpu_nodes, set_emulated_gpu, status, task
    from .context import emulate_work, gpu_ids, gpu_memory_total_mib
    from .errors import (FastgpuError, GpuOutOfMemoryError, NeverFitsError, NotInitializedError,
                         RetriesExhaustedError)
    from .options import TaskOptions
    from .session import cluster_snapshot, init, is_initialized, shutdown
    from .training import (TrainError, TrainFnError, TrainPlacementError, TrainWorkerDied, get_context,
                           train)


def __getattr__(name: str) -> Any:
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'fastgpu_ray' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
