"""A fastgpu-ray driver script for a running Ray cluster: the same file works under both job paths.

    ray submit cluster_configs/aws.yaml examples/cluster_job.py          # SSH: runs on the head node
    ray job submit --address http://HEAD:8265 --working-dir . -- python examples/cluster_job.py

Under ``ray job submit`` the job server sets ``RAY_ADDRESS`` for the driver; under ``ray submit`` the
script runs on the head node, where ``address="auto"`` finds the cluster. It never starts a Ray of its
own: a job that silently ran on a private one-node Ray would look fine and have used none of the cluster.

What it does: prints the cluster (nodes, CPUs, GPUs), then runs a gang with ``fastgpu.train`` (one rank
per GPU, up to ``--workers``; CPU ranks when there are no GPUs). Every rank computes a partial sum and,
with torch installed, the ranks all-reduce it over torch.distributed; without torch each returns its part.
The last line is ``RESULT {json}`` (machine-readable: the job test parses it).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import ray

import fastgpu_ray as fastgpu
from fastgpu_ray.training import get_context, train


def partial_sum(config: dict) -> dict:
    """Rank r sums the integers i in [0, n) with i % world_size == r; all-reduced with torch if present."""
    ctx = get_context()
    part = sum(range(ctx.rank, config["n"], ctx.world_size))
    total = None
    if ctx.backend is not None:
        import torch
        import torch.distributed as dist
        t = torch.tensor([part], dtype=torch.float64)
        dist.all_reduce(t)
        total = int(t.item())
    return {"rank": ctx.rank, "node": ctx.node_id, "part": part, "total": total}


def connect() -> str:
    """The running cluster: ``RAY_ADDRESS`` (set by the job server) or the local head (ray submit). A
    fastgpu session on it gives ``train`` the live GPU view."""
    address = os.environ.get("RAY_ADDRESS") or "auto"
    fastgpu.init(address=address)
    return address


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="fastgpu-ray cluster job")
    ap.add_argument("--workers", type=int, default=2, help="gang size (at most one rank per GPU)")
    ap.add_argument("--n", type=int, default=1_000_000, help="sum 0..n-1")
    args = ap.parse_args(argv)
    address = connect()
    nodes = [n for n in ray.nodes() if n["Alive"]]
    gpus = int(sum(n["Resources"].get("GPU", 0) for n in nodes))
    cpus = int(sum(n["Resources"].get("CPU", 0) for n in nodes))
    print(f"connected via {address}: {len(nodes)} node(s), {cpus} CPU(s), {gpus} GPU(s)", flush=True)
    try:
        import torch  # noqa: F401
        backend = "auto"
    except ImportError:
        backend = None
        print("torch not installed: ranks return partial sums without torch.distributed", flush=True)
    workers = max(1, min(args.workers, gpus)) if gpus else args.workers
    res = train(partial_sum, num_workers=workers, gpus_per_worker=1 if gpus else 0,
                config={"n": args.n}, backend=backend)
    total = res[0]["total"] if res.backend else sum(r["part"] for r in res)
    for w in res.workers:
        print(f"rank {w.rank}: node {w.node_id[:12]} gpus {list(w.gpu_ids)} part {res[w.rank]['part']}", flush=True)
    ok = total == args.n * (args.n - 1) // 2
    print("RESULT " + json.dumps({"ok": ok, "total": total, "world_size": len(res), "backend": res.backend,
                                  "nodes": len(nodes), "gpus": gpus, "ranks_nodes": res.nodes(),
                                  "snapshot_source": res.snapshot_source}), flush=True)
    fastgpu.shutdown()
    ray.shutdown()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
