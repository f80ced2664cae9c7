"""The budget ledger and `s2v cluster cost` by the cloud's own clock, against providers served on 127.0.0.1.

AWS is moto's ThreadedMotoServer (the EC2 API as boto3 speaks it: DescribeInstances with tag filters, LaunchTime,
InstanceLifecycle, StateTransitionReason "User initiated (… UTC)"), its clock moved by patching moto's utcnow so
launches and terminations happen at chosen times. GCP is a small BaseHTTPRequestHandler answering
instances.aggregatedList as the Compute API documents it (items by zone, creationTimestamp, lastStopTimestamp, a
deleted instance gone from the list). No request leaves 127.0.0.1: fake credentials, metadata lookups disabled,
endpoints on loopback; every server is stopped by its fixture.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from core.settings import NodePrice, Settings
from infra.clusters.clock import Tracker
from infra.clusters.clock_readers import AwsClock, GcpClock
from orchestrator.render.costs import NodeLedger, NodeUse
from orchestrator.render.inprocess import EPOCH, InProcessRuntime
from orchestrator.render.scripted_worker import ScriptedWorker

T0 = EPOCH  # the run starts here (the in-process runtime's wall clock)
H = 3600.0
PRICES = {"m6i.xlarge": NodePrice(on_demand=0.2, spot=0.08), "p5.4xlarge": NodePrice(on_demand=6.88, spot=2.75)}
TAGS = {"ray-cluster-name": "night"}


@pytest.fixture
def ec2(monkeypatch):
    """(boto3 EC2 client, set_clock(unix s)) on a moto server bound to 127.0.0.1."""
    from moto.ec2.models import instances as moto_instances
    from moto.server import ThreadedMotoServer

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION":
                 "us-west-2", "AWS_EC2_METADATA_DISABLED": "true", "AWS_MAX_ATTEMPTS": "1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    now = {"t": T0}
    monkeypatch.setattr(moto_instances, "utcnow",
                        lambda: datetime.fromtimestamp(now["t"], timezone.utc).replace(tzinfo=None))
    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    host, port = srv.get_host_and_port()
    url = f"http://{host}:{port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", url)
    import boto3
    import requests

    requests.post(f"{url}/moto-api/reset", timeout=10)  # moto's backends live in this process: start empty
    try:
        yield boto3.client("ec2", region_name="us-west-2"), lambda t: now.update(t=t)
    finally:
        requests.post(f"{url}/moto-api/reset", timeout=10)
        srv.stop()


def _launch(client, set_clock, at: float, itype: str, kind: str, node_type: str, spot: bool = False,
            cluster: str = "night") -> str:
    set_clock(at)
    kw = {"InstanceMarketOptions": {"MarketType": "spot"}} if spot else {}
    tags = [{"Key": k, "Value": v} for k, v in {"ray-cluster-name": cluster, "ray-node-type": kind,
                                                 "ray-user-node-type": node_type}.items()]
    r = client.run_instances(ImageId="ami-12c6146b", InstanceType=itype, MinCount=1, MaxCount=1,
                             TagSpecifications=[{"ResourceType": "instance", "Tags": tags}], **kw)
    return r["Instances"][0]["InstanceId"]


def _end(client, set_clock, at: float, iid: str) -> None:
    set_clock(at)
    client.terminate_instances(InstanceIds=[iid])


def _night(client, set_clock, T0: float = T0) -> dict[str, str]:
    """A head up since before the run; a spot worker that booted 10 min before Ray saw it; an on-demand worker
    whose setup failed (never joined Ray); a spot worker still up at the end; another cluster's instance."""
    ids = {"head": _launch(client, set_clock, T0 - 2 * H, "m6i.xlarge", "head", "head"),
           "a": _launch(client, set_clock, T0 + 600, "p5.4xlarge", "worker", "gpu_spot", spot=True),
           "failed": _launch(client, set_clock, T0 + 1800, "p5.4xlarge", "worker", "gpu_ondemand"),
           "c": _launch(client, set_clock, T0 + H, "p5.4xlarge", "worker", "gpu_spot", spot=True),
           "other": _launch(client, set_clock, T0, "p5.4xlarge", "worker", "gpu_spot", cluster="day")}
    _end(client, set_clock, T0 + 2400, ids["failed"])
    _end(client, set_clock, T0 + 600 + H, ids["a"])
    set_clock(T0 + 2 * H)
    return ids


