"""Zones chosen by where the types are offered, fallback types, and what was asked vs had, against loopback clouds.

AWS is moto's ThreadedMotoServer on 127.0.0.1: its DescribeInstanceTypeOfferings answers from moto's copy of
EC2's per-zone offerings (in ap-northeast-1, p5.4xlarge only in 1c, p4de.24xlarge in 1a and 1c). GCP is a small
BaseHTTPRequestHandler answering machineTypes.aggregatedList as the Compute API documents it (items by zone,
`filter` on name). Fake credentials, metadata lookups off; every server is stopped by its fixture. Every config is
checked by Ray's own validator (generate_config runs it).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
import yaml
from typer.testing import CliRunner

from core.settings import Settings
from infra.clusters.config import validate_cluster_config
from infra.clusters.generate import generate_config
from orchestrator.cli.cluster import app


@pytest.fixture
def ec2(monkeypatch):
    from moto.server import ThreadedMotoServer

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_EC2_METADATA_DISABLED":
                 "true", "AWS_MAX_ATTEMPTS": "1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    host, port = srv.get_host_and_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", f"http://{host}:{port}")
    try:
        yield
    finally:
        srv.stop()


def test_aws_zones_are_where_the_types_are_offered_and_fallback_types_widen_them(ec2, tmp_path):
    s = Settings(cloud_region="ap-northeast-1", spot=True)
    cfg = generate_config(s, "aws", bucket="b", resolve_zones=True)
    assert cfg["provider"]["availability_zone"] == "ap-northeast-1c"  # the template's {region}a,b,c: 1b does not exist
    cap = cfg["metadata"]["s2v"]["capacity"]
    assert cap["offered"]["p5.4xlarge"] == ["ap-northeast-1c"] and cap["zones"] == ["ap-northeast-1c"]
    assert cap["asked"]["gpu_spot"] == {"type": "p5.4xlarge", "market": "spot"}
    out = tmp_path / "c.yaml"
    res = CliRunner().invoke(app, ["init", "aws", "--bucket", "b", "--region", "ap-northeast-1", "--no-resolve-images",
                                   "--fallback-type", "p4de.24xlarge", "--out", str(out)])
    assert res.exit_code == 0, res.output
    cfg = yaml.safe_load(out.read_text())
    assert cfg["provider"]["availability_zone"] == "ap-northeast-1c,ap-northeast-1a"  # most GPU types first
    types = cfg["available_node_types"]
    spot, ond = types["gpu_spot_p4de_24xlarge"], types["gpu_ondemand_p4de_24xlarge"]
    assert spot["resources"] == {"CPU": 96, "GPU": 8, "s2v_spot": 8} and spot["labels"]["s2v-market"] == "spot"
    assert ond["resources"]["s2v_ondemand"] == 8 and ond["node_config"]["InstanceType"] == "p4de.24xlarge"
    assert "InstanceMarketOptions" not in ond["node_config"] and ond["labels"]["s2v-price-key"] == "p4de.24xlarge"
    assert spot["priority"] < types["gpu_spot"]["priority"] and ond["priority"] < types["gpu_ondemand"]["priority"]
    validate_cluster_config(cfg, where=str(out))  # Ray's validator and ours, as `up` runs them
    assert cfg["metadata"]["s2v"]["capacity"]["fallback_types"] == ["p4de.24xlarge"]


def test_bad_capacity_choices_are_named(ec2, tmp_path):
    r = CliRunner()
    res = r.invoke(app, ["init", "aws", "--bucket", "b", "--no-resolve-images", "--fallback-type", "p9.huge",
                         "--out", str(tmp_path / "a.yaml")])
    assert res.exit_code == 2 and "p9.huge" in res.output and "p4de.24xlarge" in res.output
    res = r.invoke(app, ["init", "aws", "--bucket", "b", "--no-resolve-images", "--region", "ap-northeast-1",
                         "--zone", "ap-northeast-1d", "--out", str(tmp_path / "b.yaml")])
    assert res.exit_code == 2 and "ap-northeast-1d" in res.output and "--fallback-type" in res.output
    res = r.invoke(app, ["init", "runpod", "--bucket", "b", "--fallback-type", "p5.4xlarge", "--out",
                         str(tmp_path / "c.yaml")])
    assert res.exit_code == 2 and "data centres" in res.output


class _MachineTypes(BaseHTTPRequestHandler):
    """machineTypes.aggregatedList of project proj-1: which machine types each zone offers."""

    zones = {"us-central1-a": ["n2-standard-4", "a3-highgpu-1g", "a2-ultragpu-1g"],
             "us-central1-b": ["n2-standard-4", "a2-ultragpu-1g"], "us-central1-c": ["n2-standard-4"],
             "us-east1-b": ["n2-standard-4", "a3-highgpu-1g"]}

    def log_message(self, *a):
        pass

    def do_GET(self):
        url = urlparse(self.path)
        assert url.path == "/compute/v1/projects/proj-1/aggregated/machineTypes"
        wanted = {w.split("=")[1].strip(" )") for w in parse_qs(url.query)["filter"][0].split(" OR ")}
        items = {f"zones/{z}": {"machineTypes": [{"name": t, "zone": z} for t in ts if t in wanted]}
                 for z, ts in self.zones.items()}
        body = json.dumps({"items": items}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def compute(monkeypatch):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _MachineTypes)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    monkeypatch.setenv("CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE", f"http://127.0.0.1:{srv.server_address[1]}/compute/v1/")
    try:
        yield
    finally:
        srv.shutdown()
        srv.server_close()


def test_gcp_zones_by_offer_and_a_zone_launches_only_the_types_it_has(compute, tmp_path):
    from infra.clusters.launch import up_in_zones

    s = Settings(cloud_region="us-central1", cloud_project="proj-1", spot=True)
    cfg = generate_config(s, "gcp", bucket="b", resolve_zones=True)
    meta = cfg["metadata"]["s2v"]
    assert meta["zones"] == ["us-central1-a", "us-central1-b"]  # c has no GPU type; us-east1 is another region
    assert cfg["provider"]["availability_zone"] == "us-central1-a"
    assert meta["capacity"]["offered"]["a3-highgpu-1g"] == ["us-central1-a"]
    tried: list[tuple[str, list[str]]] = []

    def create(c):
        tried.append((c["provider"]["availability_zone"], sorted(c["available_node_types"])))
        if len(tried) == 1:
            raise RuntimeError("ZONE_RESOURCE_POOL_EXHAUSTED for the head")

    s = Settings(clusters_dir=tmp_path / "clusters")
    assert up_in_zones(cfg, create, lambda c: False, echo=lambda m: None, settings=s) == "us-central1-b"
    assert tried[0] == ("us-central1-a", ["gpu_ondemand", "gpu_spot", "head"])
    assert tried[1] == ("us-central1-b", ["gpu_ondemand", "head"])  # no A3 in b: its spot type stays out
    assert "gpu_spot" in cfg["available_node_types"]  # the file's config keeps every type for the other zones


def test_cost_reports_what_was_asked_and_what_was_had(ec2, tmp_path, monkeypatch):
    import boto3

    monkeypatch.setenv("S2V_CLUSTERS_DIR", str(tmp_path / "clusters"))
    s = Settings(cluster_name="night", cloud_region="ap-northeast-1", spot=True)
    cfg = generate_config(s, "aws", bucket="b", resolve_zones=True, fallback_types=["p4de.24xlarge"])
    from infra.clusters.generate import dump_config

    path = dump_config(cfg, tmp_path / "c.yaml", "aws")
    ec2c = boto3.client("ec2", region_name="ap-northeast-1")
    tags = [{"Key": "ray-cluster-name", "Value": "night"}, {"Key": "ray-node-type", "Value": "worker"},
            {"Key": "ray-user-node-type", "Value": "gpu_ondemand_p4de_24xlarge"}]
    ec2c.run_instances(ImageId="ami-12c6146b", InstanceType="p4de.24xlarge", MinCount=1, MaxCount=1,
                       Placement={"AvailabilityZone": "ap-northeast-1a"},
                       TagSpecifications=[{"ResourceType": "instance", "Tags": tags}])
    res = CliRunner().invoke(app, ["cost", str(path)])
    assert res.exit_code == 0, res.output
    assert "asked: head m6i.xlarge (on-demand); gpu_spot p5.4xlarge (spot)" in res.output
    assert "in ap-northeast-1c, ap-northeast-1a" in res.output
    assert "had: 1× p4de.24xlarge on-demand in ap-northeast-1a (gpu_ondemand_p4de_24xlarge)" in res.output
