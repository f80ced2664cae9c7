"""`s2v cluster init/up/status/down` through ray.autoscaler.sdk against a small external provider of our own.

Approach (DESIGN.md "Clouds"): Ray's `fake_multinode` provider cannot be driven through the launcher from the
wheel, so `loopback_cluster.LocalNodeProvider` runs "nodes" on 127.0.0.1 (see tests/loopback_cluster.py): node
state in a JSON file, each node's commands run locally in its own folder (its HOME), and `ray stop` replaced by
killing only the processes that carry the node's environment marker.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from ray.autoscaler.tags import NODE_KIND_HEAD, TAG_RAY_NODE_KIND
from typer.testing import CliRunner

from loopback_cluster import LOOPBACK_LABELS, LocalNodeProvider, loopback_config
from loopback_cluster import node_pids as _node_pids
from orchestrator.cli.cluster import app

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def _local_config(tmp_path: Path) -> dict:
    return loopback_config(tmp_path)


def test_init_writes_valid_configs(tmp_path):
    r = CliRunner()
    for prov, extra in (("aws", ["--no-resolve-images"]), ("gcp", ["--project", "proj-1"]), ("runpod", [])):
        out = tmp_path / f"{prov}.yaml"
        res = r.invoke(app, ["init", prov, "--bucket", "my-bucket", "--out", str(out), "--spot", "--gpus", "1",
                             "--max-workers", "2", *extra])
        assert res.exit_code == 0, res.output
        cfg = yaml.safe_load(out.read_text())
        assert {"head", "gpu_spot", "gpu_ondemand"} <= set(cfg["available_node_types"])
        assert cfg["metadata"]["s2v"]["work"].endswith("://my-bucket/s2v-work")
    res = r.invoke(app, ["init", "aws", "--bucket", "b", "--out", str(tmp_path / "aws.yaml")])
    assert res.exit_code == 2 and "--force" in res.output
    res = r.invoke(app, ["init", "--provider", "azure", "--bucket", "b", "--out", str(tmp_path / "x.yaml")])
    assert res.exit_code == 2 and "unknown provider" in res.output
    res = r.invoke(app, ["init", "aws", "--out", str(tmp_path / "nobucket.yaml"), "--no-resolve-images"])
    assert res.exit_code == 2 and "--bucket" in res.output and not (tmp_path / "nobucket.yaml").exists()
    res = r.invoke(app, ["init", "gcp", "--bucket", "b", "--out", str(tmp_path / "noproject.yaml")])
    assert res.exit_code == 2 and "--project" in res.output


class _SSM(BaseHTTPRequestHandler):
    """The SSM JSON protocol's GetParameter (POST /, X-Amz-Target: AmazonSSM.GetParameter), on loopback."""

    values: dict[str, str] = {}
    asked: list[tuple[str, str]] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        target = self.headers.get("X-Amz-Target", "")
        region = re.search(r"/\d{8}/([a-z0-9-]+)/ssm/", self.headers.get("Authorization", ""))
        self.asked.append((body.get("Name"), region.group(1) if region else ""))
        if target == "AmazonSSM.GetParameter" and body.get("Name") in self.values:
            code, out = 200, {"Parameter": {"Name": body["Name"], "Type": "String", "Value": self.values[body["Name"]],
                                            "Version": 7, "DataType": "aws:ec2:image"}}
        else:
            code, out = 400, {"__type": "ParameterNotFound", "message": f"{body.get('Name')} not found"}
        data = json.dumps(out).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


