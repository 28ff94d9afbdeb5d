"""Data locality: fastgpu vs plain Ray GPU tasks vs a Ray ActorPool, side by side on one cluster.

    sudo python benchmarks/locality.py                 # netns hosts on 1 Gbit/s links (needs root)
    python benchmarks/locality.py --local              # one machine, link_bandwidth="1Gbit" configured
    options: --regimes data-heavy,balanced,data-heavy-2s,broadcast
             --systems ray_tasks,ray_reuse,actor_pool,fastgpu  --json OUT.json  --rate 1gbit (netns)
             --declared (fastgpu's task declares work_s; by default nothing does: it learns run times)

Cluster: a head without GPUs (the driver) and three worker nodes with 2 logical GPUs each. An upstream
stage leaves the shards 60/30/10 % on the three workers (tasks pinned there); then one GPU subtask per
shard reads its shard and "computes" for a fixed time (sleep). Every system gets freshly produced shards.

Per system and regime: makespan (first submit to last result), bytes moved across nodes (copies of the
input objects beyond the producer's, counted with ``ray.experimental.get_object_locations`` after the
run) and, on netns hosts, the bytes each host's link carried (veth counters). Each fastgpu run starts a
fresh session: nothing learned before it. Targets (issues 4 and 11):
- data-heavy (12 x 32 MiB, 20 ms): fastgpu moves <= 0.10 of the data, makespan <= 0.5x ActorPool;
- balanced (24 x 16 MiB, 50 ms): fastgpu makespan <= 0.8x the better of Ray tasks and ActorPool, and it
  moves <= 0.15 of the data;
- data-heavy-2s (12 x 32 MiB, 2 s): moving data beats waiting behind a queue; fastgpu makespan <= 1.1x
  ActorPool (the right decision flips with the duration);
- broadcast (one 64 MiB object, 24 subtasks, 50 ms): the object enters each node at most once.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MiB = 2**20
SPLIT = (0.6, 0.3, 0.1)
SYSTEMS = ("ray_tasks", "ray_reuse", "actor_pool", "fastgpu")
GET_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Regime:
    name: str
    shards: int
    shard_mib: int
    work_s: float
    broadcast: bool = False


REGIMES = {
    "data-heavy": Regime("data-heavy", 12, 32, 0.020),
    "balanced": Regime("balanced", 24, 16, 0.050),
    "data-heavy-2s": Regime("data-heavy-2s", 12, 32, 2.0),  # moving data beats waiting behind a queue
    "broadcast": Regime("broadcast", 24, 64, 0.050, broadcast=True),
}


def split_counts(n: int, split=SPLIT) -> list[int]:
    """Largest remainder: 12 -> [7, 4, 1], 24 -> [14, 7, 3]."""
    raw = [n * s for s in split]
    out = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: (-(raw[i] - out[i]), -i))[: n - sum(out)]:
        out[i] += 1
    return out


@dataclass
class Result:
    regime: str
    system: str
    makespan_s: float
    input_bytes: int
    moved_bytes: int
    copies_per_node: dict = field(default_factory=dict)
    link_mib: dict = field(default_factory=dict)  # host -> {"up": MiB, "down": MiB} (netns only)
    placement: dict = field(default_factory=dict)  # node -> subtasks run there
    correct: bool = True

    @property
    def moved_frac(self) -> float:
        return self.moved_bytes / self.input_bytes if self.input_bytes else 0.0


# ----------------------------------------------------------------------------------------- the work
def subtask(x, tag: int, work_s: float):
    """Read the input (touch every page), 'compute' for work_s, return (checksum, tag, node)."""
    import ray as _ray

    t0 = time.perf_counter()
    checksum = int(np.asarray(x)[::4096].astype(np.int64).sum())
    left = work_s - (time.perf_counter() - t0)
    if left > 0:
        time.sleep(left)
    return checksum, tag, _ray.get_runtime_context().get_node_id()


def expected(fill: int, nbytes: int) -> int:
    return fill * len(range(0, nbytes, 4096))


# ------------------------------------------------------------------------------------------- driver
def warm_subtask(x, tag: int, work_s: float):
    """Another function than ``subtask``: fastgpu's warm-up teaches it nothing about ``subtask``."""
    return subtask(x, tag, work_s)


