"""Summaries of replays: per-policy mean/std over seeds at the reported buckets, early failures, the
published numbers beside them, JSON and the allocation-vs-arrived plot."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .replay import KINDS, RunResult
from .trace import TRACE_DIR, TraceError, csv_rows

COLUMNS = (90, 95, 100, 130)
PAPER_CSV = TRACE_DIR / "fgd_paper_alloc_discrete.csv"
PAPER_POLICY = {"01-Random": "random", "02-DotProd": "dot-product", "03-GpuClustering": "gpu-clustering",
                "04-GpuPacking": "gpu-packing", "05-BestFit": "best-fit", "06-FGD": "fgd"}


@dataclass
class PolicySummary:
    policy: str
    seeds: list[int]
    curves: np.ndarray  # [seeds, 131]
    failed_early: dict[str, list[int]]  # kind -> per seed
    seconds: list[float]

    def mean(self, col: int) -> float:
        return float(np.mean(self.curves[:, col]))

    def std(self, col: int) -> float:
        return float(np.std(self.curves[:, col]))


def summarise(runs: list[RunResult]) -> dict[str, PolicySummary]:
    out: dict[str, PolicySummary] = {}
    for r in runs:
        s = out.setdefault(r.policy, PolicySummary(r.policy, [], np.zeros((0, 131)), {k: [] for k in KINDS}, []))
        s.seeds.append(r.seed)
        s.curves = np.vstack([s.curves, r.buckets()[None, :]])
        for k in KINDS:
            s.failed_early[k].append(r.failed_early.get(k, 0))
        s.seconds.append(r.seconds)
    return out


def load_paper(path: str | Path, workload: str) -> dict[str, np.ndarray]:
    """Published curves for one workload: policy name -> [seeds, 131] allocation %."""
    path = Path(path)
    rows: dict[str, list[list[float]]] = {}
    need = ("workload", "sc_policy", "seed", *(str(k) for k in range(131)))
    for line, row in csv_rows(path, need):
        if row["workload"] not in (workload, f"openb_pod_list_{workload}"):
            continue
        pol = PAPER_POLICY.get(row["sc_policy"], row["sc_policy"])
        try:
            rows.setdefault(pol, []).append([float(row[str(k)]) for k in range(131)])
        except ValueError as e:
            raise TraceError(f"{path}:{line}: bad value ({e})") from None
    return {p: np.array(v) for p, v in rows.items()}


def table(summ: dict[str, PolicySummary], paper: dict[str, np.ndarray] | None = None) -> str:
    head = f"{'policy':16s}" + "".join(f"{'@' + str(c):>15s}" for c in COLUMNS) + \
        f"   {'failed <90% (share/1/2/4/8)':>28s} {'s/replay':>9s}"
    lines = [head, "-" * len(head)]
    for name, s in summ.items():
        cells = "".join(f"{s.mean(c):9.2f} ±{s.std(c):4.2f}" if np.isfinite(s.mean(c)) else f"{'-':>15s}"
                        for c in COLUMNS)
        fails = "/".join(str(int(np.sum(s.failed_early[k]))) for k in KINDS)
        lines.append(f"{name:16s}{cells}   {fails:>28s} {np.mean(s.seconds):9.2f}")
        if paper and name in paper:
            pub = paper[name]
            cells = "".join(f"{pub[:, c].mean():9.2f} {s.mean(c) - pub[:, c].mean():+5.2f}" for c in COLUMNS)
            lines.append(f"{'  paper, diff':16s}{cells}")
    lines.append(f"(mean ± std over {len(next(iter(summ.values())).seeds)} seed(s) of allocation % at arrived "
                 "%; failures summed over seeds)")
    return "\n".join(lines)


def to_json(summ: dict[str, PolicySummary], paper: dict[str, np.ndarray] | None, meta: dict) -> dict:
    out = {"meta": meta, "policies": {}}
    for name, s in summ.items():
        entry = {
            "seeds": s.seeds,
            "mean": {str(c): _num(s.mean(c)) for c in COLUMNS},
            "std": {str(c): _num(s.std(c)) for c in COLUMNS},
            "failed_before_90": {k: int(np.sum(v)) for k, v in s.failed_early.items()},
            "seconds_per_replay": round(float(np.mean(s.seconds)), 3),
            "curve_mean": [_num(x) for x in s.curves.mean(axis=0)],
        }
        if paper and name in paper:
            entry["paper_mean"] = {str(c): round(float(paper[name][:, c].mean()), 3) for c in COLUMNS}
        out["policies"][name] = entry
    return out


def _num(x) -> float | None:
    """JSON has no NaN: an empty bucket (no event near it) is null."""
    return round(float(x), 3) if np.isfinite(x) else None


def write_json(path: str | Path, data: dict) -> None:
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


def plot(path: str | Path, summ: dict[str, PolicySummary], title: str,
         paper: dict[str, np.ndarray] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(12, 4.5))
    x = np.arange(131)
    for name, s in summ.items():
        for a in (ax, zoom):
            line, = a.plot(x, s.curves.mean(axis=0), label=name)
            if paper and name in paper:
                a.plot(x, paper[name].mean(axis=0), ls=":", color=line.get_color(), label=f"{name} (paper)")
    ax.plot(x, x, color="grey", lw=0.5)
    for a in (ax, zoom):
        a.set_xlabel("arrived workload (% of GPU capacity)")
        a.set_ylabel("GPU allocation %")
        a.grid(alpha=0.3)
    zoom.set_xlim(80, 130)
    lo = min(np.nanmin(s.curves[:, 80:].mean(axis=0), initial=100) for s in summ.values())
    zoom.set_ylim(max(lo - 1, 0), None)
    zoom.legend(fontsize=8, loc="lower right")
    ax.set_title(title)
    zoom.set_title("saturation (80-130 %)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