def _ledger(clock, tails=None) -> NodeLedger:
    led = NodeLedger(Settings(node_prices=PRICES), True, InProcessRuntime(ScriptedWorker), started=T0, clock=clock,
                     tails=tails)
    return led


def test_the_ledger_bills_each_instance_from_launch_to_end_failed_ones_included(ec2):
    client, set_clock = ec2
    ids = _night(client, set_clock)
    led = _ledger(AwsClock("us-west-2", "night"), tails={"worker": 300.0, "head": 1800.0})
    # Ray saw worker a only from T0+20 min and never saw the failed one: its table alone would miss both
    led.nodes = {"ray-a": NodeUse("ray-a", T0 + 1200, T0 + 600 + H, 1, "p5.4xlarge", "spot")}
    led.poll(force=True)
    led.ended = T0 + 2 * H
    doc = led.summary()
    assert doc["clock"] == "aws" and doc["priced"]
    rows = {r["id"]: r for r in doc["nodes"]}
    assert ids["other"] not in rows and set(rows) == {ids["head"], ids["a"], ids["failed"], ids["c"]}
    assert rows[ids["head"]]["hours"] == pytest.approx(2.0)  # from the run's start, not the head's launch
    assert rows[ids["a"]]["hours"] == pytest.approx(1.0) and rows[ids["a"]]["market"] == "spot"
    assert rows[ids["failed"]]["hours"] == pytest.approx(600 / H, abs=1e-5) and rows[ids["failed"]]["market"] == "on-demand"
    assert rows[ids["failed"]]["end_source"] == "provider"  # from EC2's StateTransitionReason
    assert rows[ids["c"]]["hours"] == pytest.approx(1.0) and rows[ids["c"]]["terminated"] is None
    measured = 2 * 0.2 + 1 * 2.75 + 600 / H * 6.88 + 1 * 2.75
    assert doc["cost_usd"] == pytest.approx(measured, abs=1e-4) and led.spent() == pytest.approx(measured, abs=1e-4)
    # still up at the end: worker c for the autoscaler's idle timeout, the head for autostop's
    tail = 300 / H * 2.75 + 1800 / H * 0.2
    assert doc["projected"]["cost_usd"] == pytest.approx(tail, abs=1e-4)
    assert {t["id"] for t in doc["projected"]["nodes"]} == {ids["head"], ids["c"]}
    assert led.projected_tail() == pytest.approx(tail, abs=1e-4)


def test_the_budget_counts_the_idle_tail_it_will_pay(ec2):
    from orchestrator.render.chains import Chain, over_budget

    client, set_clock = ec2
    _night(client, set_clock)
    led = _ledger(AwsClock("us-west-2", "night"), tails={"worker": 3 * H, "head": 1800.0})
    led.runtime.t = 2 * H  # two hours into the run
    led.poll(force=True)
    spent = led.spent()
    assert spent > 5
    chain = Chain(plan=SimpleNamespace(job=SimpleNamespace(backend="draft"), expected_clip_s=None),
                  scene=SimpleNamespace(clips=[0]))
    s = Settings(node_prices=PRICES, budget_usd=spent + 1.0, seconds_per_clip={"draft": 0.01})
    why = over_budget(s, led, [], [], chain)  # $1 left, but worker c idles 3 h at $2.75 before it goes
    assert why is not None and "idle tail" in why and "(projected)" in why
    assert over_budget(s.model_copy(update={"budget_usd": spent + 10.0}), led, [], [], chain) is None


