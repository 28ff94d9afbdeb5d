"""`fastgpu status`: per node and GPU, model, utilisation, memory, outside processes, fastgpu subtasks."""


def add_parser(sub):
    p = sub.add_parser("status", help="show the cluster's GPUs as fastgpu sees them (live load, memory, queue)")
    p.add_argument("--address", default="auto", help="Ray cluster address (default: auto)")
    p.add_argument("--emulate", action="store_true", help="treat GPUs as emulated even where NVML works")
    p.set_defaults(run=run)


def run(args) -> int:
    import ray

    import fastgpu_ray as fastgpu
    from fastgpu_ray.api import merge_status
    from fastgpu_ray.actors.monitor import NAMESPACE

    try:
        ray.init(address=args.address, log_to_driver=False, logging_level="ERROR")
    except ConnectionError as e:
        raise SystemExit(f"fastgpu status: no Ray cluster at {args.address!r} ({e}); start one with "
                         "`ray start --head` or pass --address") from None
    try:
        # A running fastgpu session knows its queues and subtasks: ask its node schedulers if there is one.
        prefix = "fastgpu-node-"
        ours = {a.get("name", "") for a in ray.util.list_named_actors(all_namespaces=True)
                if a.get("namespace") == NAMESPACE}
        names = sorted(n for n in ours if n.startswith(prefix))
        if names:
            session = names[0][len(prefix):].split("-", 1)[0]
            mine = [ray.get_actor(n, namespace=NAMESPACE) for n in names if n.startswith(f"{prefix}{session}-")]
            print(f"(fastgpu session {session})")
            from fastgpu_ray.actors.lobby import lobby_name

            lobby = [ray.get_actor(lobby_name(session), namespace=NAMESPACE)] if lobby_name(session) in ours else []
            print(merge_status(mine, lobby).format())
        else:
            fastgpu.init(emulate=args.emulate or None)
            try:
                print(fastgpu.status().format())
            finally:
                fastgpu.shutdown()
    finally:
        ray.shutdown()
    return 0
