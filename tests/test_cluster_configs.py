"""Every shipped and generated cluster config passes Ray's validator; our node_config checks catch typos."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from infra.clusters.config import (
    ONDEMAND_RESOURCE,
    SPOT_RESOURCE,
    check_node_configs,
    dump_config,
    generate_config,
    load_config,
    validate_cluster_config,
)
from core.errors import ConfigError
from core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = [ROOT / "cluster.yaml", *sorted((ROOT / "infra" / "clusters").glob("*.yaml"))]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_configs_pass_ray_and_ours(path):
    cfg = load_config(path)
    prepared = validate_cluster_config(cfg, where=str(path))
    assert prepared["head_node_type"] == "head"
    assert any(nt["resources"].get("GPU") for nt in prepared["available_node_types"].values())


def test_root_cluster_yaml_shape():
    cfg = load_config(ROOT / "cluster.yaml")
    types = cfg["available_node_types"]
    assert "GPU" not in types["head"]["resources"]
    assert "InstanceMarketOptions" not in types["head"]["node_config"]
    assert types["gpu_spot"]["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert "InstanceMarketOptions" not in types["gpu_ondemand"]["node_config"]
    assert cfg["provider"]["cache_stopped_nodes"] is False
    assert any(".[all]" in c for c in cfg["setup_commands"])


@pytest.mark.parametrize("provider", ["aws", "gcp", "runpod"])
@pytest.mark.parametrize("spot", [True, False])
def test_generated_configs_validate(provider, spot, tmp_path):
    s = Settings(spot=spot, cloud_gpu_count=8 if provider != "runpod" else 2, cloud_max_workers=3,
                 cloud_region="us-central1" if provider == "gcp" else "us-east-1", model_dir="s3://weights/wan",
                 cloud_project="proj-1")
    cfg = generate_config(s, provider)
    types = cfg["available_node_types"]
    assert ("gpu_spot" in types) is spot
    od = types["gpu_ondemand"]
    assert od["resources"]["GPU"] == s.cloud_gpu_count and od["resources"][ONDEMAND_RESOURCE] == s.cloud_gpu_count
    assert od["max_workers"] == 3 and cfg["max_workers"] == 3
    if spot:
        assert types["gpu_spot"]["resources"][SPOT_RESOURCE] == s.cloud_gpu_count
    if provider == "aws":
        assert od["node_config"]["InstanceType"] == "p5.48xlarge" and cfg["provider"]["region"] == "us-east-1"
    elif provider == "gcp":
        assert od["node_config"]["machineType"] == "a3-highgpu-8g"
        assert cfg["provider"]["project_id"] == "proj-1"
        if spot:
            assert types["gpu_spot"]["node_config"]["scheduling"]["provisioningModel"] == "SPOT"
    else:
        assert cfg["provider"]["type"] == "external"
        assert od["node_config"]["gpu_count"] == 2
    assert any("s3://weights/wan" in c for c in cfg["worker_setup_commands"])
    # Written and read back, it is still valid.
    out = dump_config(cfg, tmp_path / "c.yaml", provider)
    validate_cluster_config(yaml.safe_load(out.read_text()))


def _aws():
    return copy.deepcopy(load_config(ROOT / "cluster.yaml"))


def _problems(cfg):
    return [str(p) for p in check_node_configs(cfg).items]


def test_misspelt_markettype_key_passes_ray_but_not_us():
    cfg = _aws()
    imo = cfg["available_node_types"]["gpu_spot"]["node_config"]["InstanceMarketOptions"]
    imo["MarketTyp"] = imo.pop("MarketType")
    # Ray's own schema lets it through: node_config is free-form.
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cfg)))
    with pytest.raises(ConfigError) as ei:
        validate_cluster_config(cfg)
    msg = str(ei.value)
    assert "MarketTyp" in msg and "did you mean 'MarketType'" in msg


def test_wrong_case_key_and_bad_value():
    cfg = _aws()
    nc = cfg["available_node_types"]["gpu_spot"]["node_config"]
    nc["instanceType"] = nc.pop("InstanceType")
    nc["InstanceMarketOptions"]["MarketType"] = "spott"
    probs = _problems(cfg)
    assert any("instanceType" in p and "case-sensitive" in p for p in probs)
    assert any("MarketType" in p and "'spott'" in p and "did you mean 'spot'" in p for p in probs)


def test_spot_requires_no_stopped_node_cache():
    cfg = _aws()
    cfg["provider"]["cache_stopped_nodes"] = True
    assert any("cache_stopped_nodes" in p for p in _problems(cfg))


def test_gcp_scheduling_list_form_and_typos():
    cfg = load_config(ROOT / "infra" / "clusters" / "gcp.yaml")
    nc = cfg["available_node_types"]["gpu_spot"]["node_config"]
    good = nc["scheduling"]
    nc["scheduling"] = [{"preemptible": True}]
    assert any("must be a mapping" in p for p in _problems(cfg))
    nc["scheduling"] = dict(good, provisioningModel="SPOTT", automaticRestart=True)
    nc["machinetype"] = nc.pop("machineType")
    probs = _problems(cfg)
    assert any("provisioningModel" in p and "did you mean 'SPOT'" in p for p in probs)
    assert any("machinetype" in p and "'machineType'" in p for p in probs)
    nc["scheduling"] = dict(good, automaticRestart=True)
    assert any("automaticRestart" in p and "false for SPOT" in p for p in _problems(cfg))


def test_runpod_node_config_typos():
    cfg = load_config(ROOT / "infra" / "clusters" / "runpod.yaml")
    nc = cfg["available_node_types"]["gpu_spot"]["node_config"]
    nc["gpu_typeid"] = nc.pop("gpu_type_id")
    nc["cloud_type"] = "SECUR"
    probs = _problems(cfg)
    assert any("gpu_typeid" in p and "gpu_type_id" in p for p in probs)
    assert any("cloud_type" in p and "SECURE" in p for p in probs)


def test_ray_schema_errors_are_config_errors():
    cfg = _aws()
    cfg["max_workerz"] = 3
    with pytest.raises(ConfigError, match="Ray rejects it"):
        validate_cluster_config(cfg)
    cfg = _aws()
    cfg["head_node_type"] = "nope"
    with pytest.raises(ConfigError):
        validate_cluster_config(cfg)


def test_unknown_provider():
    with pytest.raises(ConfigError, match="unknown provider"):
        generate_config(Settings(), "azure")