def test_an_unreadable_clock_leaves_rays_table_and_says_so(monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", "http://127.0.0.1:9")  # discard port: refused at once
    led = _ledger(AwsClock("us-west-2", "night"))
    led.nodes = {"h": NodeUse("h", T0, None, 0, "m6i.xlarge", "on-demand", head=True)}
    led.poll(force=True)
    led.ended = T0 + H
    doc = led.summary()
    assert doc["clock"] == "ray" and "ec2:DescribeInstances" in doc["measured"]["what"]
    assert doc["cost_usd"] == pytest.approx(0.2)


class _Compute(BaseHTTPRequestHandler):
    """instances.aggregatedList of one project, as the Compute API answers it (labels filter honoured)."""

    instances: list[dict] = []
    asked: list[str] = []

    def log_message(self, *a):
        pass

    def do_GET(self):
        self.asked.append(self.path)
        assert self.path.startswith("/compute/v1/projects/proj-1/aggregated/instances")
        items: dict[str, dict] = {}
        for i in self.instances:
            if "labels.ray-cluster-name%20%3D%20night" in self.path or "labels.ray-cluster-name+%3D+night" in self.path:
                if i["labels"].get("ray-cluster-name") != "night":
                    continue
            items.setdefault(f"zones/{i['zone'].rsplit('/', 1)[-1]}", {"instances": []})["instances"].append(i)
        body = json.dumps({"kind": "compute#instanceAggregatedList", "items": items}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _gce(name: str, machine: str, created: float, kind: str, status: str = "RUNNING", stopped: float | None = None,
         spot: bool = False, cluster: str = "night") -> dict:
    iso = lambda t: datetime.fromtimestamp(t, timezone.utc).astimezone().isoformat(timespec="milliseconds")  # noqa: E731
    zone = "https://www.googleapis.com/compute/v1/projects/proj-1/zones/us-central1-a"
    doc = {"id": str(abs(hash(name)) % 10**18), "name": name, "zone": zone, "status": status,
           "machineType": f"{zone}/machineTypes/{machine}", "creationTimestamp": iso(created),
           "labels": {"ray-cluster-name": cluster, "ray-node-type": kind},
           "scheduling": {"provisioningModel": "SPOT" if spot else "STANDARD"}}
    if stopped is not None:
        doc["lastStopTimestamp"] = iso(stopped)
    return doc


@pytest.fixture
def compute():
    _Compute.instances, _Compute.asked = [], []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Compute)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/compute/v1/"
    finally:
        srv.shutdown()
        srv.server_close()


def test_gcp_instances_end_when_stopped_or_when_they_vanish(compute):
    spot = _gce("w-spot", "a3-highgpu-1g", T0 + 300, "worker", spot=True)
    _Compute.instances = [_gce("head", "n2-standard-4", T0 - H, "head"), spot,
                          _gce("w-stopped", "a2-ultragpu-1g", T0, "worker", "TERMINATED", stopped=T0 + 1800),
                          _gce("elsewhere", "a3-highgpu-1g", T0, "worker", cluster="day")]
    tracker = Tracker(GcpClock("proj-1", "night", base=compute))
    first = {i.id: i for i in tracker.read(now=T0 + H)}
    assert len(first) == 3 and "labels.ray-cluster-name" in _Compute.asked[0]
    by_name = {i.instance_type: i for i in first.values()}
    assert by_name["a2-ultragpu-1g"].terminated == pytest.approx(T0 + 1800)
    assert by_name["a3-highgpu-1g"].market == "spot" and by_name["a3-highgpu-1g"].zone == "us-central1-a"
    assert by_name["n2-standard-4"].head and by_name["n2-standard-4"].launched == pytest.approx(T0 - H)
    _Compute.instances.remove(spot)  # preempted with instanceTerminationAction DELETE: gone from the list
    second = {i.instance_type: i for i in tracker.read(now=T0 + 2 * H)}
    gone = second["a3-highgpu-1g"]
    assert gone.terminated == pytest.approx(T0 + H) and gone.end_source == "last seen"  # its last sighting
    assert gone.hours(T0, T0 + 2 * H) == pytest.approx((H - 300) / H)


def test_cluster_cost_prints_each_node_measured_and_projected(ec2, tmp_path, monkeypatch):
    from infra.clusters.generate import dump_config, generate_config
    from orchestrator.cli.cluster import app

    client, set_clock = ec2
    ids = _night(client, set_clock, T0=time.time() - 2 * H)  # the command reads the real clock
    monkeypatch.setenv("S2V_CLUSTERS_DIR", str(tmp_path / "clusters"))
    monkeypatch.setenv("S2V_NODE_PRICES", json.dumps({k: v.model_dump() for k, v in PRICES.items()}))
    s = Settings(cluster_name="night", cloud_region="us-west-2")
    cfg = generate_config(s, "aws", bucket="my-bucket")
    path = dump_config(cfg, tmp_path / "cluster.yaml", "aws")
    res = CliRunner().invoke(app, ["cost", str(path)])
    assert res.exit_code == 0, res.output
    for iid in (ids["head"], ids["a"], ids["failed"], ids["c"]):
        assert iid in res.output
    assert ids["other"] not in res.output and "measured:" in res.output and "projected:" in res.output
    assert "(running)" in res.output and "spot" in res.output and "on-demand" in res.output
    res = CliRunner().invoke(app, ["cost", str(path), "--json"])
    doc = json.loads(res.output)
    rows = {r["id"]: r for r in doc["nodes"]}
    assert rows[ids["head"]]["hours"] > 3.9  # its whole life here, not a run's window
    assert doc["projected"]["cost_usd"] > 0 and {t["id"] for t in doc["projected"]["nodes"]} == {ids["head"], ids["c"]}
    assert (tmp_path / "clusters" / "night" / "instances-seen.json").is_file()


def test_the_run_report_says_what_is_measured_and_what_projected(ec2):
    from orchestrator.run.report import report_doc, report_html
    from orchestrator.run.results import RunResult

    client, set_clock = ec2
    _night(client, set_clock)
    led = _ledger(AwsClock("us-west-2", "night"), tails={"worker": 300.0, "head": 1800.0})
    led.runtime.t = 2 * H
    led.finish()
    doc = report_doc(RunResult(run_id="r1", manifest="m.yaml", jobs={}, cost=led.summary()))
    t = doc["totals"]
    assert t["cost_source"] == "node-hours" and "cloud's own clock (aws" in t["cost_measured"]
    assert t["cost_usd"] == pytest.approx(doc["cost"]["measured"]["cost_usd"])
    assert t["cost_projected_usd"] == pytest.approx(300 / H * 2.75 + 1800 / H * 0.2, abs=1e-4)
    assert t["cost_with_tail_usd"] == pytest.approx(t["cost_usd"] + t["cost_projected_usd"])
    page = report_html(doc)
    assert "Measured: $" in page and "Projected: $" in page and "idle tail" in page
    ray_only = report_doc(RunResult(run_id="r2", manifest="m.yaml", jobs={}, cost=_ledger(None).summary()))
    assert "Ray's node table" in ray_only["totals"]["cost_measured"]


def test_the_head_finds_its_clock_in_the_launchers_config(tmp_path, monkeypatch):
    from orchestrator.render.costs import cluster_clock

    boot = tmp_path / "ray_bootstrap_config.yaml"
    boot.write_text("cluster_name: night\nidle_timeout_minutes: 7\nprovider: {type: aws, region: us-west-2}\n"
                    "metadata: {s2v: {work: s3://b/w, idle_stop_minutes: 0}}\navailable_node_types: {}\n")
    got = cluster_clock(Settings(), str(boot))
    assert isinstance(got["clock"], AwsClock) and got["clock"].cluster_name == "night"
    assert got["tails"] == {"worker": 420.0, "head": None}  # idle_stop_minutes 0: the head runs until down
    assert cluster_clock(Settings(cost_clock="ray"), str(boot)) == {}
    boot.write_text("cluster_name: x\nprovider: {type: external, module: tests.loopback.Provider}\n")
    assert cluster_clock(Settings(), str(boot)) == {} and cluster_clock(Settings(), str(tmp_path / "none")) == {}
