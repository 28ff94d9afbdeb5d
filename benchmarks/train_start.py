"""Training start-up and load avoidance: fastgpu.train vs Ray Train's TorchTrainer, same cluster, same run.

    python benchmarks/train_start.py [--workers 4] [--nodes 3] [--repeats 3] [--json out.json]

One local multi-node Ray cluster (``ray.cluster_utils.Cluster``): a head without GPUs and ``--nodes``
workers with 2 CPUs and 2 emulated GPUs each; a fastgpu session (``fastgpu.init``) on it. Both frameworks
run the same DDP training loop (gloo; emulated GPUs have no CUDA) with ``--workers`` ranks of 1 GPU + 1 CPU.

1. **Start-up.** Seconds from the call (``fastgpu.train(...)`` / ``TorchTrainer(...).fit()``) to the end of
   rank 0's first optimiser step, measured with the wall clock of this one machine. Runs alternate
   (fastgpu, Ray Train, fastgpu, ...) so drift on the shared cores hits both; medians and the ratio
   fastgpu / Ray Train are printed (target <= 1.0).
2. **Load avoidance.** One round per GPU node: both GPUs of that node get an external load
   (``fastgpu.set_emulated_gpu``, util 0.9, one outside process), each framework trains once, the load
   is cleared. Printed per round and in total: how many ranks landed on a loaded GPU, and the step-time
   slowdown the cost model (``placement.cost.slowdown``) gives the gang for it (a DDP step waits for its
   slowest rank). Ray Train does not see the load, so whether it hits the loaded node depends on which
   node it happens to prefer; rotating the load over every node gives it every chance. fastgpu sees it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

# Run from a checkout: import this checkout's packages even where fastgpu-ray is not installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ray  # noqa: E402

import fastgpu_ray as fastgpu  # noqa: E402
from fastgpu_ray.training import train  # noqa: E402
from placement.cost import slowdown  # noqa: E402

LOAD = 0.9


@ray.remote(num_cpus=0)
class Where:
    """Collects each Ray Train rank's report (Ray Train 2.60's Result carries no metrics without a
    checkpoint, and only rank 0's with one)."""

    def __init__(self) -> None:
        self.seen: dict[int, dict] = {}

    def add(self, report: dict) -> None:
        self.seen[report["rank"]] = report

    def get(self) -> dict[int, dict]:
        return self.seen


