"""``fastgpu simulate``: replay an openb trace with one or more placement policies (no Ray needed)."""
from __future__ import annotations

import sys
from pathlib import Path


def add_parser(sub):
    p = sub.add_parser(
        "simulate", help="replay a GPU cluster trace with placement policies (the FGD paper's protocol)",
        description="Replay a trace by the FGD paper's protocol and print allocation %% at arrived 90/95/100/130 "
                    "per policy (mean ± std over seeds) and the GPU tasks that failed before 90 %% arrived.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--trace", help="one of the openb traces the project keeps (default, cpu050, ...)")
    src.add_argument("--pods", help="pods CSV (openb format); needs --nodes")
    p.add_argument("--nodes", help="nodes CSV (openb format); default: the openb GPU node list")
    p.add_argument("--policy", action="append", dest="policies", metavar="NAME",
                   help="placement policy (repeatable); default: fgd and fastgpu")
    p.add_argument("--seeds", default="42-51", help="seeds: N, N-M or a comma list (default 42-51)")
    p.add_argument("--tune", type=float, default=1.3, help="arrived workload target, x GPU capacity (1.3)")
    p.add_argument("--jobs", type=int, default=1, help="parallel processes (0 = one per core)")
    p.add_argument("--json", metavar="OUT.json", help="write the numbers as JSON")
    p.add_argument("--plot", metavar="OUT.png", help="write allocation %% vs arrived %% per policy")
    p.add_argument("--paper", nargs="?", const="openb", metavar="PAPER.csv",
                   help="show the FGD paper's published means beside ours (no value: the kept copy)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args) -> int:
    from placement import registry
    from placement.sim import report
    from placement.sim.run import parse_seeds, run_many
    from placement.sim.trace import TraceError, trace_paths

    try:
        if args.trace:
            nodes_csv, pods_csv = trace_paths(args.trace)
            if args.nodes:
                nodes_csv = Path(args.nodes)
            workload = args.trace
        else:
            if not args.nodes:
                nodes_csv = trace_paths("default")[0]
            else:
                nodes_csv = Path(args.nodes)
            pods_csv = Path(args.pods)
            workload = pods_csv.stem.removeprefix("openb_pod_list_")
        seeds = parse_seeds(args.seeds)
        policies = args.policies or ["fgd", "fastgpu"]
        paper = None
        if args.paper:
            paper = report.load_paper(report.PAPER_CSV if args.paper == "openb" else args.paper, workload)
            if not paper:
                print(f"note: the paper table has no rows for workload {workload!r}", file=sys.stderr)
        runs = run_many(nodes_csv, pods_csv, policies, seeds, args.tune, args.jobs,
                        progress=False if args.no_progress else None)
    except (TraceError, ValueError, registry.UnknownPolicyError) as e:
        print(f"fastgpu simulate: error: {e}", file=sys.stderr)
        return 2
    summ = report.summarise(runs)
    print(f"trace {workload}: {pods_csv} on {nodes_csv}, tune {args.tune}, seeds {args.seeds}")
    print(report.table(summ, paper))
    if args.json:
        meta = {"trace": workload, "nodes": str(nodes_csv), "pods": str(pods_csv), "tune": args.tune,
                "seeds": seeds}
        report.write_json(args.json, report.to_json(summ, paper, meta))
        print(f"wrote {args.json}")
    if args.plot:
        report.plot(args.plot, summ, f"{workload}: allocation vs arrived", paper)
        print(f"wrote {args.plot}")
    return 0
