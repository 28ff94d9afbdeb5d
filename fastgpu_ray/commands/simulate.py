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
    p.add_argument("--seeds", default=None, help="seeds: N, N-M or a comma list (default 42-51; --dynamic: 42)")
    p.add_argument("--tune", type=float, default=1.3, help="arrived workload target, x GPU capacity (1.3)")
    p.add_argument("--jobs", type=int, default=1, help="parallel processes (0 = one per core)")
    p.add_argument("--json", metavar="OUT.json", help="write the numbers as JSON")
    p.add_argument("--plot", metavar="OUT.png", help="write allocation %% vs arrived %% per policy")
    p.add_argument("--paper", nargs="?", const="openb", metavar="PAPER.csv",
                   help="show the FGD paper's published means beside ours (no value: the kept copy)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    dyn = p.add_argument_group("dynamic replay (--dynamic): pods arrive, queue, run and leave")
    dyn.add_argument("--dynamic", action="store_true",
                     help="event-driven replay with the runtime's queue and learned durations (docs/DESIGN.md)")
    dyn.add_argument("--system", action="append", dest="systems", metavar="NAME",
                     help="fifo-best-fit, k8s-best-fit, k8s-fgd, k8s-fastgpu and fastgpu-per-pod (ablations), fastgpu "
                          "(repeatable; default all)")
    rate = dyn.add_mutually_exclusive_group()
    rate.add_argument("--load", default="0.8,1.0,1.2",
                      help="offered loads, x GPU capacity, comma list (default 0.8,1.0,1.2)")
    rate.add_argument("--rate", type=float, help="arrival compression instead of a load: arrive at creation_time/RATE")
    dyn.add_argument("--cap", type=float, default=1800.0, help="run times are capped at this many seconds (1800)")
    dyn.add_argument("--horizon", type=float, help="simulated seconds to replay (default 4 x --cap; the "
                                                    "first --cap is warm-up)")
    dyn.add_argument("--qos-priority", default="Guaranteed=2,LS=2,Burstable=1,BE=0",
                     help="priority of each qos class, higher first (default Guaranteed=2,LS=2,Burstable=1,BE=0)")
    dyn.add_argument("--round", type=float, default=1.0, help="simulated seconds between scheduling rounds (1)")
    dyn.add_argument("--scan-limit", type=float, metavar="N",
                     help="pods that may fail to fit per round before it ends, for every system but strict "
                          "FIFO (default: the runtime's, 256; 1 = no backfill: nothing passes a pod that does "
                          "not fit; 'inf' tries the whole queue)")
    p.set_defaults(run=run)


def _priorities(text: str) -> dict[str, int]:
    from placement.sim.workload import QOS_PRIORITY

    out = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        name = name.strip()
        try:
            out[name] = int(value)
        except ValueError:
            raise ValueError(f"--qos-priority {text!r}: expected CLASS=INT pairs such as LS=2,BE=0") from None
        if name not in QOS_PRIORITY:
            raise ValueError(f"--qos-priority: unknown qos class {name!r}; the traces have {', '.join(QOS_PRIORITY)}")
    return {**{k: 0 for k in QOS_PRIORITY}, **out}


def _loads(text: str) -> list[float]:
    try:
        loads = [float(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"--load {text!r}: expected numbers such as 0.8,1.0,1.2") from None
    bad = [x for x in loads if not x > 0]
    if bad:
        raise ValueError(f"--load must be > 0, got {bad[0]:g}")
    return loads


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
        if args.dynamic:
            return _run_dynamic(args, nodes_csv, pods_csv, workload)
        seeds = parse_seeds(args.seeds or "42-51")
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


def _run_dynamic(args, nodes_csv, pods_csv, workload) -> int:
    from placement.sim import dynamic_report as rep, report
    from placement.sim.dynamic import SYSTEMS
    from placement.sim.run import parse_seeds, run_dynamic
    from placement.sim.trace import TraceError

    try:
        if args.policies or args.paper:
            raise ValueError("--policy and --paper belong to the static replay; with --dynamic choose --system "
                             f"({', '.join(SYSTEMS)})")
        seeds = parse_seeds(args.seeds or "42")
        loads = [None] if args.rate is not None else _loads(args.load)
        systems = args.systems or list(SYSTEMS)
        runs = run_dynamic(nodes_csv, pods_csv, systems, seeds, loads, args.rate, args.cap, args.horizon,
                           _priorities(args.qos_priority), args.round, args.jobs,
                           progress=False if args.no_progress else None, scan_limit=args.scan_limit)
    except (TraceError, ValueError) as e:
        print(f"fastgpu simulate: error: {e}", file=sys.stderr)
        return 2
    print(f"trace {workload} (dynamic): {pods_csv} on {nodes_csv}, seeds {args.seeds or '42'}, cap {args.cap:g} s")
    shown = set()
    for r in runs:  # what the transform did, once per load (as the first seed's workload did it)
        f = r.transform
        if f["load"] in shown:
            continue
        shown.add(f["load"])
        print(f"  load {f['load']:.2f}: rate {f['rate']:.0f}, {f['pods']} pods in {f['passes']} pass(es) over "
              f"{f['horizon_s']:g} s (window {f['cap_s']:g}-{f['horizon_s']:g} s); the transform changed "
              f"{f['gpu_time_changed']:.1%} of the recorded GPU-time (cap and cut-off pods); pods that never ran "
              f"hold {f['gpu_time_drawn']:.1%} of the replay's (drawn from their class)")
    summ = rep.summarise(runs)
    print(rep.table(summ))
    if args.json:
        meta = {"trace": workload, "nodes": str(nodes_csv), "pods": str(pods_csv), "seeds": seeds,
                "loads": loads, "rate": args.rate, "cap_s": args.cap, "horizon_s": args.horizon,
                "qos_priority": _priorities(args.qos_priority), "round_s": args.round,
                "scan_limit": args.scan_limit}
        report.write_json(args.json, rep.to_json(summ, meta))
        print(f"wrote {args.json}")
    if args.plot:
        rep.plot(args.plot, runs, workload)
        print(f"wrote {args.plot}")
    return 0
