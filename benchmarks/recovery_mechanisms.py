"""Issue 8's two recovery mechanisms for node-local scheduling, built in plain Ray and measured side by side.

    python benchmarks/recovery_mechanisms.py [--n 2000] [--calls 60] [--mib 8] [--work 0.3] [--reps 1]

Both hand each call to a GPU worker on the node chosen for it, so that its result is stored where it was
computed, and both rely on Ray alone to survive a node's death:

  (a) ``actor``: one scheduler actor per GPU node (``max_restarts=-1, max_task_retries=-1``, soft node
      affinity to its home node, a custom resource only GPU nodes have so it can never restart on the head);
      a call is a method call that forwards to the GPU worker of the node the actor runs on now.
  (b) ``relay``: one Ray task per call (``max_retries``, the same soft affinity and resource) that looks up
      the GPU worker of the node it runs on and waits for it.

This is the runtime's mechanism (a) stripped to its transport (no queue, placement or batching), so the
two differ only in the mechanism. Per mechanism, on a fresh local cluster (head without GPUs + 3 nodes x 2
logical GPUs, health checks every second, 3 misses):

* submit / done rate: ``--n`` tiny calls round-robin over the nodes (calls returned per second, results
  per second) and the most Ray worker processes alive at once during it (``ray::`` processes on this
  machine; a relay task blocked in ``ray.get`` holds a worker process);
* recovery: ``--calls`` calls of ``--work`` seconds returning ``--mib`` MiB each, round-robin over the
  nodes; once a third have finished, the node holding the most finished results is killed; reported: that
  the killed node held the only copy of some finished results, the time from the kill to the last result,
  results correct, runs (so re-runs = runs - calls), results stored on the head (must be 0) and the result
  bytes read across nodes before the driver's own ``ray.get`` (0 when every result is stored where it was
  computed; results with no location at that moment are counted apart).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import threading
import time

import numpy as np


def ray_process_count() -> int:
    """Ray worker processes on this machine (their title starts with ``ray::``)."""
    n = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read(5) == b"ray::":
                    n += 1
        except OSError:
            continue
    return n


class PeakProcesses:
    """Samples ``ray_process_count`` every 0.1 s in a thread; ``peak`` after ``stop``."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, ray_process_count())
            time.sleep(0.1)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def build(mechanism: str, gpu_nodes: list[str]):
    """Start the GPU workers and the mechanism; returns ``call(i, node, nbytes, work_s) -> ObjectRef``, the
    run counter and the handles to keep alive (an actor dies with the last handle to it)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as Affinity

    @ray.remote(num_cpus=0)
    class Runs:
        def __init__(self):
            self.n = 0

        def add(self):
            self.n += 1

        def get(self):
            return self.n

    # One worker per node stands in for its two GPU workers (two calls at a time).
    @ray.remote(num_gpus=2, num_cpus=0, max_concurrency=2)
    class GpuWorker:
        def __init__(self, runs):
            self.runs = runs

        def run(self, i, nbytes, work_s):
            self.runs.add.remote()
            time.sleep(work_s)
            return np.full(max(nbytes // 8, 1), float(i))

    def local_worker():
        return ray.get_actor(f"gpu-{ray.get_runtime_context().get_node_id()}")

    head = ray.get_runtime_context().get_node_id()  # the driver's node: not killed, counts every run
    runs = Runs.options(scheduling_strategy=Affinity(head, soft=False)).remote()
    workers = [GpuWorker.options(name=f"gpu-{n}", scheduling_strategy=Affinity(n, soft=False)).remote(runs)
               for n in gpu_nodes]
    ray.get([w.__ray_ready__.remote() for w in workers])

    if mechanism == "actor":
        @ray.remote(num_cpus=0, resources={"gpu_host": 1}, max_restarts=-1, max_task_retries=-1,
                    max_concurrency=64)
        class NodeScheduler:
            def __init__(self):
                self.worker = local_worker()  # after a restart: the worker of the node it restarted on

            def run(self, i, nbytes, work_s):
                return ray.get(self.worker.run.remote(i, nbytes, work_s))

        scheds = {n: NodeScheduler.options(scheduling_strategy=Affinity(n, soft=True)).remote() for n in gpu_nodes}
        ray.get([s.__ray_ready__.remote() for s in scheds.values()])
        return (lambda i, node, nbytes, work_s: scheds[node].run.remote(i, nbytes, work_s)), runs, workers

    @ray.remote(num_cpus=0, resources={"gpu_host": 0.01}, max_retries=3)
    def relay(i, nbytes, work_s):
        return ray.get(local_worker().run.remote(i, nbytes, work_s))

    opts = {n: relay.options(scheduling_strategy=Affinity(n, soft=True)) for n in gpu_nodes}
    return (lambda i, node, nbytes, work_s: opts[node].remote(i, nbytes, work_s)), runs, workers


def rates(call, nodes: list[str], n: int) -> dict:
    import ray

    with PeakProcesses() as peak:
        t0 = time.perf_counter()
        refs = [call(i, nodes[i % len(nodes)], 0, 0.0) for i in range(n)]
        t1 = time.perf_counter()
        out = ray.get(refs)
        t2 = time.perf_counter()
    assert [float(r[0]) for r in out] == [float(i) for i in range(n)], "wrong results"
    return {"submit_per_s": n / (t1 - t0), "done_per_s": n / (t2 - t0), "peak_ray_processes": peak.peak}


def recovery(lc, call, runs, calls: int, mib: float, work_s: float) -> dict:
    import ray
    from ray.experimental import get_object_locations

    nodes = list(lc.node_ids)
    head = ray.get_runtime_context().get_node_id()
    nbytes = int(mib * 2**20)
    refs = [call(i, nodes[i % len(nodes)], nbytes, work_s) for i in range(calls)]
    done, _ = ray.wait(refs, num_returns=calls // 3, fetch_local=False, timeout=120)
    where = get_object_locations(done)
    only: dict[str, int] = {}
    for r in done:
        locs = where[r]["node_ids"]
        if len(locs) == 1:
            only[locs[0]] = only.get(locs[0], 0) + 1
    victim = max(nodes, key=lambda n: only.get(n, 0))
    handles = {n.node_id: n for n in lc.cluster.worker_nodes}
    t_kill = time.perf_counter()
    lc.cluster.remove_node(handles[victim], allow_graceful=False)
    ready, _ = ray.wait(refs, num_returns=calls, fetch_local=False, timeout=300)
    t_done = time.perf_counter()
    where = get_object_locations(refs)
    on_head = sum(head in where[r]["node_ids"] for r in refs)
    copied = sum((where[r]["object_size"] or 0) * max(len(where[r]["node_ids"]) - 1, 0) for r in refs)
    unlocated = sum(not where[r]["node_ids"] for r in refs)  # e.g. still being recomputed
    ok = len(ready) == calls and [float(a[0]) for a in ray.get(refs)] == [float(i) for i in range(calls)]
    return {"victim_only_copies": only.get(victim, 0), "kill_to_last_s": t_done - t_kill, "correct": ok,
            "runs": ray.get(runs.get.remote()), "calls": calls, "results_on_head": on_head,
            "bytes_copied_mib": copied / 2**20, "unlocated": unlocated}


@contextlib.contextmanager
def started(mechanism: str, store_mib: int):
    """A fresh local cluster with ``mechanism`` built and warm (a first call per node starts what it
    needs); yields (cluster, call, run counter)."""
    import ray

    from fastgpu_ray.local_cluster import LocalCluster

    with LocalCluster(nodes=3, gpus_per_node=2, object_store_mib=store_mib, resources={"gpu_host": 100}) as lc:
        call, runs, keep = build(mechanism, lc.node_ids)  # ``keep`` holds the GPU workers while we run
        ray.get([call(0, n, 0, 0.0) for n in lc.node_ids])
        yield lc, call, runs


def one(mechanism: str, a) -> dict:
    import ray

    store = max(300, int(3 * a.calls * a.mib) + 200)
    with started(mechanism, store) as (lc, call, _):
        out = rates(call, lc.node_ids, a.n)
    with started(mechanism, store) as (lc, call, runs):
        base = ray.get(runs.get.remote())
        out.update(recovery(lc, call, runs, a.calls, a.mib, a.work))
        out["runs"] -= base
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="tiny calls for the rates")
    ap.add_argument("--calls", type=int, default=60, help="calls in the recovery run")
    ap.add_argument("--mib", type=float, default=8.0, help="result size in the recovery run")
    ap.add_argument("--work", type=float, default=0.3, help="seconds per call in the recovery run")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--mechanisms", default="actor,relay")
    a = ap.parse_args(argv)
    mechs = [m.strip() for m in a.mechanisms.split(",") if m.strip()]
    if a.n < 1 or a.calls < 6 or a.mib <= 0 or a.work < 0 or a.reps < 1:
        ap.error("--n >= 1, --calls >= 6, --mib > 0, --work >= 0, --reps >= 1")
    if not mechs or set(mechs) - {"actor", "relay"}:
        ap.error("--mechanisms: a comma list of actor, relay")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    rows = []
    for rep in range(a.reps):
        for m in mechs:
            r = one(m, a)
            rows.append((m, r))
            print(f"[rep {rep + 1}] {m}: {r}", flush=True)
    print(f"\n{a.n} tiny calls; recovery: {a.calls} calls x {a.work:g} s x {a.mib:g} MiB, the node with the most "
          f"finished only-copies killed after a third; {os.cpu_count()} CPU cores")
    print(f"{'mechanism':<10}{'submit/s':>9}{'done/s':>8}{'peak procs':>11}{'only copies':>12}"
          f"{'kill->last s':>13}{'correct':>8}{'re-runs':>8}{'on head':>8}{'copied MiB':>11}{'unlocated':>10}")
    for m, r in rows:
        print(f"{m:<10}{r['submit_per_s']:>9.0f}{r['done_per_s']:>8.0f}{r['peak_ray_processes']:>11}"
              f"{r['victim_only_copies']:>12}{r['kill_to_last_s']:>13.1f}{str(r['correct']):>8}"
              f"{r['runs'] - r['calls']:>8}{r['results_on_head']:>8}{r['bytes_copied_mib']:>11.0f}{r['unlocated']:>10}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