def loop(config: dict) -> dict:
    """The same DDP loop for both frameworks; the process group is already initialised by the caller."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    torch.set_num_threads(1)
    rank = dist.get_rank()
    torch.manual_seed(rank)
    model = DDP(torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    first = None
    for _ in range(config["steps"]):
        x = torch.randn(64, 32)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if first is None:
            first = time.time()
    report = {"rank": rank, "first_step_at": first, "node": ray.get_runtime_context().get_node_id(),
              "gpus": tuple(int(g) for g in ray.get_gpu_ids())}
    if config.get("where") is not None:
        ray.get(config["where"].add.remote(report))
    return report


def ray_train_loop(config: dict) -> None:
    loop(config)


def run_fastgpu(workers: int, steps: int) -> tuple[float, list[tuple[str, tuple[int, ...]]]]:
    t0 = time.time()
    res = train(loop, num_workers=workers, gpus_per_worker=1, config={"steps": steps}, backend="gloo")
    return res[0]["first_step_at"] - t0, [(r["node"], r["gpus"]) for r in res]


def run_ray_train(workers: int, steps: int, storage: str, name: str) -> tuple[float, list[tuple[str, tuple[int, ...]]]]:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    where = Where.remote()
    t0 = time.time()
    trainer = TorchTrainer(ray_train_loop, train_loop_config={"steps": steps, "where": where},
                           scaling_config=ScalingConfig(num_workers=workers, use_gpu=True,
                                                        resources_per_worker={"CPU": 1, "GPU": 1}),
                           torch_config=TorchConfig(backend="gloo"),
                           run_config=RunConfig(storage_path=storage, name=name))
    trainer.fit()
    seen = ray.get(where.get.remote())
    ray.kill(where)
    if sorted(seen) != list(range(workers)):
        raise RuntimeError(f"Ray Train reported ranks {sorted(seen)}, expected 0..{workers - 1}")
    return seen[0]["first_step_at"] - t0, [(seen[r]["node"], seen[r]["gpus"]) for r in sorted(seen)]


def on_loaded(placed: list[tuple[str, tuple[int, ...]]], loaded_node: str) -> int:
    return sum(1 for node, _ in placed if node == loaded_node)


def wait_released(timeout_s: float = 60.0) -> None:
    """Until every CPU and GPU is free again: Ray Train tears its controller and workers down
    asynchronously after fit() returns, and the next run must start from the same empty cluster."""
    total = ray.cluster_resources()
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        avail = ray.available_resources()
        if all(avail.get(k, 0) >= total.get(k, 0) for k in ("CPU", "GPU")):
            return
        time.sleep(0.2)
    print(f"  warning: resources still held after {timeout_s:g} s: {ray.available_resources()}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    if args.workers > 2 * (args.nodes - 1):
        ap.error("--workers must fit on the unloaded nodes: at most 2 * (nodes - 1)")
    from ray.cluster_utils import Cluster
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=1, num_gpus=0, include_dashboard=False))
    for _ in range(args.nodes):
        cluster.add_node(num_cpus=2, num_gpus=2)
    cluster.wait_for_nodes()
    storage = tempfile.mkdtemp(prefix="fg_train_bench_")
    out: dict = {"workers": args.workers, "nodes": args.nodes, "repeats": args.repeats, "steps": args.steps}
    try:
        fastgpu.init(address=cluster.address, log_to_driver=False)  # keep Ray Train's worker chatter out
        print(f"cluster: head + {args.nodes} nodes x (2 CPU, 2 emulated GPUs); {args.workers} ranks x "
              f"(1 GPU, 1 CPU), gloo, {args.steps} steps. EMULATED GPUs.", flush=True)
        fg, rt = [], []
        for i in range(args.repeats):
            s, _ = run_fastgpu(args.workers, args.steps)
            fg.append(s)
            wait_released()
            s, _ = run_ray_train(args.workers, args.steps, storage, f"start{i}")
            rt.append(s)
            wait_released()
            print(f"  repeat {i}: call -> first step  fastgpu {fg[-1]:.2f} s   Ray Train {rt[-1]:.2f} s", flush=True)
        mf, mr = statistics.median(fg), statistics.median(rt)
        print(f"start-up (median of {args.repeats}): fastgpu.train {mf:.2f} s, TorchTrainer {mr:.2f} s, "
              f"ratio {mf / mr:.2f} (target <= 1.0)")
        out["startup"] = {"fastgpu_s": fg, "ray_train_s": rt, "median_fastgpu_s": mf, "median_ray_train_s": mr,
                          "ratio": mf / mr}

        # Ray does not see the load, so which node its PACK group lands on is independent of it: load
        # each node in turn, so that every node Ray might prefer gets its turn at being the loaded one.
        rounds = []
        for loaded in fastgpu.gpu_nodes():
            for g in range(2):
                fastgpu.set_emulated_gpu(loaded, g, util=LOAD, processes=1)
            time.sleep(2.5)  # monitors poll about once a second: let the load show in the live snapshot
            _, fg_placed = run_fastgpu(args.workers, args.steps)
            wait_released()
            _, rt_placed = run_ray_train(args.workers, args.steps, storage, f"loaded{len(rounds)}")
            wait_released()
            for g in range(2):
                fastgpu.set_emulated_gpu(loaded, g, util=0.0, processes=0)
            fg_bad, rt_bad = on_loaded(fg_placed, loaded), on_loaded(rt_placed, loaded)
            est = {k: slowdown(LOAD) if n else 1.0 for k, n in (("fastgpu", fg_bad), ("ray_train", rt_bad))}
            print(f"node {loaded[:12]} loaded (both GPUs util {LOAD}, EMULATED): ranks on loaded GPUs "
                  f"fastgpu {fg_bad}/{args.workers}, TorchTrainer {rt_bad}/{args.workers}; est. step slowdown "
                  f"(cost model, slowest rank) fastgpu {est['fastgpu']:.1f}x, TorchTrainer {est['ray_train']:.1f}x",
                  flush=True)
            rounds.append({"loaded_node": loaded, "fastgpu_on_loaded": fg_bad, "ray_train_on_loaded": rt_bad,
                           "fastgpu_nodes": [n for n, _ in fg_placed], "ray_train_nodes": [n for n, _ in rt_placed],
                           "est_slowdown": est})
            time.sleep(2.5)
        fg_total = sum(r["fastgpu_on_loaded"] for r in rounds)
        rt_total = sum(r["ray_train_on_loaded"] for r in rounds)
        n = len(rounds) * args.workers
        print(f"load avoidance over {len(rounds)} rounds: ranks on loaded GPUs fastgpu.train {fg_total}/{n}, "
              f"TorchTrainer {rt_total}/{n}")
        out["load"] = {"util": LOAD, "rounds": rounds, "fastgpu_on_loaded": fg_total, "ray_train_on_loaded": rt_total,
                       "ranks": n}
    finally:
        if fastgpu.is_initialized():
            fastgpu.shutdown()
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(storage, ignore_errors=True)  # Ray Train's run directories
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