def run_all(regimes, systems, link_counter=None, link_bandwidth: str | None = None,
            declared: bool = False, cold: bool = False) -> list[Result]:
    import ray

    if not cold:  # (benchmarks/warm_stores.py: why)
        from benchmarks.warm_stores import warm_stores

        print(f"  object stores warmed: {warm_stores()} MiB written once (--cold: not)", flush=True)
    from ray.util import ActorPool
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    workers = sorted((n for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU")),
                     key=lambda n: n["NodeManagerAddress"] + n["NodeID"])
    if len(workers) < 3:
        raise RuntimeError(f"need 3 worker nodes with GPUs, found {len(workers)}")
    wids = [n["NodeID"] for n in workers[:3]]
    pin = lambda nid: NodeAffinitySchedulingStrategy(nid, soft=False)  # noqa: E731

    @ray.remote(num_cpus=0)
    def produce(fill: int, nbytes: int):
        return np.full(nbytes, fill % 251, dtype=np.uint8)

    task = ray.remote(num_gpus=1)(subtask)  # as users write it: max_calls=1, a fresh worker per GPU task
    task_reuse = ray.remote(num_gpus=1, max_calls=0)(subtask)  # worker reuse

    @ray.remote(num_gpus=1)
    class GpuActor:
        def run(self, x, tag, work_s):
            return subtask(x, tag, work_s)

    n_gpus = int(sum(n["Resources"]["GPU"] for n in workers[:3]))
    from transfer.bandwidth import format_bandwidth
    from transfer.ray_hooks import measure_link_bandwidth

    probe = [measure_link_bandwidth(wids[0], wids[1]) for _ in range(2)][-1]  # the first starts workers
    print(f"  one Ray object pull (64 MiB) between two worker nodes: {format_bandwidth(probe)}", flush=True)
    runners = {}
    pool_actors = []

    def make_shards(reg: Regime):
        if reg.broadcast:
            obj = produce.options(scheduling_strategy=pin(wids[0])).remote(7, reg.shard_mib * MiB)
            inputs = [obj] * reg.shards
            fills = [7] * reg.shards
            objs = [obj]
        else:
            inputs, fills = [], []
            for w, count in zip(wids, split_counts(reg.shards)):
                for _ in range(count):
                    f = len(inputs) + 1
                    inputs.append(produce.options(scheduling_strategy=pin(w)).remote(f, reg.shard_mib * MiB))
                    fills.append(f % 251)
            objs = list(inputs)
        ray.wait(objs, num_returns=len(objs), fetch_local=False)
        return inputs, fills, objs

    def run_ray_tasks(inputs, reg, reuse: bool):
        t = task_reuse if reuse else task
        return ray.get([t.remote(x, i, reg.work_s) for i, x in enumerate(inputs)], timeout=GET_TIMEOUT_S)

    def run_pool(inputs, reg):
        pool = ActorPool(pool_actors)
        return list(pool.map(lambda a, v: a.run.remote(v[1], v[0], reg.work_s), list(enumerate(inputs))))

    fg = None
    if "fastgpu" in systems:
        import fastgpu_ray as fg

        if link_bandwidth:
            os.environ["FASTGPU_LINK_BANDWIDTH"] = link_bandwidth
        fg_task = fg.task(num_gpus=1)(subtask)  # no work_s: learned (--declared: declared)
        fg_warm = fg.task(num_gpus=1)(warm_subtask)

    def run_fastgpu(inputs, reg):
        f = fg_task.options(work_s=reg.work_s) if declared else fg_task
        if reg.name == "warm":
            f = fg_warm
        refs = [f.remote(x, i, reg.work_s) for i, x in enumerate(inputs)]
        out = ray.get(refs, timeout=GET_TIMEOUT_S)
        # FASTGPU_BENCH_EXPLAIN=N: print why the first N subtasks that ran away from their data did ("all":
        # every subtask's record)
        want = os.environ.get("FASTGPU_BENCH_EXPLAIN", "")
        if want and reg.name != "warm":
            every = want == "all"
            locs = ray.experimental.get_object_locations(inputs)
            away = [r for r, x, (_, _, nid) in zip(refs, inputs, out) if every or nid not in locs[x]["node_ids"][:1]]
            for r in away if every else away[:int(want)]:
                print(fg.explain(r).format(), flush=True)
        return out

    runners = {"ray_tasks": lambda i, r: run_ray_tasks(i, r, False),
               "ray_reuse": lambda i, r: run_ray_tasks(i, r, True),
               "actor_pool": run_pool, "fastgpu": run_fastgpu}
    warm = Regime("warm", n_gpus, 1, 0.3)

    def warm_inputs():
        """1 MiB on each worker node per GPU: fastgpu's data-driven placement claims every node's GPUs."""
        refs = [produce.options(scheduling_strategy=pin(w)).remote(0, MiB) for w in wids for _ in range(2)]
        ray.wait(refs, num_returns=len(refs), fetch_local=False)
        return refs

    def setup(s):
        """Outside the clock: actors exist, reusable workers and fastgpu's GPU workers are started."""
        if s == "actor_pool":
            pool_actors[:] = [GpuActor.remote() for _ in range(n_gpus)]
            ray.get([a.run.remote(np.zeros(8), 0, 0.0) for a in pool_actors], timeout=GET_TIMEOUT_S)
        if s == "fastgpu":
            fg.init()
        if s in ("ray_reuse", "fastgpu"):
            runners[s](warm_inputs(), warm)

    def teardown(s):
        """Whatever holds GPUs (the pool's actors, fastgpu's workers) gives them back before the next."""
        if s == "actor_pool":
            for a in pool_actors:
                ray.kill(a)
            pool_actors.clear()
        if s == "fastgpu":
            fg.shutdown()
        deadline = time.time() + 60
        while ray.available_resources().get("GPU", 0) < n_gpus and time.time() < deadline:
            time.sleep(0.2)

    results = []
    for reg in regimes:
        for s in systems:
            inputs, fills, objs = make_shards(reg)
            setup(s)
            before = link_counter() if link_counter else None
            t0 = time.perf_counter()
            try:
                out = runners[s](inputs, reg)
                dt = time.perf_counter() - t0
            finally:
                after = link_counter() if link_counter else None
                teardown(s)
            locs = ray.experimental.get_object_locations(objs)
            sizes = [locs[o]["object_size"] or 0 for o in objs]
            copies = {}
            for o in objs:
                for nid in locs[o]["node_ids"]:
                    copies[nid[:8]] = copies.get(nid[:8], 0) + 1
            moved = sum(sz * max(0, len(locs[o]["node_ids"]) - 1) for o, sz in zip(objs, sizes))
            ok = all(c == expected(fills[tag], reg.shard_mib * MiB) and tag == i
                     for i, (c, tag, _) in enumerate(out))
            where = {}
            for _, _, nid in out:
                where[nid[:8]] = where.get(nid[:8], 0) + 1
            links = {}
            if before is not None:
                links = {h: {k: round((after[h][k] - before[h][k]) / MiB, 1) for k in ("up", "down")} for h in after}
            res = Result(reg.name, s, dt, sum(sizes), moved, copies, links, where, ok)
            results.append(res)
            print(f"  {reg.name:10s} {s:10s} {dt:7.2f} s  moved {res.moved_frac:5.2f} of {sum(sizes) / MiB:.0f} MiB"
                  f"  ran on {where}" + ("" if ok else "  WRONG RESULTS"), flush=True)
            # No ref to this run's shards outlives it (``locs`` holds them too): kept, they filled the object
            # stores during the next system's run.
            inputs = objs = locs = None
            del inputs, objs, out
            time.sleep(0.5)  # let Ray free the copies before the next system produces its shards
    return results


# ------------------------------------------------------------------------------------------ verdicts
def verdicts(results: list[Result], timed: bool = True) -> list[tuple[str, str, bool]]:
    """The issue's targets. ``timed=False`` (one machine: moving bytes costs nothing real) checks the
    decisions only -- bytes moved and copies -- and leaves the makespan targets to the netns run."""
    by = {(r.regime, r.system): r for r in results}
    out = []

    def get(reg, sys_):
        return by.get((reg, sys_))

    fg, pool, tasks = get("data-heavy", "fastgpu"), get("data-heavy", "actor_pool"), get("data-heavy", "ray_tasks")
    if fg:
        out.append(("data-heavy", f"fastgpu moves {fg.moved_frac:.2f} of the data (target <= 0.10)", fg.moved_frac <= 0.10))
        if pool and timed:
            r = fg.makespan_s / pool.makespan_s
            out.append(("data-heavy", f"fastgpu makespan {r:.2f}x ActorPool (target <= 0.5)", r <= 0.5))
    fg, pool, tasks = get("balanced", "fastgpu"), get("balanced", "actor_pool"), get("balanced", "ray_tasks")
    if fg:
        base = [b for b in (tasks, pool) if b]
        if base and timed:
            best = min(base, key=lambda b: b.makespan_s)
            r = fg.makespan_s / best.makespan_s
            out.append(("balanced", f"fastgpu makespan {r:.2f}x the better Ray baseline ({best.system}) "
                                    "(target <= 0.8)", r <= 0.8))
        out.append(("balanced", f"fastgpu moves {fg.moved_frac:.2f} of the data"
                                + (f" (Ray tasks {tasks.moved_frac:.2f})" if tasks else "") + " (target <= 0.15)",
                    fg.moved_frac <= 0.15))
    fg, pool = get("data-heavy-2s", "fastgpu"), get("data-heavy-2s", "actor_pool")
    if fg and pool and timed:
        r = fg.makespan_s / pool.makespan_s
        out.append(("data-heavy-2s", f"fastgpu makespan {r:.2f}x ActorPool (moving beats waiting here; "
                                     "target <= 1.1)", r <= 1.1))
    fg = get("broadcast", "fastgpu")
    if fg:
        size = fg.input_bytes
        if fg.link_mib:
            worst = max(v["down"] for v in fg.link_mib.values()) * MiB / size
            out.append(("broadcast", f"the object entered a node's link at most {worst:.2f} times (target <= 1)",
                        worst <= 1.1))
        else:
            worst = max(fg.copies_per_node.values())
            out.append(("broadcast", f"at most {worst} copy per node (target 1)", worst <= 1))
    return out


def print_table(results: list[Result]) -> None:
    print(f"\n{'regime':10s} {'system':10s} {'makespan s':>10s} {'moved':>6s} {'vs fastgpu':>10s}  link MiB down (per host)")
    fg = {r.regime: r for r in results if r.system == "fastgpu"}
    for r in results:
        f = fg.get(r.regime)
        ratio = f"{f.makespan_s / r.makespan_s:.2f}x" if f and r.system != "fastgpu" else ""
        links = " ".join(f"{v['down']:.0f}" for v in r.link_mib.values()) if r.link_mib else "-"
        print(f"{r.regime:10s} {r.system:10s} {r.makespan_s:10.2f} {r.moved_frac:6.2f} {ratio:>10s}  {links}")
    print("\n(vs fastgpu = fastgpu makespan / this system's makespan; moved = bytes copied across nodes / input bytes)")


# ------------------------------------------------------------------------------------------- modes
def local_mode(args) -> list[Result]:
    """One machine: a ray.cluster_utils.Cluster; the links are free, so the configured 1 Gbit/s is what
    placement believes -- the decisions must be the ones the netns run makes."""
    import ray
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ["FASTGPU_LINK_BANDWIDTH"] = args.link_bandwidth or "1Gbit"
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0, "include_dashboard": False,
                                                      "object_store_memory": 512 * MiB})
    try:
        for _ in range(3):
            c.add_node(num_cpus=4, num_gpus=2, object_store_memory=768 * MiB)
        c.wait_for_nodes()
        ray.init(address=c.address, log_to_driver=False)
        return run_all(args.regimes, args.systems, link_bandwidth=os.environ["FASTGPU_LINK_BANDWIDTH"],
                       declared=args.declared, cold=args.cold)
    finally:
        ray.shutdown()
        c.shutdown()


