"""fastgpu-ray: run GPU subtasks on a Ray cluster, placed by live GPU load, packed by GPU memory.

    import fastgpu_ray as fastgpu

    fastgpu.init()

    @fastgpu.task(gpu_memory="2GiB", priority=5)
    def infer(batch): ...

    refs = infer.map(batches)
    results = fastgpu.get(refs, progress=True)
    print(fastgpu.explain(refs[0]).format())
    fastgpu.shutdown()
"""
from .api import RemoteFunction, explain, get, gpu_nodes, set_emulated_gpu, status, task
from .context import emulate_work, gpu_ids, gpu_memory_total_mib
from .errors import (FastgpuError, GpuOutOfMemoryError, NeverFitsError, NotInitializedError,
                     RetriesExhaustedError)
from .options import TaskOptions
from .session import init, is_initialized, shutdown
from .telemetry import cluster_snapshot

__all__ = [
    "init", "shutdown", "is_initialized", "task", "RemoteFunction", "TaskOptions", "get", "explain", "status",
    "cluster_snapshot", "gpu_nodes", "set_emulated_gpu", "emulate_work", "gpu_ids", "gpu_memory_total_mib",
    "FastgpuError", "NeverFitsError", "RetriesExhaustedError", "GpuOutOfMemoryError", "NotInitializedError",
]
