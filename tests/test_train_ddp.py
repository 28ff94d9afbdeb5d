"""examples/train_ddp.py trains a real PyTorch model with DDP across a local multi-node cluster (gloo)."""
from __future__ import annotations

import importlib.util
import pathlib

import pytest

torch = pytest.importorskip("torch")
ray = pytest.importorskip("ray")

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "train_ddp.py"


def load_example():
    spec = importlib.util.spec_from_file_location("train_ddp_example", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    import sys
    sys.modules[spec.name] = mod  # cloudpickle's by-value registration looks modules up here
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.cluster
@pytest.mark.slow
def test_ddp_example_trains_across_nodes_with_identical_parameters():
    ex = load_example()
    cluster = ex.start_local_cluster(nodes=2, cpus=2, gpus=2)
    try:
        ex.fastgpu.init(address=cluster.address)
        res = ex.run(workers=4, gpus_per_worker=1, config={"epochs": 4})
    finally:
        ex.fastgpu.shutdown()
        ray.shutdown()
        cluster.shutdown()
    assert res.snapshot_source == "fastgpu live telemetry"
    assert res.emulated  # no NVML here: the runtime emulates the logical GPUs, and says so
    assert [r["rank"] for r in res] == [0, 1, 2, 3]
    assert res.backend == "gloo"
    assert len(set(res.nodes())) == 2, "the four ranks should span both worker nodes"
    assert len({r["pid"] for r in res}) == 4
    # DDP averages gradients, so every rank applies the same update: parameters bit-identical.
    params = [r["params"] for r in res]
    assert all(p == params[0] for p in params)
    n_params = sum(p.numel() for p in torch.nn.Sequential(
        torch.nn.Linear(ex.FEATURES, ex.HIDDEN), torch.nn.ReLU(), torch.nn.Linear(ex.HIDDEN, 1)).parameters())
    assert len(params[0]) == n_params
    # Every rank saw the same all-reduced epoch losses, and training reduced the loss by more than half.
    assert all(r["losses"] == res[0]["losses"] for r in res)
    losses = res[0]["losses"]
    assert len(losses) == 4 and losses[-1] < 0.5 * losses[0], losses
    assert ex.check(res) == []


def test_check_reports_diverged_parameters_and_flat_loss():
    ex = load_example()
    good = {"rank": 0, "params": [1.0, 2.0], "losses": [1.0, 0.5]}
    assert ex.check([good, {**good, "rank": 1}]) == []
    bad = ex.check([{**good, "losses": [0.5, 0.6]}, {**good, "rank": 1, "params": [1.0, 2.5]}])
    assert any("rank(s) [1] hold different parameters" in p for p in bad)
    assert any("loss did not go down" in p for p in bad)
