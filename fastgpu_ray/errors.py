"""Errors fastgpu raises to users, and how an out-of-memory failure is recognised."""
from __future__ import annotations


class FastgpuError(RuntimeError):
    """Base class of fastgpu's own errors."""


class NeverFitsError(FastgpuError, ValueError):
    """No GPU in the cluster could ever hold the subtask (the message names the largest GPU)."""


class RetriesExhaustedError(FastgpuError):
    """The subtask's worker or node died (or it ran out of GPU memory) more often than max_retries."""


class GpuOutOfMemoryError(FastgpuError, MemoryError):
    """Raised by emulated subtasks that use more memory than their emulated GPU has free; recognised like
    ``torch.cuda.OutOfMemoryError`` (fastgpu re-places the subtask on a GPU with more free memory)."""


class NotInitializedError(FastgpuError):
    """fastgpu.init() has not been called in this process."""


_OOM_NAMES = {"OutOfMemoryError", "GpuOutOfMemoryError"}
_OOM_TEXT = ("cuda out of memory", "out of memory", "cuda_error_out_of_memory", "cublas_status_alloc_failed")


def is_gpu_oom(exc: BaseException) -> bool:
    """True for GPU out-of-memory errors: torch's ``OutOfMemoryError``, ours, or a CUDA OOM message."""
    for cls in type(exc).__mro__:
        if cls.__name__ in _OOM_NAMES:
            return True
    text = str(exc).lower()
    return isinstance(exc, (RuntimeError, MemoryError)) and any(t in text for t in _OOM_TEXT)
