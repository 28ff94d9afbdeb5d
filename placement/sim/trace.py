"""Loading and checking trace CSVs (the openb format of the FGD paper's simulator).

Every problem is reported as ``TraceError`` naming the file, the line and the field, so a user can fix
the input; nothing is silently skipped.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..model import GPU_MILLI, Demand

TRACE_DIR = Path(__file__).resolve().parent.parent / "traces" / "openb"
TRACES = ("default", "cpu050", "cpu100", "gpushare40", "gpushare80", "gpuspec10", "gpuspec25",
          "multigpu20", "multigpu40")
NODE_COLUMNS = ("sn", "cpu_milli", "memory_mib", "gpu", "model")
POD_COLUMNS = ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli")


class TraceError(ValueError):
    """A trace file that cannot be used: names the file, line and field."""


@dataclass(frozen=True)
class Nodes:
    names: list[str]
    cpu: np.ndarray
    mem: np.ndarray
    gpus: np.ndarray
    models: list[str]

    @property
    def capacity_milli(self) -> int:
        return int(self.gpus.sum()) * GPU_MILLI


@dataclass(frozen=True)
class Pods:
    names: list[str]
    demands: list[Demand]

    def __len__(self) -> int:
        return len(self.demands)


def trace_paths(name: str) -> tuple[Path, Path]:
    """The project's copy of an openb trace: (nodes CSV, pods CSV)."""
    if name not in TRACES:
        raise TraceError(f"unknown trace {name!r}; the project keeps: {', '.join(TRACES)}")
    return TRACE_DIR / "openb_node_list_gpu_node.csv", TRACE_DIR / f"openb_pod_list_{name}.csv"


def csv_rows(path: Path, required: tuple[str, ...]):
    """(line number, row dict) of a CSV with these columns; TraceError naming file and line otherwise."""
    try:
        f = open(path, newline="")
    except OSError as e:
        raise TraceError(f"{path}: cannot open: {e.strerror}") from None
    with f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise TraceError(f"{path}: empty file, expected a header with {', '.join(required)}")
        header = [h.strip() for h in header]
        missing = [c for c in required if c not in header]
        if missing:
            raise TraceError(f"{path}:1: missing column(s) {', '.join(missing)} (header: {', '.join(header)})")
        for row in reader:
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise TraceError(f"{path}:{line}: expected {len(header)} fields, got {len(row)} (truncated or "
                                 "malformed row)")
            yield line, dict(zip(header, (c.strip() for c in row)))


def _int(path: Path, line: int, row: dict, field: str, minimum: int = 0) -> int:
    raw = row[field]
    try:
        v = int(float(raw)) if raw not in ("",) else None
    except ValueError:
        v = None
    if v is None:
        raise TraceError(f"{path}:{line}: field {field!r}: expected a number, got {raw!r}")
    if v < minimum:
        raise TraceError(f"{path}:{line}: field {field!r}: must be >= {minimum}, got {v}")
    return v


def load_nodes(path: str | Path) -> Nodes:
    path = Path(path)
    names, cpu, mem, gpus, models = [], [], [], [], []
    for line, row in csv_rows(path, NODE_COLUMNS):
        if not row["sn"]:
            raise TraceError(f"{path}:{line}: field 'sn': empty node name")
        if not row["model"] and _int(path, line, row, "gpu") > 0:
            raise TraceError(f"{path}:{line}: field 'model': empty GPU model on a node with GPUs")
        names.append(row["sn"])
        cpu.append(_int(path, line, row, "cpu_milli"))
        mem.append(_int(path, line, row, "memory_mib"))
        gpus.append(_int(path, line, row, "gpu"))
        models.append(row["model"] or "none")
    if not names:
        raise TraceError(f"{path}: no nodes")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise TraceError(f"{path}: node name {dup!r} appears more than once")
    order = sorted(range(len(names)), key=names.__getitem__)  # the protocol sorts nodes by name
    pick = lambda xs: [xs[i] for i in order]  # noqa: E731
    return Nodes(pick(names), np.array(pick(cpu), np.int64), np.array(pick(mem), np.int64),
                 np.array(pick(gpus), np.int64), pick(models))


def pod_demand(path: Path, line: int, row: dict, known_models: set[str] | None = None) -> Demand:
    """One pod row as a demand, with the protocol's rules: a CPU-only pod has no GPU share or type,
    ``gpu_milli`` above 1000 is clamped to 1000."""
    name = row["name"]
    if not name:
        raise TraceError(f"{path}:{line}: field 'name': empty pod name")
    cpu = _int(path, line, row, "cpu_milli")
    mem = _int(path, line, row, "memory_mib")
    ng = _int(path, line, row, "num_gpu")
    gm = _int(path, line, row, "gpu_milli")
    types: tuple[str, ...] = ()
    if ng > 0:
        if gm == 0:
            raise TraceError(f"{path}:{line}: field 'gpu_milli': a pod with num_gpu={ng} needs a share > 0")
        gm = min(gm, GPU_MILLI)
        if ng > 1 and gm != GPU_MILLI:
            raise TraceError(f"{path}:{line}: field 'gpu_milli': {ng} GPUs must each be whole (1000), got {gm}")
        types = tuple(p for p in row.get("gpu_spec", "").split("|") if p and p.lower() != "nan")
        if known_models is not None:
            bad = [t for t in types if t not in known_models]
            if bad:
                raise TraceError(f"{path}:{line}: field 'gpu_spec': unknown GPU model(s) {', '.join(bad)}; "
                                 f"the nodes have {', '.join(sorted(known_models))}")
    else:
        gm = 0
    return Demand(name, cpu_milli=cpu, memory_mib=mem, num_gpus=ng, gpu_milli=gm, gpu_types=types)


def load_pods(path: str | Path, known_models: set[str] | None = None) -> Pods:
    """Pods sorted by name (``pod_demand`` for each row)."""
    path = Path(path)
    recs = [(d.id, d) for line, row in csv_rows(path, POD_COLUMNS)
            for d in (pod_demand(path, line, row, known_models),)]
    if not recs:
        raise TraceError(f"{path}: no pods")
    recs.sort(key=lambda r: r[0])
    return Pods([r[0] for r in recs], [r[1] for r in recs])


def load_trace(nodes_csv: str | Path, pods_csv: str | Path) -> tuple[Nodes, Pods]:
    nodes = load_nodes(nodes_csv)
    return nodes, load_pods(pods_csv, set(nodes.models))
