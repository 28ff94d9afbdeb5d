"""``TaskOptions``: everything ``@fastgpu.task(...)`` accepts, validated when the decorator runs.

Bad arguments raise ``ValueError`` naming the argument and the bad value, at decoration time, so a typo
never reaches the cluster.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
from dataclasses import dataclass
from typing import Any, Callable

from placement import GPU_MILLI

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
          "t": 1000**4, "tb": 1000**4, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}
_MEM_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")
MIB = 1024**2


def parse_memory_mib(value: Any, name: str = "gpu_memory") -> int:
    """``"10GiB"``, ``"512MiB"``, ``"1.5GB"`` or an int number of bytes (as Ray's ``memory=``) -> MiB,
    rounded up. ``None``/0 -> 0 (memory not declared)."""
    if value is None:
        return 0
    if isinstance(value, bool):
        raise ValueError(f"{name}={value!r}: expected bytes (int) or a string like '10GiB' or '512MiB'")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name}={value!r}: must be a non-negative number of bytes or a string like '10GiB'")
        return math.ceil(value / MIB)
    if isinstance(value, str):
        m = _MEM_RE.match(value)
        unit = m.group(2).lower() if m else None
        if not m or unit not in _UNITS:
            raise ValueError(f"{name}={value!r} is not a memory size; write e.g. '10GiB', '512MiB', '2GB' "
                             "or an int number of bytes")
        return math.ceil(float(m.group(1)) * _UNITS[unit] / MIB)
    raise ValueError(f"{name}={value!r}: expected bytes (int) or a string like '10GiB', got {type(value).__name__}")


@dataclass(frozen=True)
class TaskOptions:
    """Validated options of one fastgpu task.

    ``num_gpus``: GPUs per subtask; a fraction below 1 is a share of one GPU (0.25 = a quarter), above 1
    it must be whole. ``gpu_memory``: GPU memory per GPU the subtask needs (MiB after parsing); a
    subtask that declares memory *shares* its GPU with other subtasks while the memory fits.
    ``priority``: higher runs first. ``max_retries``: re-placements after a worker/node death or an
    out-of-memory error. ``work_s``: estimated seconds on an idle GPU (placement's compute term and
    ``fastgpu.emulate_work()``'s default). ``gpu_util``: the utilisation (0..1) it puts on its GPU while
    it runs, where known: placement counts it against GPUs it shares before the next live reading, and
    emulated work uses it. ``num_cpus``: CPUs a subtask uses, declared to Ray for each slot process that
    runs a packed subtask (default 1, as a Ray task; the GPU's first slot is its lease process, which
    declares none, like a Ray actor). ``split``/``combine``: decomposition for ``f.run(x)``.
    """

    num_gpus: float = 1
    gpu_memory_mib: int = 0
    priority: int = 0
    max_retries: int = 3
    work_s: float = 0.0
    gpu_util: float = 0.0
    gpu_types: tuple[str, ...] = ()
    num_cpus: float = 1
    split: Callable[[Any], Any] | None = None
    combine: Callable[[list], Any] | None = None
    batch: bool = True  # may be sent to a worker together with other small queued subtasks

    @functools.cached_property  # (read several times per subtask per round: keys, demands, play-outs)
    def gpu_milli(self) -> int:
        """Per-GPU share in milli for the placement Demand. A subtask that shares by memory takes the
        smallest share (1 milli) so that a GPU held whole by another subtask (no share left) rejects it."""
        if self.num_gpus < 1:
            return int(round(self.num_gpus * GPU_MILLI))
        return 1 if self.gpu_memory_mib and self.num_gpus == 1 else GPU_MILLI

    @functools.cached_property
    def gpu_count(self) -> int:
        return max(1, int(self.num_gpus))


_FIELDS = {f.name for f in dataclasses.fields(TaskOptions)} | {"gpu_memory"}


def make_options(base: TaskOptions | None = None, **kw: Any) -> TaskOptions:
    """Validate keyword options (as the user wrote them) and merge them over ``base``."""
    unknown = sorted(set(kw) - _FIELDS - {"gpu_memory_mib"})
    if unknown:
        valid = sorted(_FIELDS - {"gpu_memory_mib"})
        raise ValueError(f"unknown fastgpu.task option(s) {unknown}; valid options: {valid}")
    vals = dataclasses.asdict(base) if base else {}
    if base:  # asdict deep-copies callables fine, but keep the originals
        vals["split"], vals["combine"] = base.split, base.combine
    if "gpu_memory" in kw:
        vals["gpu_memory_mib"] = parse_memory_mib(kw.pop("gpu_memory"))
    vals.update(kw)
    opts = TaskOptions(**vals)
    _validate(opts)
    return opts


def is_number(v: Any) -> bool:
    """A finite int or float (not a bool): what numeric options and ``job_weight`` must be."""
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def _validate(o: TaskOptions) -> None:
    n = o.num_gpus
    if not is_number(n):
        raise ValueError(f"num_gpus={n!r}: must be a number of GPUs (e.g. 1, 0.25, 2)")
    if n <= 0:
        raise ValueError(f"num_gpus={n!r}: must be > 0 (fastgpu runs GPU subtasks; use @ray.remote for "
                         "CPU-only work)")
    if n > 1 and n != int(n):
        raise ValueError(f"num_gpus={n!r}: above 1 it must be a whole number of GPUs")
    if n < 1 and round(n * GPU_MILLI) < 1:
        raise ValueError(f"num_gpus={n!r}: the smallest share is {1 / GPU_MILLI} GPU")
    m = o.gpu_memory_mib
    if isinstance(m, bool) or not isinstance(m, int) or m < 0:
        raise ValueError(f"gpu_memory_mib={m!r}: must be a whole number of MiB >= 0 (or pass gpu_memory=\"8GiB\")")
    if not isinstance(o.priority, int) or isinstance(o.priority, bool):
        raise ValueError(f"priority={o.priority!r}: must be an int (higher runs first)")
    if not isinstance(o.max_retries, int) or isinstance(o.max_retries, bool) or o.max_retries < 0:
        raise ValueError(f"max_retries={o.max_retries!r}: must be an int >= 0")
    if isinstance(o.work_s, bool) or not isinstance(o.work_s, (int, float)) or not (o.work_s >= 0) \
            or not math.isfinite(o.work_s):
        raise ValueError(f"work_s={o.work_s!r}: must be a number of seconds >= 0")
    if isinstance(o.gpu_util, bool) or not isinstance(o.gpu_util, (int, float)) or not 0 <= o.gpu_util <= 1:
        raise ValueError(f"gpu_util={o.gpu_util!r}: must be a utilisation between 0 and 1")
    if not is_number(o.num_cpus) or o.num_cpus < 0:
        raise ValueError(f"num_cpus={o.num_cpus!r}: must be a number of CPUs >= 0 (declared to Ray for the "
                         "process a packed subtask runs in)")
    if isinstance(o.gpu_types, str) or not all(isinstance(t, str) for t in o.gpu_types):
        raise ValueError(f"gpu_types={o.gpu_types!r}: must be a tuple of GPU model names")
    for name in ("split", "combine"):
        f = getattr(o, name)
        if f is not None and not callable(f):
            raise ValueError(f"{name}={f!r}: must be callable")
    if (o.split is None) != (o.combine is None):
        raise ValueError("split= and combine= go together: give both or neither")
