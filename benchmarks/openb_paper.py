"""Validate the six published policies against the FGD paper's table, and fastgpu against fgd.

    python benchmarks/openb_paper.py [--traces default ...] [--seeds 42-51] [--jobs 2] [--markdown OUT.md]
                                     [--policies random,...] [--no-fastgpu]

For every trace and policy: our mean allocation % at arrived 100 and 130 over the seeds, the paper's mean
over seeds 42-51, the difference, and whether it is within tolerance (0.5 points; random 1.0). Then, on the
same seeds (paired), fastgpu minus fgd per trace, and the early failures (GPU tasks failed before 90 %
arrived) of both. Prints the mean seconds per replay of each policy.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from placement.sim import report  # noqa: E402
from placement.sim.run import parse_seeds, run_many  # noqa: E402
from placement.sim.trace import TRACES, trace_paths  # noqa: E402

PUBLISHED = ["random", "dot-product", "gpu-clustering", "gpu-packing", "best-fit", "fgd"]
TOLERANCE = {"random": 1.0}
DEFAULT_TOL = 0.5


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", nargs="+", default=list(TRACES), choices=TRACES)
    ap.add_argument("--seeds", default="42-51")
    ap.add_argument("--policies", default=",".join(PUBLISHED))
    ap.add_argument("--no-fastgpu", action="store_true", help="skip the fastgpu vs fgd comparison")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--markdown", help="also write the tables as Markdown to this file")
    a = ap.parse_args()
    seeds = parse_seeds(a.seeds)
    policies = [p for p in a.policies.split(",") if p]
    if not a.no_fastgpu and "fastgpu" not in policies:
        policies.append("fastgpu")
    if not a.no_fastgpu and "fgd" not in policies:
        policies.append("fgd")
    md: list[str] = []
    t0 = time.time()
    summaries = {}
    for trace in a.traces:
        runs = run_many(*trace_paths(trace), policies, seeds, jobs=a.jobs, progress=True)
        summaries[trace] = (report.summarise(runs), report.load_paper(report.PAPER_CSV, trace), runs)
        print(f"[{trace} done, {time.time() - t0:.0f} s]", file=sys.stderr, flush=True)

    # 1. the paper's table
    head = "| trace | policy | ours @100 | paper @100 | diff | ours @130 | paper @130 | diff | within |"
    md += ["## Published policies vs the paper", "", head, "|" + "---|" * 9]
    print(f"{'trace':12s} {'policy':15s} {'@100':>7s} {'paper':>7s} {'diff':>6s}  {'@130':>7s} {'paper':>7s} "
          f"{'diff':>6s}  ok")
    worst = 0.0
    fails = 0
    for trace, (summ, paper, _) in summaries.items():
        for pol in [p for p in policies if p in paper]:
            tol = TOLERANCE.get(pol, DEFAULT_TOL)
            ours = [summ[pol].mean(c) for c in (100, 130)]
            pub = [float(paper[pol][:, c].mean()) for c in (100, 130)]
            diff = [o - p for o, p in zip(ours, pub)]
            ok = all(abs(x) <= tol for x in diff)
            fails += not ok
            worst = max(worst, max(abs(x) for x in diff) / tol)
            print(f"{trace:12s} {pol:15s} {ours[0]:7.2f} {pub[0]:7.2f} {diff[0]:+6.2f}  {ours[1]:7.2f} {pub[1]:7.2f} "
                  f"{diff[1]:+6.2f}  {'yes' if ok else 'NO'}")
            md.append(f"| {trace} | {pol} | {ours[0]:.2f} | {pub[0]:.2f} | {diff[0]:+.2f} | {ours[1]:.2f} | "
                      f"{pub[1]:.2f} | {diff[1]:+.2f} | {'yes' if ok else '**no**'} |")
    print(f"cells outside tolerance: {fails}; worst |diff| / tolerance: {worst:.2f}")
    md += ["", f"Cells outside tolerance: {fails}; worst |diff| / tolerance: {worst:.2f}.", ""]

    # 2. fastgpu vs fgd, paired by seed
    if not a.no_fastgpu:
        md += ["## fastgpu vs fgd (paired, same seeds)", "",
               "| trace | fgd @100 | fastgpu @100 | diff | fgd @130 | fastgpu @130 | diff | min paired diff @130 "
               "| failed <90 % fgd / fastgpu |", "|" + "---|" * 9]
        print(f"\n{'trace':12s} {'fgd@100':>8s} {'fast@100':>9s} {'diff':>6s}  {'fgd@130':>8s} {'fast@130':>9s} "
              f"{'diff':>6s}  fail<90 fgd/fastgpu")
        diffs = []
        for trace, (summ, _, _) in summaries.items():
            f, g = summ["fgd"], summ["fastgpu"]
            d100 = g.curves[:, 100] - f.curves[:, 100]
            d130 = g.curves[:, 130] - f.curves[:, 130]
            diffs.append((d100.mean(), d130.mean()))
            ff = sum(map(sum, f.failed_early.values()))
            gf = sum(map(sum, g.failed_early.values()))
            print(f"{trace:12s} {f.mean(100):8.2f} {g.mean(100):9.2f} {d100.mean():+6.2f}  {f.mean(130):8.2f} "
                  f"{g.mean(130):9.2f} {d130.mean():+6.2f}  {ff}/{gf}")
            md.append(f"| {trace} | {f.mean(100):.2f} | {g.mean(100):.2f} | {d100.mean():+.2f} | {f.mean(130):.2f} | "
                      f"{g.mean(130):.2f} | {d130.mean():+.2f} | {d130.min():+.2f} | {ff} / {gf} |")
        m = np.mean(diffs, axis=0)
        print(f"mean over traces: fastgpu - fgd = {m[0]:+.3f} @100, {m[1]:+.3f} @130")
        md += ["", f"Mean over traces: fastgpu - fgd = {m[0]:+.3f} at 100 %, {m[1]:+.3f} at 130 %.", ""]

    # 3. speed
    secs: dict[str, list[float]] = {}
    for trace, (_, _, runs) in summaries.items():
        for r in runs:
            secs.setdefault(r.policy, []).append(r.seconds)
    line = ", ".join(f"{p} {np.mean(v):.2f}" for p, v in secs.items())
    print(f"\nseconds per replay (mean): {line}")
    md += [f"Seconds per replay (mean over all runs, --jobs {a.jobs}): {line}.", ""]
    if a.markdown:
        Path(a.markdown).write_text("\n".join(md) + "\n")
    return 0 if fails == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
