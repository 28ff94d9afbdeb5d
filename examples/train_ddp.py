"""Data-parallel training across several nodes with ``fastgpu.train`` and PyTorch DDP.

A small MLP learns a synthetic regression task (a fixed random "teacher" network plus noise) that every
rank generates from the same seed; a ``DistributedSampler`` gives each rank its own shard. With GPUs the
ranks use NCCL; on CPUs (or emulated GPUs) gloo.

    python examples/train_ddp.py                        # local 2-node cluster with emulated GPUs
    python examples/train_ddp.py --address auto         # an existing cluster (e.g. under `ray submit`)
    python examples/train_ddp.py --workers 4 --gpus-per-worker 0   # CPU-only ranks

Needs torch: ``pip install "fastgpu-ray[train]"``. Prints one line per epoch (mean loss over all ranks)
and checks, at the end, that every rank holds the same parameters and that the loss went down.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import ray

import fastgpu_ray as fastgpu
from fastgpu_ray.training import TrainResults, get_context, train

FEATURES, HIDDEN = 16, 32


def make_dataset(n: int, seed: int):
    """``n`` samples of y = teacher(x) + noise; identical on every rank (same seed)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, FEATURES, generator=g)
    w1, w2 = torch.randn(FEATURES, HIDDEN, generator=g) / FEATURES ** 0.5, torch.randn(HIDDEN, 1, generator=g)
    y = torch.tanh(x @ w1) @ w2 / HIDDEN ** 0.5 + 0.01 * torch.randn(n, 1, generator=g)
    return torch.utils.data.TensorDataset(x, y)


def train_fn(config: dict) -> dict:
    """One rank: DDP over the shared process group that ``fastgpu.train`` set up."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    from torch.utils.data import DataLoader, DistributedSampler

    torch.set_num_threads(1)  # several ranks share each node's cores
    ctx = get_context()
    device = torch.device(ctx.device)
    torch.manual_seed(config["seed"] + ctx.rank)  # different on purpose: DDP must broadcast rank 0's init
    model = torch.nn.Sequential(torch.nn.Linear(FEATURES, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, 1))
    ddp = DDP(model.to(device), device_ids=[device.index] if device.type == "cuda" else None)
    data = make_dataset(config["samples"], config["seed"])
    sampler = DistributedSampler(data, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=config["seed"])
    loader = DataLoader(data, batch_size=config["batch_size"], sampler=sampler)
    opt = torch.optim.SGD(ddp.parameters(), lr=config["lr"], momentum=0.9)
    losses, first_step_at = [], None
    for epoch in range(config["epochs"]):
        sampler.set_epoch(epoch)
        total = torch.zeros(2, device=device)  # sum of loss * batch, samples
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = torch.nn.functional.mse_loss(ddp(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if first_step_at is None:
                first_step_at = time.time()
            total += torch.stack([loss.detach() * len(x), torch.tensor(float(len(x)), device=device)])
        dist.all_reduce(total)  # the epoch's mean loss over every rank's samples
        losses.append((total[0] / total[1]).item())
    params = torch.cat([p.detach().flatten().cpu() for p in model.parameters()])
    return {"rank": ctx.rank, "node": ctx.node_id, "losses": losses, "params": params.tolist(),
            "first_step_at": first_step_at, "pid": os.getpid()}


DEFAULT_CONFIG = {"samples": 2048, "batch_size": 64, "epochs": 6, "lr": 0.05, "seed": 0}


def run(workers: int, gpus_per_worker: int, config: dict | None = None, **train_kwargs) -> TrainResults:
    """Train on the connected cluster; returns the per-rank reports in rank order."""
    if __name__ != "__main__":  # imported (tests): ranks cannot import this file, so ship train_fn by value
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return train(train_fn, num_workers=workers, gpus_per_worker=gpus_per_worker,
                 config={**DEFAULT_CONFIG, **(config or {})}, **train_kwargs)


def check(results: TrainResults) -> list[str]:
    """What went wrong, if anything: ranks disagree on the parameters, or the loss did not go down."""
    problems = []
    ref = results[0]["params"]
    differ = [r["rank"] for r in results if r["params"] != ref]
    if differ:
        problems.append(f"rank(s) {differ} hold different parameters from rank 0")
    losses = results[0]["losses"]
    if not losses[-1] < losses[0]:
        problems.append(f"loss did not go down: {losses[0]:.4f} -> {losses[-1]:.4f}")
    return problems


def start_local_cluster(nodes: int, cpus: int, gpus: int):
    """A multi-node Ray cluster on this machine: a head without GPUs plus ``nodes`` workers, each with
    ``gpus`` emulated (logical) GPUs."""
    from ray.cluster_utils import Cluster
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway local cluster
    cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=1, num_gpus=0, include_dashboard=False))
    for _ in range(nodes):
        cluster.add_node(num_cpus=cpus, num_gpus=gpus)
    cluster.wait_for_nodes()
    return cluster


def report(results: TrainResults) -> None:
    gpus = "EMULATED GPUs (logical Ray GPUs, no CUDA)" if results.emulated else "GPUs as reported"
    print(f"backend={results.backend}  world_size={len(results)}  placement source: {results.snapshot_source}; "
          f"{gpus}")
    for w in results.workers:
        print(f"  rank {w.rank}: node {w.node_id[:12]} local_rank {w.local_rank} gpus {list(w.gpu_ids)}")
    for epoch, loss in enumerate(results[0]["losses"]):
        print(f"  epoch {epoch}: mean loss {loss:.4f}")
    t = results.timings
    print(f"  call -> ranks set up {t['setup_s']:.1f} s, total {t['total_s']:.1f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--address", default=None, help="Ray cluster to use ('auto' under ray submit); "
                    "default: start a local multi-node cluster")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--gpus-per-worker", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=DEFAULT_CONFIG["epochs"])
    ap.add_argument("--nodes", type=int, default=2, help="local cluster: worker nodes")
    ap.add_argument("--gpus-per-node", type=int, default=2, help="local cluster: emulated GPUs per node")
    args = ap.parse_args(argv)
    cluster = None
    if args.address is None:
        cluster = start_local_cluster(args.nodes, cpus=2, gpus=args.gpus_per_node)
    try:
        # A fastgpu session gives train its live GPU view (NVML, or emulated GPUs labelled as such).
        fastgpu.init(address=cluster.address if cluster else args.address)
        results = run(args.workers, args.gpus_per_worker, {"epochs": args.epochs})
    finally:
        fastgpu.shutdown()
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
    report(results)
    problems = check(results)
    for p in problems:
        print("FAILED:", p)
    if not problems:
        print(f"OK: {len(results)} ranks on {len(set(results.nodes()))} node(s) hold identical parameters; "
              f"loss {results[0]['losses'][0]:.4f} -> {results[0]['losses'][-1]:.4f}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
