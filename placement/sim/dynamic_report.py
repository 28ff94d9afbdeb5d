"""Numbers, table, JSON and plot of dynamic replays (``placement.sim.dynamic``).

All figures are over the measurement window ``[warmup_s, horizon_s)``: waits of the pods that arrived in
it, completions in it, allocation over it. A pod that arrived in the window and had not started when the
replay ended is "never placed"; its wait is censored (counted to the horizon) in the 8-GPU starvation
figure and in ``wait_all_mean``, and left out of the other wait statistics, which cover the pods that
started. A pod no node could ever hold is dropped at arrival and counted only in ``never_fits``.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from .dynamic import DynamicResult

CLASSES = ("cpu", "share", "1", "2", "4", "8")
QOS = ("Guaranteed", "LS", "Burstable", "BE")


def _waits(w: np.ndarray) -> dict:
    if not len(w):
        return {"n": 0, "mean": None, "p50": None, "p99": None}
    return {"n": int(len(w)), "mean": float(w.mean()), "p50": float(np.percentile(w, 50)),
            "p99": float(np.percentile(w, 99))}


def stats(r: DynamicResult) -> dict:
    lo, hi = r.warmup_s, r.horizon_s
    inwin = (r.arrive >= lo) & (r.arrive < hi) & ~r.dropped  # (dropped pods are counted apart)
    started = inwin & ~np.isnan(r.start)
    w = r.start - r.arrive
    t, alloc, q = r.series[:, 0], r.series[:, 1], r.series[:, 2]
    nxt = np.append(t[1:], hi)
    dt = np.clip(np.minimum(nxt, hi) - np.maximum(t, lo), 0, None)
    busy = dt * (q > 0)
    klass = np.array(r.klass)
    qos = np.array(r.qos)
    eight = inwin & (klass == "8")
    censored = np.where(np.isnan(r.start), hi - r.arrive, w)
    done = (r.end >= lo) & (r.end < hi)
    return {
        "alloc_busy": float((alloc * busy).sum() / busy.sum() / r.capacity) if busy.sum() else None,
        "alloc": float((alloc * dt).sum() / dt.sum() / r.capacity) if dt.sum() else None,
        "queue_nonempty": float(busy.sum() / dt.sum()) if dt.sum() else None,
        "pods_per_hour": float(done.sum() / ((hi - lo) / 3600.0)),
        "gpu_hours_per_hour": float((r.gpus * np.clip(np.minimum(r.end, hi) - np.maximum(r.start, lo), 0, None)
                                     )[~np.isnan(r.start)].sum() / (hi - lo)),
        "wait": _waits(w[started]),
        # every pod that arrived in the window, a queued one counted to the horizon (a lower bound of its
        # wait): a system that leaves more pods queued does not look better for it
        "wait_all_mean": float(censored[inwin].mean()) if inwin.any() else None,
        "wait_by_qos": {k: _waits(w[started & (qos == k)]) for k in QOS if (inwin & (qos == k)).any()},
        # per qos, as wait_all_mean: a class whose pods mostly never start must not look better for it
        "wait_all_by_qos": {k: float(censored[inwin & (qos == k)].mean()) for k in QOS if (inwin & (qos == k)).any()},
        "wait_by_class": {k: _waits(w[started & (klass == k)]) for k in CLASSES if (inwin & (klass == k)).any()},
        "wait_multi_gpu": _waits(w[started & np.isin(klass, ("2", "4", "8"))]),  # pooled: one p99 over all
        "max_wait_8gpu": float(censored[eight].max()) if eight.any() else None,
        "arrived": int(inwin.sum()),
        "never_placed": int((inwin & np.isnan(r.start)).sum()),
        "never_fits": int((r.dropped & (r.arrive >= lo) & (r.arrive < hi)).sum()),
        "seconds": r.seconds,
    }


def summarise(results: list[DynamicResult]) -> dict:
    """{(load, system): {figure: [value per seed]}} with nested dicts flattened to 'a.b.c' keys."""
    out: dict = defaultdict(lambda: defaultdict(list))
    for r in results:
        for k, v in _flat(stats(r)).items():
            out[(round(r.load, 3), r.system)][k].append(v)
    return out


def _flat(d: dict, pre: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{pre}{k}."))
        else:
            out[pre + k] = v
    return out


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def _f(x, fmt="{:.0f}") -> str:
    return "-" if x is None else fmt.format(x)


def worst_qos(s: dict, base: dict) -> float | None:
    """The worst qos class's ratio of mean waits, ``s`` over ``base`` (summaries of one load), each class
    judged both over its pods that started and over all its pods that arrived (still-queued ones counted
    to the end of the replay), whichever is worse."""
    worst = None
    for q in QOS:
        for k in (f"wait_by_qos.{q}.mean", f"wait_all_by_qos.{q}"):
            mine, theirs = _mean(s.get(k, [None])), _mean(base.get(k, [None]))
            if mine is not None and theirs:
                worst = mine / theirs if worst is None else max(worst, mine / theirs)
    return worst


def table(summ: dict, base: str = "k8s-fgd", fifo: str = "fifo-best-fit") -> str:
    """One row per (load, system), means over seeds; ratios against ``base`` (waits) and ``fifo`` (pods/h)."""
    head = (f"{'load':>5} {'system':15} {'alloc busy':>10} {'pods/h':>8} {'x fifo':>6} {'wait mean':>9} "
            f"{'p50':>6} {'p99':>7} {'x ' + base:>11} {'incl. queued':>12} {'x':>5} {'worst qos x':>11} "
            f"{'multi p99':>9} {'8-GPU max':>9} "
            f"{'never':>6} {'s/replay':>8}")
    lines = [head, "-" * len(head)]
    for (load, name), s in sorted(summ.items(), key=lambda kv: (kv[0][0], list(summ).index(kv[0]))):
        b = summ.get((load, base), {})
        fo = summ.get((load, fifo), {})
        mean = _mean(s["wait.mean"])
        ratio = mean / _mean(b["wait.mean"]) if b and mean is not None and _mean(b["wait.mean"]) else None
        worst = worst_qos(s, b) if b else None
        allw = _mean(s["wait_all_mean"])
        xall = allw / _mean(b["wait_all_mean"]) if b and allw is not None and _mean(b["wait_all_mean"]) else None
        pph = _mean(s["pods_per_hour"])
        xf = pph / _mean(fo["pods_per_hour"]) if fo and _mean(fo["pods_per_hour"]) else None
        lines.append(f"{load:>5.2f} {name:15} {_f(_mean(s['alloc_busy']), '{:.3f}'):>10} {_f(pph):>8} "
                     f"{_f(xf, '{:.2f}'):>6} {_f(mean):>9} {_f(_mean(s['wait.p50'])):>6} {_f(_mean(s['wait.p99'])):>7} "
                     f"{_f(ratio, '{:.2f}'):>11} {_f(allw):>12} {_f(xall, '{:.2f}'):>5} {_f(worst, '{:.2f}'):>11} "
                     f"{_f(_mean(s.get('wait_multi_gpu.p99', [None]))):>9} {_f(_mean(s['max_wait_8gpu'])):>9} "
                     f"{_f(_mean(s['never_placed'])):>6} {_f(_mean(s['seconds']), '{:.1f}'):>8}")
    lines.append("(means over seeds; waits in simulated seconds over the pods that started; 'x k8s-fgd' = mean "
                 "wait / that system's; 'incl. queued' = mean wait of every pod that arrived in the window, those "
                 "still queued counted to its end; 'worst qos x' = the worst qos class's mean-wait ratio, over the "
                 "pods that started or over all (queued ones counted to the end), whichever is worse; 'never' "
                 "= arrived in the window, not started by its end; 'multi p99': p99 wait of the 2-, 4- and 8-GPU pods "
                 "pooled; '8-GPU max': the longest wait of an 8-GPU pod, a queued one counted to the end)")
    return "\n".join(lines)


def to_json(summ: dict, meta: dict) -> dict:
    return {"meta": meta, "runs": [{"load": load, "system": name, "per_seed": dict(s),
                                    "mean": {k: _mean(v) if not isinstance(v[0], str) else v for k, v in s.items()}}
                                   for (load, name), s in summ.items()]}


def plot(path: str, results: list[DynamicResult], title: str) -> None:
    """Allocation and queue length over time (first seed of each load and system) and wait CDFs."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loads = sorted({round(r.load, 3) for r in results})
    fig, axes = plt.subplots(3, len(loads), figsize=(5 * len(loads), 10), squeeze=False)
    seen = set()
    for r in results:
        key = (round(r.load, 3), r.system)
        if key in seen:
            continue
        seen.add(key)
        c = loads.index(key[0])
        t = r.series[:, 0] / 3600
        axes[0][c].plot(t, r.series[:, 1] / r.capacity * 100, label=r.system, lw=0.8)
        axes[1][c].plot(t, r.series[:, 2], label=r.system, lw=0.8)
        inwin = (r.arrive >= r.warmup_s) & ~np.isnan(r.start)
        w = np.sort((r.start - r.arrive)[inwin])
        axes[2][c].plot(np.maximum(w, 0.1), np.linspace(0, 1, len(w)), label=r.system)
        axes[0][c].set_title(f"{title}, load {key[0]:g}")
    for c in range(len(loads)):
        axes[0][c].set_ylabel("GPU allocation %")
        axes[1][c].set_ylabel("queued pods")
        axes[1][c].set_xlabel("simulated hours")
        axes[2][c].set_xscale("log")
        axes[2][c].set_xlabel("queueing delay, s (started pods, after warm-up)")
        axes[2][c].set_ylabel("fraction of pods")
        for a in range(3):
            axes[a][c].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
