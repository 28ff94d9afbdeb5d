"""cluster_configs/*.yaml pass Ray's own cluster-launcher validation, as `ray up` would run it.

`ray up` does ``prepare_config`` (for the local provider: expand head_ip/worker_ips into a node type; then
fill in the provider's defaults.yaml, merge setup commands, set per-type min/max workers) and then
``validate_config`` (the JSON schema in ray/autoscaler/ray-schema.json plus cross-field checks). Both are
called here, without touching any cloud.
"""
from __future__ import annotations

import copy
import pathlib

import pytest
import yaml

ray = pytest.importorskip("ray")
from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "cluster_configs"
EXPECTED = {"aws.yaml": "aws", "gcp.yaml": "gcp", "local.yaml": "local"}


def load(name: str) -> dict:
    return yaml.safe_load((CONFIGS / name).read_text())


def test_every_expected_config_is_there():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_passes_rays_validation(name):
    raw = load(name)
    assert raw["provider"]["type"] == EXPECTED[name]
    full = prepare_config(copy.deepcopy(raw))
    validate_config(full)  # raises jsonschema.ValidationError / ValueError on a bad config
    # Our settings survive the defaults (the defaults did not replace them).
    assert full["cluster_name"] == raw["cluster_name"]
    assert full["head_node_type"] in full["available_node_types"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_installs_fastgpu_and_the_same_ray(name):
    full = prepare_config(load(name))
    commands = " ".join(full["setup_commands"] + full.get("worker_setup_commands", []))
    assert "fastgpu-ray[train]" in commands
    # The launcher needs the same Ray on the cluster as on the machine that runs `ray up`.
    assert f'ray[default]=={ray.__version__}"' in commands


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_cloud_configs_have_a_gpu_worker_type_and_a_gpu_free_head(name):
    full = prepare_config(load(name))
    types = full["available_node_types"]
    head = types[full["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    workers = [t for k, t in types.items() if k != full["head_node_type"]]
    assert workers and all(t["max_workers"] >= 1 for t in workers)


def test_local_config_expands_worker_ips_into_workers():
    raw = load("local.yaml")
    full = prepare_config(raw)
    (node_type,) = full["available_node_types"].values()
    assert node_type["max_workers"] == len(raw["provider"]["worker_ips"]) >= 1


def test_validation_rejects_a_broken_config():
    """The check above can fail: a misspelt field and a missing head type are both caught."""
    import jsonschema
    bad = load("aws.yaml")
    bad["available_node_types"]["gpu_worker"]["min_worker"] = 1  # typo: min_workers
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))
    bad = load("gcp.yaml")
    bad["head_node_type"] = "no_such_type"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepare_config(bad))
