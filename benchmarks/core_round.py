"""The dispatch core at the openb trace's scale: its placement state kept between rounds against rebuilt
every round, side by side in one run.

    python benchmarks/core_round.py [--nodes 1213] [--repeat 20] [--subtasks 3000]

A ``DispatchCore`` (Ray-free) over the GPU nodes of the openb trace (``placement/traces/openb``: 1,213
nodes, their GPU counts and models, emulated readings) and a fake backend whose workers start and finish
at once. Printed, per round (median of ``--repeat``):
  state, one node changed   a subtask started since the last round: the kept state (``LiveState``,
                            rewrites that node's row) against a rebuild (``build_snapshot`` then
                            ``ClusterState.from_snapshot``: what every round did before)
  state, every node changed a telemetry refresh replaced every reading: both rebuild every row
  one placement             ``Scheduler.place(explain=True)``, the explanation's candidates capped at
                            ``EXPLAIN_TOP`` against one candidate per feasible node (before)
and one placement without an explanation, as the trace simulator places a pod. Then ``--subtasks``
subtasks (declared 10 ms, not batched) through the core's own loops: CPU per subtask.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from placement import ClusterState, Demand, Scheduler, registry  # noqa: E402
from placement import scheduler as sched_mod  # noqa: E402
from placement.sim.trace import load_nodes, trace_paths  # noqa: E402
from fastgpu_ray.core.dispatch import DispatchCore, Outcome, Subtask  # noqa: E402
from fastgpu_ray.core.telemetry import NodeInfo, NodeTelemetry, build_snapshot  # noqa: E402
from fastgpu_ray.core.worker_pool import WorkerInfo  # noqa: E402
from fastgpu_ray.gpu_sources import EmulatedSource  # noqa: E402
from fastgpu_ray.options import make_options  # noqa: E402


class InstantBackend:
    """The openb nodes with emulated GPUs of 80 GiB; a claimed worker is up at once and runs at once."""

    def __init__(self, limit: int) -> None:
        nodes = load_nodes(trace_paths("default")[0])
        self.infos = [NodeInfo(name, True, cpu / 1000, cpu / 1000, float(int(mem) << 20), int(g), int(g))
                      for name, cpu, mem, g in zip(nodes.names, nodes.cpu, nodes.mem, nodes.gpus)][:limit]
        self.sources = {n.node_id: EmulatedSource(n.gpu_total, 81920) for n in self.infos}

    def nodes(self):
        return self.infos

    async def read(self, node):
        return NodeTelemetry(node.node_id, True, tuple(self.sources[node.node_id].read()))

    async def claim(self, node, count, ready):
        for g in range(count):
            ready(WorkerInfo(handle=None, node_id=node.node_id, gpu_index=g, pid=1000 + g))

    async def run(self, worker, batch):
        return [Outcome(True, None) for _ in batch]

    async def release(self, worker):
        pass

    def fail(self, message, exc):
        return exc


def median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def subtask(i: int) -> Subtask:
    return Subtask(f"s{i}", make_options(num_gpus=1, work_s=0.01, batch=False), "fn", None, None)


async def main(args) -> int:
    backend = InstantBackend(args.nodes)
    core = DispatchCore(backend, telemetry_period_s=1.0)
    await core.refresh(pending_demand=False)
    nodes = core.nodes
    gpus = sum(n.gpu_total for n in nodes)
    print(f"{len(nodes)} nodes, {gpus} GPUs (openb), fake workers; median of {args.repeat}")

    def rebuilt():
        st = ClusterState.from_snapshot(build_snapshot(core._within_share(), core.telemetry, core._holds(),
                                                       core.busy_until(core.clock())))
        st.max_side_by_side = core.max_slots
        return st

    def one_changed():  # a subtask's reservation on one node (a different one each time)
        one_changed.k = (getattr(one_changed, "k", 0) + 1) % len(nodes)
        core.reservations.open((nodes[one_changed.k].node_id, 0))

    core.placement_state()
    rows = []
    for what, change in (("one node changed", one_changed), ("every node changed", None)):
        def kept():
            (change or refresh_all)()
            core.placement_state()

        def full():
            (change or refresh_all)()
            rebuilt()

        def refresh_all():
            core.telemetry = {k: NodeTelemetry(t.node_id, t.emulated, t.gpus, t.fastgpu_pids, time.time())
                              for k, t in core.telemetry.items()}
        a, b = median_ms(kept, args.repeat), median_ms(full, args.repeat)
        rows.append((f"state per round, {what}", a, b))
    assert (core.placement_state().free == rebuilt().free).all()  # (the same state either way)

    d = Demand("d", num_gpus=1, work_s=0.01)
    state = core.placement_state()
    pol = registry.create(core.policy)
    pol.prepare(state, [d])
    s = Scheduler(state, pol)
    bare = median_ms(lambda: s.place(d, bind=False, reasons=False), args.repeat)
    capped = median_ms(lambda: s.place(d, explain=True, bind=False), args.repeat)
    top, sched_mod.EXPLAIN_TOP = sched_mod.EXPLAIN_TOP, 1 << 30
    every = median_ms(lambda: s.place(d, explain=True, bind=False), args.repeat)
    sched_mod.EXPLAIN_TOP = top
    rows.append((f"one placement, explained ({top} candidates kept vs all)", capped, every))

    print(f"\n{'':<58s} {'kept':>9s} {'rebuilt':>9s} {'ratio':>7s}")
    for name, a, b in rows:
        print(f"{name:<58s} {a:8.2f}ms {b:8.2f}ms {a / b:6.2f}x")
    print(f"(one placement unexplained, as the trace simulator places a pod: {bare:.2f} ms)")

    await core.start()
    c0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(core.submit(subtask(i)) for i in range(args.subtasks)))
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    print(f"\n{args.subtasks} subtasks through the core's loops (kept state): {wall:.2f} s wall, "
          f"{1000 * cpu / args.subtasks:.2f} ms CPU per subtask, rows rewritten {core.live.rebuilt}")
    await core.shutdown()
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=1213, help="the first N nodes of the trace (default all)")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--subtasks", type=int, default=3000)
    args = ap.parse_args()
    if args.nodes < 1 or args.repeat < 1 or args.subtasks < 0:
        ap.error("--nodes and --repeat must be at least 1, --subtasks at least 0")
    sys.exit(asyncio.run(main(args)))
