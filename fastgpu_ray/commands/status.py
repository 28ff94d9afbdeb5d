"""`fastgpu status`: per node and GPU, model, utilisation, memory, outside processes, fastgpu subtasks."""


def add_parser(sub):
    p = sub.add_parser("status", help="show the cluster's GPUs as fastgpu sees them (live load, memory, queue)")
    p.add_argument("--address", default="auto", help="Ray cluster address (default: auto)")
    p.add_argument("--emulate", action="store_true", help="treat GPUs as emulated even where NVML works")
    p.set_defaults(run=run)


def run(args) -> int:
    import ray

    import fastgpu_ray as fastgpu
    from fastgpu_ray.monitor import NAMESPACE

    try:
        ray.init(address=args.address, log_to_driver=False, logging_level="ERROR")
    except ConnectionError as e:
        raise SystemExit(f"fastgpu status: no Ray cluster at {args.address!r} ({e}); start one with "
                         "`ray start --head` or pass --address") from None
    try:
        # A running fastgpu session knows its queue and subtasks: ask its dispatcher if there is one.
        live = [a for a in ray.util.list_named_actors(all_namespaces=True)
                if a.get("namespace") == NAMESPACE and a.get("name", "").startswith("dispatcher-")]
        if live:
            d = ray.get_actor(live[0]["name"], namespace=NAMESPACE)
            ray.get(d.refresh.remote())
            print(f"(fastgpu session {live[0]['name'].removeprefix('dispatcher-')})")
            print(ray.get(d.status.remote()).format())
        else:
            fastgpu.init(emulate=args.emulate or None)
            try:
                print(fastgpu.status().format())
            finally:
                fastgpu.shutdown()
    finally:
        ray.shutdown()
    return 0
