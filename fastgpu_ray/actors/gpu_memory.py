"""Inside a slot process: cap a subtask's CUDA memory at what it declared, and name what it used on OOM.

What is enforced (docs/design-runtime.md, "Slots"): where torch is already imported in the slot process
(the subtask's function imports it) and CUDA works, the slot runs one subtask at a time and caps torch's
caching allocator at the subtask's declared ``gpu_memory`` with ``torch.cuda.set_per_process_memory_fraction``;
a subtask that goes over gets torch's OOM, reported as ``GpuOutOfMemoryError`` naming declared and used
memory (torch's peak reserved bytes). Not enforced: memory allocated outside torch's allocator (CuPy, JAX,
raw CUDA, the CUDA context itself) and any subtask in a process without torch. ``torch`` is never imported
here: importing it costs seconds and a CUDA context, and a subtask that does not use it needs neither.
"""
from __future__ import annotations

import sys
from typing import Any

from ..errors import GpuOutOfMemoryError

MIB = 1 << 20


def _cuda_torch(torch: Any = None) -> Any | None:
    torch = torch if torch is not None else sys.modules.get("torch")
    try:
        return torch if torch is not None and torch.cuda.is_available() else None
    except Exception:  # a broken CUDA install: nothing to cap
        return None


def cap(declared_mib: int, torch: Any = None) -> bool:
    """Cap torch's allocator on this process's first visible GPU at ``declared_mib`` (0: lift the cap).
    Returns whether a cap is in force. ``torch``: a torch-like module (tests), default the imported one."""
    t = _cuda_torch(torch)
    if t is None:
        return False
    total = t.cuda.get_device_properties(0).total_memory
    frac = 1.0 if not declared_mib else min(1.0, declared_mib * MIB / total)
    t.cuda.set_per_process_memory_fraction(frac, 0)
    t.cuda.reset_peak_memory_stats(0)
    return bool(declared_mib) and frac < 1.0


def peak_mib(torch: Any = None) -> int | None:
    """Peak memory torch's allocator reserved on the first visible GPU since the last ``cap``; None without
    CUDA torch."""
    t = _cuda_torch(torch)
    if t is None:
        return None
    try:
        return int(t.cuda.max_memory_reserved(0) // MIB)
    except Exception:
        return None


def release_cache(torch: Any = None) -> None:
    """Give torch's cached GPU blocks back to the driver (an idle slot holds none for its next subtask's
    neighbours); nothing where CUDA was never initialised in this process."""
    t = torch if torch is not None else sys.modules.get("torch")
    try:
        if t is not None and t.cuda.is_initialized():
            t.cuda.empty_cache()
    except Exception:
        pass


def over_declaration(sid: str, declared_mib: int, exc: BaseException, torch: Any = None,
                     capped: bool = False) -> GpuOutOfMemoryError:
    """The error a subtask that ran out of GPU memory fails with: what it declared, what it used.
    ``capped``: torch's allocator was capped at the declaration (it went over what it declared; the GPU
    may have had room) rather than the GPU being full."""
    used = peak_mib(torch)
    used_s = f"{used} MiB (torch's peak reserved)" if used is not None else "unknown (no CUDA torch in the slot)"
    declared_s = f"{declared_mib} MiB" if declared_mib else "nothing (it holds its GPU whole)"
    err = GpuOutOfMemoryError(
        f"subtask {sid} ran out of GPU memory: declared {declared_s}, used {used_s}: {type(exc).__name__}: "
        f"{exc}. fastgpu retries it asking for more memory while max_retries allows; declare a larger "
        "gpu_memory= to place it right the first time")
    err.declared_mib, err.used_mib, err.capped = declared_mib, used, capped
    return err
