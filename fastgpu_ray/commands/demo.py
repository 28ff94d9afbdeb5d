"""`fastgpu demo`: a decomposed workload placed by live load, side by side with plain Ray."""


def add_parser(sub):
    p = sub.add_parser("demo", help="run a decomposed workload on a local multi-node cluster (emulated GPUs "
                                    "where there are none), fastgpu vs plain Ray")
    p.add_argument("--items", type=int, default=4800, help="numbers to process (default 4800)")
    p.add_argument("--parts", type=int, default=48, help="subtasks to split them into (default 48)")
    p.add_argument("--nodes", type=int, default=3, help="nodes of the local cluster (default 3)")
    p.add_argument("--gpus-per-node", type=int, default=2, help="emulated GPUs per node (default 2)")
    p.set_defaults(run=run)


def run(args) -> int:
    from fastgpu_ray.demo import main

    if args.nodes < 1 or args.gpus_per_node < 1 or args.parts < 1 or args.items < args.parts:
        raise SystemExit("need --nodes >= 1, --gpus-per-node >= 1, --parts >= 1 and --items >= --parts")
    return main(items=args.items, parts=args.parts, nodes=args.nodes, gpus_per_node=args.gpus_per_node)