def netns_mode(args) -> list[Result]:
    from benchmarks.netns.ray_hosts import run_on_netns_hosts

    argv = ["--regimes", ",".join(r.name for r in args.regimes), "--systems", ",".join(args.systems)]
    argv += ["--link-bandwidth", args.link_bandwidth] if args.link_bandwidth else []
    argv += ["--declared"] if args.declared else []
    argv += ["--cold"] if args.cold else []
    return [Result(**r) for r in run_on_netns_hosts(Path(__file__).resolve(), argv, args.rate, args.timeout,
                                                    "locality")]


def inside_mode(args) -> None:
    """The driver, inside the head host's namespace (started by ``netns_mode``)."""
    import ray

    from benchmarks.netns.ray_hosts import link_counters

    ray.init(address=args.inside, _node_ip_address=args.node_ip, log_to_driver=False)
    results = run_all(args.regimes, args.systems, link_counters(args.veths), args.link_bandwidth, args.declared,
                      args.cold)
    Path(args.json).write_text(json.dumps([asdict(r) for r in results]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--local", action="store_true", help="one-machine cluster (no netns, no root)")
    ap.add_argument("--regimes", default=",".join(REGIMES))
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--rate", default="1gbit", help="netns link rate (tc syntax)")
    ap.add_argument("--link-bandwidth", default=None, help="configure fastgpu's link bandwidth (default: "
                    "1Gbit with --local, FASTGPU_LINK_BANDWIDTH / measured on netns hosts)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--declared", action="store_true", help="fastgpu's task declares work_s (default: learned)")
    ap.add_argument("--cold", action="store_true",
                    help="do not write each object store once before the systems run (benchmarks/warm_stores.py)")
    ap.add_argument("--timeout", type=float, default=1200)
    ap.add_argument("--inside", help=argparse.SUPPRESS)
    ap.add_argument("--node-ip", help=argparse.SUPPRESS)
    ap.add_argument("--veths", help=argparse.SUPPRESS)
    args = ap.parse_args()
    try:
        args.regimes = [REGIMES[r] for r in args.regimes.split(",") if r]
    except KeyError as e:
        ap.error(f"unknown regime {e}; choose from {', '.join(REGIMES)}")
    args.systems = [s for s in args.systems.split(",") if s]
    bad = set(args.systems) - set(SYSTEMS)
    if bad:
        ap.error(f"unknown systems {sorted(bad)}; choose from {', '.join(SYSTEMS)}")
    if args.inside:
        inside_mode(args)
        return 0
    if not args.local and os.geteuid() != 0:
        ap.error("netns hosts need root; run as root or pass --local")
    print(f"locality benchmark: {'one machine (link_bandwidth configured)' if args.local else 'netns hosts'}; "
          f"regimes {[r.name for r in args.regimes]}; systems {args.systems}", flush=True)
    results = local_mode(args) if args.local else netns_mode(args)
    print_table(results)
    vs = verdicts(results, timed=not args.local)
    if args.local:
        print("  (one machine: the links cost nothing real, so only the decisions -- bytes moved, copies -- "
              "are checked; the makespan targets apply to the netns run)")
    for reg, text, ok in vs:
        print(f"  [{'PASS' if ok else 'FAIL'}] {reg}: {text}")
    if not all(r.correct for r in results):
        print("  [FAIL] some system returned wrong results")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": [asdict(r) for r in results],
                                               "verdicts": vs, "mode": "local" if args.local else f"netns {args.rate}"},
                                              indent=1))
    return 0 if all(ok for _, _, ok in vs) and all(r.correct for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