def test_init_pins_aws_images_from_their_public_ssm_parameters(tmp_path, monkeypatch):
    """boto3 against a loopback server speaking the SSM JSON protocol (AWS_ENDPOINT_URL_SSM)."""
    from infra.clusters.generate import AWS_GPU_IMAGE_PARAM, AWS_HEAD_IMAGE_PARAM

    _SSM.values = {AWS_GPU_IMAGE_PARAM: "ami-0123456789abcdef0", AWS_HEAD_IMAGE_PARAM: "ami-0fedcba9876543210"}
    _SSM.asked = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _SSM)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    for k, v in {"AWS_ENDPOINT_URL_SSM": f"http://127.0.0.1:{srv.server_port}", "AWS_ACCESS_KEY_ID": "AKIDTEST",
                 "AWS_SECRET_ACCESS_KEY": "secret", "AWS_EC2_METADATA_DISABLED": "true",
                 "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    try:
        out = tmp_path / "aws.yaml"
        res = CliRunner().invoke(app, ["init", "aws", "--bucket", "b", "--region", "eu-west-1", "--out", str(out)])
        assert res.exit_code == 0, res.output
        cfg = yaml.safe_load(out.read_text())
        images = {n: nt["node_config"]["ImageId"] for n, nt in cfg["available_node_types"].items()}
        assert images == {"head": "ami-0fedcba9876543210", "gpu_spot": "ami-0123456789abcdef0",
                          "gpu_ondemand": "ami-0123456789abcdef0"}
        assert sorted(set(_SSM.asked)) == sorted({(AWS_GPU_IMAGE_PARAM, "eu-west-1"), (AWS_HEAD_IMAGE_PARAM, "eu-west-1")})
        assert AWS_GPU_IMAGE_PARAM in cfg["metadata"]["s2v"]["image_source"]
        # A parameter that is not there: a clear error naming it and the way around it; nothing written.
        _SSM.values = {}
        res = CliRunner().invoke(app, ["init", "aws", "--bucket", "b", "--out", str(tmp_path / "x.yaml")])
        assert res.exit_code == 2 and AWS_HEAD_IMAGE_PARAM in res.output and not (tmp_path / "x.yaml").exists()
    finally:
        srv.shutdown()


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


def _copy_checkout(dst: Path) -> Path:
    from infra.clusters.ship import source_files

    for rel in source_files(ROOT):
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dst / rel)
    return dst


def test_up_status_down_on_local_provider(tmp_path, ray_env, monkeypatch):
    """`up` builds a wheel of the checkout, mounts it at ~/s2v-dist on the head (its own HOME) and the setup
    installs it from there; a second `up` after a code change re-syncs and reinstalls it."""
    from infra.clusters.ship import source_fingerprint

    monkeypatch.setenv("S2V_CLUSTERS_DIR", str(tmp_path / "clusters"))
    project = _copy_checkout(tmp_path / "checkout")
    cfg = _local_config(tmp_path)
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = CliRunner()
    provider = LocalNodeProvider(cfg["provider"], cfg["cluster_name"])
    try:
        res = r.invoke(app, ["up", str(path), "--project", str(project)])
        assert res.exit_code == 0, res.output
        assert "head node 127.0.0.1" in res.output
        (head,) = provider.non_terminated_nodes({TAG_RAY_NODE_KIND: NODE_KIND_HEAD})
        assert provider.node_tags(head)["ray-node-status"] == "up-to-date"
        assert _node_pids(head), "ray start left no processes for the head"
        home = provider.state.parent / head
        wheels = list((home / "s2v-dist").glob("*.whl"))
        assert [w.name for w in wheels] == ["s2v_batch-0.1.0-py3-none-any.whl"]
        record = json.loads((home / "s2v-dist" / "s2v-build.json").read_text())
        assert record["fingerprint"] == source_fingerprint(project)
        assert json.loads((home / "s2v-dist" / "node.json").read_text())["metadata"]["work"] == "s3://loopback/s2v-work"
        marker = home / "site" / "orchestrator" / "cli" / "cluster.py"
        assert marker.read_bytes() == (project / "orchestrator" / "cli" / "cluster.py").read_bytes()
        res = r.invoke(app, ["status", str(path)])
        assert res.exit_code == 0, res.output
        assert "head: 127.0.0.1" in res.output and "Node status" in res.output
        # The node type's cost labels reached the running node (the launcher hands them to `ray start`).
        from ray.util.state import list_nodes

        (node,) = list_nodes(address=f"http://127.0.0.1:{cfg['metadata']['s2v']['dashboard_port']}", detail=True)
        assert {k: node.labels.get(k) for k in LOOPBACK_LABELS} == LOOPBACK_LABELS

        # A change in the checkout reaches the node on the next `up` (here one that keeps Ray running).
        (project / "orchestrator" / "cli" / "cluster.py").write_text(marker.read_text() + "\n# changed after up\n")
        res = r.invoke(app, ["up", str(path), "--project", str(project), "--no-restart"])
        assert res.exit_code == 0, res.output
        assert marker.read_text().endswith("# changed after up\n")
        assert json.loads((home / "s2v-dist" / "s2v-build.json").read_text())["fingerprint"] == \
            source_fingerprint(project) != record["fingerprint"]

        res = r.invoke(app, ["down", str(path)])
        assert res.exit_code == 0, res.output
        assert provider.non_terminated_nodes({}) == []
        assert _node_pids(head) == []
        res = r.invoke(app, ["status", str(path)])
        assert res.exit_code != 0
    finally:
        provider.stop_all()
