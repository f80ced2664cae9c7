"""`s2v cluster init/up/status/down` through ray.autoscaler.sdk against a small external provider of our own.

Approach (DESIGN.md "Clouds"): Ray's `fake_multinode` provider cannot be driven through the launcher from the
wheel, so `loopback_cluster.LocalNodeProvider` runs "nodes" on 127.0.0.1 (see tests/loopback_cluster.py): node
state in a JSON file, each node's commands run locally in its own folder (its HOME), and `ray stop` replaced by
killing only the processes that carry the node's environment marker.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.autoscaler.tags import NODE_KIND_HEAD, TAG_RAY_NODE_KIND
from typer.testing import CliRunner

from loopback_cluster import LocalNodeProvider, loopback_config
from loopback_cluster import node_pids as _node_pids
from orchestrator.cli_cluster import app

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def _local_config(tmp_path: Path) -> dict:
    return loopback_config(tmp_path)


def test_init_writes_valid_configs(tmp_path):
    r = CliRunner()
    for prov in ("aws", "gcp", "runpod"):
        out = tmp_path / f"{prov}.yaml"
        res = r.invoke(app, ["init", "--provider", prov, "--out", str(out), "--spot", "--gpus", "1",
                             "--max-workers", "2"])
        assert res.exit_code == 0, res.output
        cfg = yaml.safe_load(out.read_text())
        assert {"head", "gpu_spot", "gpu_ondemand"} <= set(cfg["available_node_types"])
    res = r.invoke(app, ["init", "--provider", "aws", "--out", str(tmp_path / "aws.yaml")])
    assert res.exit_code == 2 and "--force" in res.output
    res = r.invoke(app, ["init", "--provider", "azure", "--out", str(tmp_path / "x.yaml")])
    assert res.exit_code == 2


def test_up_rejects_typo_before_any_cloud_call(tmp_path):
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    cfg["available_node_types"]["gpu_spot"]["node_config"]["InstanceMarketOptions"] = {"MarketTyp": "spot"}
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["up", str(p)])
    assert res.exit_code == 2 and "did you mean 'MarketType'" in res.output


@pytest.fixture
def ray_env(monkeypatch):
    for k, v in {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
                 "RAY_AUTH_MODE": "disabled"}.items():
        monkeypatch.setenv(k, v)


def test_up_status_down_on_local_provider(tmp_path, ray_env):
    cfg = _local_config(tmp_path)
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = CliRunner()
    provider = LocalNodeProvider(cfg["provider"], cfg["cluster_name"])
    try:
        res = r.invoke(app, ["up", str(path)])
        assert res.exit_code == 0, res.output
        assert "head node 127.0.0.1" in res.output
        (head,) = provider.non_terminated_nodes({TAG_RAY_NODE_KIND: NODE_KIND_HEAD})
        assert provider.node_tags(head)["ray-node-status"] == "up-to-date"
        assert _node_pids(head), "ray start left no processes for the head"
        res = r.invoke(app, ["status", str(path)])
        assert res.exit_code == 0, res.output
        assert "head: 127.0.0.1" in res.output and "Node status" in res.output
        res = r.invoke(app, ["down", str(path)])
        assert res.exit_code == 0, res.output
        assert provider.non_terminated_nodes({}) == []
        assert _node_pids(head) == []
        res = r.invoke(app, ["status", str(path)])
        assert res.exit_code != 0
    finally:
        provider.stop_all()
