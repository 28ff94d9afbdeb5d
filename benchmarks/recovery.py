"""Two ways to make the ref a user holds live on the GPU node, measured side by side (issue 8, item 3):

    python benchmarks/recovery.py [--n 48] [--mib 8] [--work 0.1]

(a) node scheduler actors (what fastgpu builds): one async actor per GPU node, ``max_restarts=-1``,
    calls with ``max_task_retries=-1``, restricted to GPU nodes by ``label_selector`` (home node, then the
    other GPU nodes as fallback); a call runs on a GPU actor of the scheduler's node and returns its value.
    A scheduler restarted away from home forwards to the scheduler of the node it landed on.
(b) a relay Ray task per subtask (``max_retries``), restricted the same way, which calls a GPU actor of
    the node it runs on and returns the value; Ray's task retries and lineage reconstruction apply.

Plain Ray only (no fastgpu), on a local cluster (head without GPUs + 3 nodes x 2 logical GPUs, a killed
node declared dead after ~3 s). Per mechanism: submit rate (calls returned/s) and completion rate for
``--n`` tiny calls; then ``--n`` calls returning ``--mib`` MiB each, node 0 killed once a quarter are
done: time from the kill to the last result, results correct, copies of results beyond one (bytes moved).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MiB = 2**20


def build(mechanism: str, node_ids: list[str]):
    """Start the GPU actors (and schedulers for (a)); returns ``call(i, nbytes, work_s) -> ObjectRef``."""
    import ray

    @ray.remote(num_gpus=1, num_cpus=0)
    class Gpu:
        def run(self, i, nbytes, work_s):
            time.sleep(work_s)
            a = np.zeros(max(nbytes // 8, 1))
            a[0] = i
            return a, ray.get_runtime_context().get_node_id()

    def sel(home):
        others = [n for n in node_ids if n != home]
        return dict(label_selector={"ray.io/node-id": home},
                    fallback_strategy=[{"label_selector": {"ray.io/node-id": "in(" + ",".join(others) + ")"}}])

    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as Pin

    gpus = {n: [Gpu.options(name=f"gpu-{mechanism}-{n}-{k}", namespace="recovery", lifetime=None,
                            scheduling_strategy=Pin(n, soft=False)).remote() for k in range(2)] for n in node_ids}
    ray.get([g.run.remote(0, 8, 0.0) for gs in gpus.values() for g in gs])

    if mechanism == "a":
        @ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1, max_concurrency=1000)
        class Sched:
            def __init__(self, home):
                self.home, self.here = home, ray.get_runtime_context().get_node_id()
                self.k = 0

            async def run(self, i, nbytes, work_s):
                if self.here != self.home:  # restarted elsewhere: the scheduler of this node does it
                    return await ray.get_actor(f"sched-{self.here}", namespace="recovery").run.remote(i, nbytes, work_s)
                self.k += 1
                g = ray.get_actor(f"gpu-a-{self.here}-{self.k % 2}", namespace="recovery")
                return await g.run.remote(i, nbytes, work_s)

        scheds = {n: Sched.options(name=f"sched-{n}", namespace="recovery", **sel(n)).remote(n) for n in node_ids}
        ray.get([s.run.remote(0, 8, 0.0) for s in scheds.values()])
        return lambda i, nb, w: scheds[node_ids[i % len(node_ids)]].run.remote(i, nb, w)

    @ray.remote(num_cpus=0, max_retries=-1)
    def relay(i, nbytes, work_s):
        here = ray.get_runtime_context().get_node_id()
        g = ray.get_actor(f"gpu-b-{here}-{i % 2}", namespace="recovery")
        return ray.get(g.run.remote(i, nbytes, work_s))

    relays = {n: relay.options(**sel(n)) for n in node_ids}
    ray.get([relays[n].remote(0, 8, 0.0) for n in node_ids])
    return lambda i, nb, w: relays[node_ids[i % len(node_ids)]].remote(i, nb, w)


def measure(mechanism: str, n: int, mib: int, work_s: float) -> dict:
    import ray

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from conftest import LocalCluster

    c = LocalCluster()
    try:
        c.connect()
        ids = c.node_ids()
        call = build(mechanism, ids)
        t0 = time.perf_counter()
        refs = [call(i, 8, 0.0) for i in range(n)]
        t1 = time.perf_counter()
        assert [int(v[0][0]) for v in ray.get(refs)] == list(range(n))
        t2 = time.perf_counter()
        out = {"submit_per_s": n / (t1 - t0), "done_per_s": n / (t2 - t0)}
        refs = [call(i, mib * MiB, work_s) for i in range(n)]
        while len(ray.wait(refs, num_returns=n, timeout=0.1, fetch_local=False)[0]) < n // 4:
            pass
        victim = c.nodes[0]
        t0 = time.perf_counter()
        c.cluster.remove_node(victim, allow_graceful=False)
        vals = ray.get(refs, timeout=300)
        out["recover_s"] = time.perf_counter() - t0
        out["correct"] = [int(v[0][0]) for v in vals] == list(range(n)) and victim.node_id not in {v[1] for v in vals}
        del vals
        refs2 = [call(i, mib * MiB, work_s) for i in range(n)]
        ray.wait(refs2, num_returns=n, fetch_local=False)
        locs = ray.experimental.get_object_locations(refs2)
        out["moved_frac"] = sum(max(0, len(v["node_ids"]) - 1) for v in locs.values()) / n
        head = ray.get_runtime_context().get_node_id()
        out["on_driver"] = sum(head in v["node_ids"] for v in locs.values())
        return out
    finally:
        c.shutdown()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--mib", type=int, default=8)
    ap.add_argument("--work", type=float, default=0.1)
    a = ap.parse_args()
    if a.n < 4 or a.mib < 1 or a.work < 0:
        ap.error("--n >= 4, --mib >= 1, --work >= 0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    rows = {}
    for m in ("a", "b"):
        rows[m] = measure(m, a.n, a.mib, a.work)
        print(f"  ({m}) {rows[m]}", flush=True)
    print(f"\n{a.n} calls; {a.mib} MiB results, {a.work}s each for the recovery run; {os.cpu_count()} CPU cores")
    print(f"{'mechanism':<28}{'submit/s':>9}{'done/s':>8}{'recover s':>11}{'correct':>9}{'moved':>7}{'on driver':>10}")
    names = {"a": "(a) node scheduler actors", "b": "(b) relay task per subtask"}
    for m, r in rows.items():
        print(f"{names[m]:<28}{r['submit_per_s']:>9.0f}{r['done_per_s']:>8.0f}{r['recover_s']:>11.1f}"
              f"{str(r['correct']):>9}{r['moved_frac']:>7.2f}{r['on_driver']:>10}")
    return 0 if all(r["correct"] for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
