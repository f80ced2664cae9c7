"""RunPod node provider against a loopback stand-in for RunPod's GraphQL API (a local HTTP server on 127.0.0.1).

RunPod's API cannot be reached from tests, so `FakeRunPod` speaks its shapes on loopback (the SDK reads
RUNPOD_API_BASE_URL on every call) and answers the refusals RunPod documents: CPU pods come from deployCpuPod,
global networking only for NVIDIA GPU pods in Secure Cloud, a spot bid below the minimum is refused, only the
account key is accepted. Each query's input object goes through a small GraphQL value parser, so a value that
escaped its string literal shows up as a changed structure (or a parse error) here, as it would at RunPod.
No test sends anything to an address the fake hands out (pod IPs are documentation ranges, never dialled).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import stat
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from core.errors import ClusterError, ConfigError, TransientError
from infra.clusters.runpod.provider import CLUSTER_ENV, RunPodNodeProvider
from infra.clusters.runpod.api import PodLaunchError
from storage_servers import s3_server  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "infra" / "clusters" / "runpod.yaml"
KEY = "test-key-7f3a9c"  # the account key the fake accepts; it must never show up anywhere else
STORE_SECRET = "store-secret-'q\"9"  # the object store's secret key: never in a query, pod env or log either

_TOKEN = re.compile(r'\s*(?:("(?:[^"\\]|\\.)*")|(-?\d+(?:\.\d+)?)|([A-Za-z_][A-Za-z0-9_]*)|([{}\[\]:,()]))')


def parse_input(query: str, op: str) -> dict:
    """The `input: {...}` object of `op(...)` as a dict (strings via JSON, enums as bare names)."""
    start = query.index(op + "(")
    toks, pos = [], query.index("input", start) + len("input")
    while pos < len(query):
        m = _TOKEN.match(query, pos)
        if not m:
            raise ValueError(f"bad GraphQL at {pos}: {query[pos:pos + 20]!r}")
        pos = m.end()
        s, n, name, punct = m.groups()
        toks.append(("s", json.loads(s)) if s else ("n", float(n)) if n else ("id", name) if name else ("p", punct))
        if punct == ")":
            break
    it = iter(toks[1:])  # skip ':'

    def value(tok):
        kind, v = tok
        if kind == "p" and v == "{":
            obj = {}
            while True:
                k = next(it)
                if k == ("p", "}"):
                    return obj
                if k == ("p", ","):
                    continue
                assert next(it) == ("p", ":")
                obj[k[1]] = value(next(it))
        if kind == "p" and v == "[":
            arr = []
            while True:
                t = next(it)
                if t == ("p", "]"):
                    return arr
                if t != ("p", ","):
                    arr.append(value(t))
        if kind == "id":
            return {"true": True, "false": False, "null": None}.get(v, v)
        return v

    return value(next(it))


def _err(msg: str) -> dict:
    return {"errors": [{"message": msg}]}


class FakeRunPod:
    DEPLOYS = ("deployCpuPod", "podFindAndDeployOnDemand", "podRentInterruptable")

    def __init__(self):
        self.pods: dict[str, dict] = {}
        self.queries: list[str] = []
        self.deploys: list[tuple[str, dict]] = []
        self.interruptible_supported = True
        self.min_bid = 1.49
        self.fail_create: str | None = None  # "502" / "drop": answer garbage after creating; "lost": drop, none made
        self.unknown_field: str | None = None  # an input field the schema rejects, as graphql-js words it
        # data centres as `dataCenters { id name globalNetwork }` lists them; `full` ones refuse every pod
        self.data_centers = [{"id": "EU-RO-1", "name": "Romania", "globalNetwork": True},
                             {"id": "US-KS-2", "name": "Kansas", "globalNetwork": False},
                             {"id": "US-TX-3", "name": "Texas", "globalNetwork": True}]
        self.full: set[str] = set()
        self.no_dc_flag = False  # a schema without DataCenter.globalNetwork
        self.n = 0

    def handle(self, query: str):
        self.queries.append(query)
        if "myself" in query and "pods" in query:
            return {"data": {"myself": {"pods": list(self.pods.values())}}}
        if "dataCenters" in query:
            if self.no_dc_flag:
                return _err('Cannot query field "globalNetwork" on type "DataCenter".')
            return {"data": {"dataCenters": self.data_centers}}
        if "gpuTypes(" in query:
            gid, lp = parse_input(query, "gpuTypes")["id"], parse_input(query, "lowestPrice")
            return {"data": {"gpuTypes": [{
                "id": gid, "secureSpotPrice": self.min_bid + 0.2, "communitySpotPrice": self.min_bid,
                "lowestPrice": {"minimumBidPrice": self.min_bid, "uninterruptablePrice": 2.69 * lp["gpuCount"]}}]}}
        for op in self.DEPLOYS:
            if op + "(" in query:
                return self._deploy(op, parse_input(query, op))
        if "podTerminate(" in query:
            pid = parse_input(query, "podTerminate")["podId"]
            if pid not in self.pods:
                return _err(f"pod {pid} not found")
            self.pods[pid]["desiredStatus"] = "TERMINATED"
            return {"data": {"podTerminate": None}}
        if re.search(r"\bpod\(input", query):
            return {"data": {"pod": self.pods.get(parse_input(query, "pod")["podId"])}}
        return _err("unsupported query")

    def _deploy(self, op: str, inp: dict):
        self.deploys.append((op, inp))
        if op == "deployCpuPod" and ({"gpuTypeId", "globalNetwork", "allowedCudaVersions"} & set(inp)):
            return _err("deployCpuPod takes no GPU fields; global networking is available for NVIDIA GPU pods only")
        if op != "deployCpuPod" and not inp.get("gpuTypeId"):
            return _err("gpuTypeId is required (CPU pods are created with deployCpuPod)")
        if inp.get("globalNetwork") and inp.get("cloudType") != "SECURE":
            return _err("global networking requires Secure Cloud")
        if self.unknown_field in inp:
            return _err(f'Field "{self.unknown_field}" is not defined by type "{op[0].upper() + op[1:]}Input".')
        if op == "podRentInterruptable":
            if not self.interruptible_supported:
                return _err('Cannot query field "podRentInterruptable" on type "Mutation".')
            if inp.get("bidPerGpu", 0) < self.min_bid:
                return _err(f"Your bid {inp.get('bidPerGpu')} is below the minimum bid {self.min_bid}")
        if inp.get("dataCenterId") in self.full:
            return _err("There are no longer any instances available with the requested specifications.")
        if inp.get("globalNetwork") and inp.get("dataCenterId") and not any(
                d["id"] == inp["dataCenterId"] and d["globalNetwork"] for d in self.data_centers):
            return _err(f"global networking is not available in {inp['dataCenterId']}")
        fail, self.fail_create = self.fail_create, None
        if fail == "lost":
            return "drop"
        self.n += 1
        pid = f"pod{self.n:04d}x"
        self.pods[pid] = {
            "id": pid, "name": inp["name"], "desiredStatus": "RUNNING", "imageName": inp["imageName"],
            "env": [f"{e['key']}={e['value']}" for e in inp.get("env", [])],
            "podType": "INTERRUPTABLE" if op == "podRentInterruptable" else "RESERVED", "op": op, "input": inp,
            "costPerHr": inp.get("bidPerGpu", 2.69) * inp.get("gpuCount", 1), "uptimeSeconds": 0,
            "runtime": {"ports": [
                {"ip": "100.65.0.%d" % self.n, "isIpPublic": False, "privatePort": 22, "publicPort": 22, "type": "tcp"},
                {"ip": "203.0.113.%d" % self.n, "isIpPublic": True, "privatePort": 22, "publicPort": 40000 + self.n,
                 "type": "tcp"},
            ]},
        }
        if fail:
            return "drop" if fail == "drop" else "502"
        return {"data": {op: {"id": pid, "imageName": inp["imageName"], "machineId": "m1"}}}

    def ops(self) -> list[str]:
        return [op for op, _ in self.deploys]


@pytest.fixture
def fake_runpod(monkeypatch, tmp_path):
    fake = FakeRunPod()

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            assert self.path == "/graphql"
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.headers.get("Authorization") != f"Bearer {KEY}":
                self._send(401, b"Unauthorized", "text/plain")
                return
            try:
                out = fake.handle(body["query"])
            except Exception as e:  # a query the parser rejects is a GraphQL syntax error at RunPod too
                out = _err(f"Syntax Error: {e}")
            if out == "drop":
                self.close_connection = True
                self.connection.close()
            elif out == "502":
                self._send(502, b"<html><body>502 Bad Gateway</body></html>", "text/html")
            else:
                self._send(200, json.dumps(out).encode(), "application/json")

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    monkeypatch.setenv("RUNPOD_API_BASE_URL", f"http://127.0.0.1:{srv.server_address[1]}")
    monkeypatch.setenv("RUNPOD_API_KEY", KEY)
    # the user's object-store keys, which `up` stages for the pods (runpod/secrets.py); fake, never sent anywhere
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFAKEFAKEFAKE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", STORE_SECRET)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # key files and tag overlays land here
    monkeypatch.delenv("RUNPOD_POD_ID", raising=False)
    try:
        yield fake
    finally:
        srv.shutdown()
        srv.server_close()


NC = {"gpu_type_id": "NVIDIA H100 80GB HBM3", "gpu_count": 1, "image_name": "runpod/pytorch:2.8.0",
      "cloud_type": "SECURE", "container_disk_in_gb": 50, "interruptible": False}


def _provider(tmp_path, name="c1", **extra):
    cfg = {"type": "external", "module": "infra.clusters.runpod.provider.RunPodNodeProvider", "global_networking": False,
           "state_dir": str(tmp_path / "state")}
    return RunPodNodeProvider({**cfg, **extra}, name)


def _template():
    return yaml.safe_load(TEMPLATE.read_text())


def test_create_list_tag_terminate(fake_runpod, tmp_path):
    p = _provider(tmp_path)
    created = p.create_node(NC, {"ray-node-kind": "worker", "ray-user-node-type": "gpu_ondemand"}, 2)
    assert len(created) == 2
    ids = sorted(created)
    assert sorted(p.non_terminated_nodes({})) == ids
    assert p.non_terminated_nodes({"ray-node-kind": "head"}) == []
    a, b = ids
    assert p.node_tags(a)["ray-user-node-type"] == "gpu_ondemand"
    p.set_node_tags(a, {"ray-node-status": "up-to-date"})
    # A second provider instance (the head's monitor) sees initial tags from the pod itself.
    p2 = _provider(tmp_path)
    assert p2.node_tags(a)["ray-node-status"] == "up-to-date"
    assert p.non_terminated_nodes({"ray-node-status": "up-to-date"}) == [a]
    assert p.is_running(a) and not p.is_terminated(a)
    assert p.external_ip(a).startswith("203.0.113.")
    assert p.ssh_endpoint(a)[1] > 40000
    assert p.internal_ip(a).startswith("100.65.0.")
    # Another cluster's pods are invisible.
    other = _provider(tmp_path, "c2")
    assert other.non_terminated_nodes({}) == []
    p.terminate_node(a)
    p.terminate_node(a)  # idempotent: a pod already gone is not an error
    assert p.non_terminated_nodes({}) == [b]
    assert p.is_terminated(a)
    pod = fake_runpod.pods[b]
    assert pod["input"]["cloudType"] == "SECURE" and pod["input"]["gpuCount"] == 1
    assert any(e.startswith(CLUSTER_ENV + "=c1") for e in pod["env"])


def test_hostile_values_stay_inside_their_strings(fake_runpod, tmp_path):
    p = _provider(tmp_path)
    evil = 'x", cloudType: COMMUNITY, imageName: "evil\\'
    nc = dict(NC, env={"NOTE": evil, "PATHY": "a\\b\nc"}, docker_args='bash -c "echo \\"hi\\""',
              gpu_type_id='NVIDIA "H100"', allowed_cuda_versions=["13.0"])
    (pid,) = p.create_node(nc, {"ray-node-kind": "worker"}, 1)
    inp = fake_runpod.pods[pid]["input"]
    assert inp["cloudType"] == "SECURE" and inp["imageName"] == NC["image_name"]
    env = {e["key"]: e["value"] for e in inp["env"]}
    assert env["NOTE"] == evil and env["PATHY"] == "a\\b\nc"
    assert inp["dockerArgs"] == nc["docker_args"] and inp["gpuTypeId"] == 'NVIDIA "H100"'


def test_invalid_inputs_rejected_before_any_query(fake_runpod, tmp_path):
    from infra.clusters.runpod.api import gql_str

    p = _provider(tmp_path)
    for bad in (dict(NC, env={'BAD KEY"': "v"}), dict(NC, cloud_type="SECURE } evil"), dict(NC, ports='22/tcp"'),
                dict(NC, allowed_cuda_versions=['13.0"] evil']), dict(NC, allowed_cuda_versions="13.0"),
                dict(NC, instance_id='cpu3c" evil', gpu_type_id=None),
                dict(NC, interruptible=True, bid_per_gpu=0)):
        with pytest.raises(ConfigError):
            p.create_node(bad, {}, 1)
    with pytest.raises(ConfigError):
        p.terminate_node('abc" } evil')
    assert fake_runpod.deploys == []
    assert gql_str('a"b') == '"a\\"b"'


def test_spot_bids_the_current_minimum_or_the_configured_bid(fake_runpod, tmp_path):
    """Never bidPerGpu 0: without bid_per_gpu the bid is RunPod's current minimum bid for that GPU type and count."""
    p = _provider(tmp_path)
    (pid,) = p.create_node(dict(NC, interruptible=True, gpu_count=2), {}, 1)
    pod = fake_runpod.pods[pid]
    assert pod["podType"] == "INTERRUPTABLE"
    assert pod["input"]["bidPerGpu"] == pytest.approx(fake_runpod.min_bid)
    gq = next(q for q in fake_runpod.queries if "gpuTypes(" in q)
    assert parse_input(gq, "lowestPrice") == {"gpuCount": 2.0, "secureCloud": True}
    assert p.node_labels(pid) == {"s2v-price-key": "runpod-h100-80gb-hbm3-x2", "s2v-market": "spot"}
    (pid2,) = p.create_node(dict(NC, interruptible=True, bid_per_gpu=2.25), {}, 1)
    assert fake_runpod.pods[pid2]["input"]["bidPerGpu"] == pytest.approx(2.25)


def test_refused_spot_falls_back_loudly_and_is_priced_on_demand(fake_runpod, tmp_path, caplog):
    from core.settings import Settings

    p = _provider(tmp_path)
    fake_runpod.min_bid = 9.0  # RunPod says no to the bid: a refusal, so the pod is bought on-demand
    with caplog.at_level("WARNING", logger="s2v.runpod"):
        (a,) = p.create_node(dict(NC, interruptible=True, bid_per_gpu=2.0), {}, 1)
        (b,) = p.create_node(dict(NC, interruptible=True, bid_per_gpu=2.0), {}, 1)
    assert fake_runpod.ops() == ["podRentInterruptable", "podFindAndDeployOnDemand"] * 2
    assert fake_runpod.pods[a]["podType"] == fake_runpod.pods[b]["podType"] == "RESERVED"
    refusals = [r for r in caplog.records if "ON-DEMAND" in r.getMessage()]
    assert len(refusals) == 2 and all(r.levelno == logging.WARNING for r in refusals)  # every time, not once
    assert len(p.fallbacks) == 2
    labels = p.node_labels(a)
    assert labels == {"s2v-price-key": "runpod-h100-80gb-hbm3-x1", "s2v-market": "on-demand"}
    price = Settings().node_prices[labels["s2v-price-key"]]
    assert price.on_demand > price.spot > 0


def test_a_request_runpods_schema_rejects_fails_loudly_instead_of_buying_on_demand(fake_runpod, tmp_path):
    """Any GraphQL error on podRentInterruptable counted as a refused bid, so a schema rejection (a field the live
    API does not have) bought every spot pod on-demand, night after night. It now fails the launch, named; a
    server-side "try again" is transient (the pod is looked up by name, never created twice)."""
    from infra.clusters.runpod.api import BadRequest, Refused, classify

    p = _provider(tmp_path)
    fake_runpod.unknown_field = "bidPerGpu"  # a field the live schema may not have (never checked from here)
    with pytest.raises(PodLaunchError, match="malformed") as ei:
        p.create_node(dict(NC, interruptible=True), {}, 1)
    assert ei.value.category == "RunPodBadRequest" and fake_runpod.ops() == ["podRentInterruptable"]
    assert not p.fallbacks and not fake_runpod.pods
    # the spot mutation itself gone (RunPod retiring interruptible pods) is no bad request: no spot, so on-demand
    fake_runpod.unknown_field, fake_runpod.interruptible_supported = None, False
    (pod,) = p.create_node(dict(NC, interruptible=True), {}, 1)
    assert fake_runpod.pods[pod]["podType"] == "RESERVED" and p.fallbacks
    assert isinstance(classify('Field "PodRentInterruptableInput.globalNetwork" is not defined by type '
                               '"PodRentInterruptableInput".'), BadRequest)
    assert isinstance(classify("Something went wrong. Please try again later or contact support."), TransientError)
    refused = classify("There are no longer any instances available with the requested specifications.")
    assert type(refused) is Refused


def test_one_price_override_keeps_the_rest_of_the_table(monkeypatch):
    from core.settings import Settings

    monkeypatch.setenv("S2V_NODE_PRICES", json.dumps({"runpod-h100-80gb-hbm3-x1": {"on_demand": 2.39, "spot": 1.19}}))
    prices = Settings().node_prices
    assert prices["runpod-h100-80gb-hbm3-x1"].on_demand == 2.39
    assert prices["runpod-rtx-a4000-x1"].on_demand > 0 and prices["runpod-h100-80gb-hbm3-x8"].spot > 0


def test_shipped_template_forms_a_cluster(fake_runpod, tmp_path):
    """Every node type of runpod.yaml deploys as RunPod requires for Ray's pod-to-pod traffic."""
    from core.settings import Settings
    from infra.clusters.config import check_node_configs
    from infra.clusters.runpod.api import price_key

    cfg = _template()
    assert not check_node_configs(cfg).items
    p = _provider(tmp_path, **{k: v for k, v in cfg["provider"].items() if k not in ("type", "module")})
    assert p.global_network
    for name, nt in cfg["available_node_types"].items():
        (pid,) = p.create_node(nt["node_config"], {"ray-user-node-type": name}, 1)
        pod = fake_runpod.pods[pid]
        inp = pod["input"]
        assert pod["op"] in ("podFindAndDeployOnDemand", "podRentInterruptable"), name
        assert inp["globalNetwork"] is True and inp["cloudType"] == "SECURE" and inp["gpuTypeId"], name
        # The CUDA filter is sent: hosts whose driver runs the pinned torch's CUDA 13.0 build.
        assert inp["allowedCudaVersions"] and all(float(v) >= 13.0 for v in inp["allowedCudaVersions"]), name
        assert "trap s2v_sigterm TERM" in inp["dockerArgs"] and "s2v-batch/sigterm" in inp["dockerArgs"]
        assert price_key(nt["node_config"]) in Settings().node_prices, name
    assert cfg["available_node_types"]["head"]["resources"]["GPU"] == 0
    # Both start commands advertise the global-network IP and apply the labels set at create.
    for cmds in (cfg["head_start_ray_commands"], cfg["worker_start_ray_commands"]):
        start = next(c for c in cmds if "ray start" in c)
        assert "python -m infra.clusters.runpod.node env" in start and "--node-ip-address=$S2V_NODE_IP" in start


def test_cpu_pods_use_deploy_cpu_pod_and_cannot_join_global_networking(fake_runpod, tmp_path):
    from infra.clusters.config import check_node_configs

    cpu = {"image_name": "runpod/base:0.6.3-cpu", "instance_id": "cpu3c-2-4", "container_disk_in_gb": 20}
    (pid,) = _provider(tmp_path).create_node(cpu, {}, 1)
    op, inp = fake_runpod.deploys[-1]
    assert op == "deployCpuPod" and inp["instanceId"] == "cpu3c-2-4"
    assert not {"gpuTypeId", "globalNetwork", "allowedCudaVersions", "bidPerGpu"} & set(inp)
    with pytest.raises(ConfigError, match="global networking"):
        _provider(tmp_path, global_networking=True).create_node(cpu, {}, 1)
    assert len(fake_runpod.deploys) == 1
    # The config check says so before `up`: a CPU head, or a Community Cloud worker, cannot join.
    cfg = _template()
    cfg["available_node_types"]["head"]["node_config"] = dict(cpu)
    cfg["available_node_types"]["gpu_spot"]["node_config"]["cloud_type"] = "COMMUNITY"
    probs = [str(x) for x in check_node_configs(cfg).items]
    assert any("head.node_config" in x and "CPU pod cannot join" in x for x in probs)
    assert any("gpu_spot.node_config" in x and "COMMUNITY cannot use global networking" in x for x in probs)


def test_config_checks_bids_cuda_data_center_and_head_gpu():
    from infra.clusters.config import check_node_configs

    cfg = _template()
    types = cfg["available_node_types"]
    types["gpu_spot"]["node_config"].update(bid_per_gpu=0, allowed_cuda_versions=[13.0])
    types["gpu_ondemand"]["node_config"]["data_center_id"] = "us-west-2"
    types["head"]["resources"].pop("GPU")
    cfg["provider"]["data_center_id"] = "eu-ro-1"
    probs = [str(x) for x in check_node_configs(cfg).items]
    assert any("bid_per_gpu" in x and "positive" in x for x in probs)
    assert any("allowed_cuda_versions" in x for x in probs)
    assert any("gpu_ondemand.node_config" in x and "'us-west-2'" in x for x in probs)
    assert any(x.startswith("provider") and "'eu-ro-1'" in x for x in probs)
    assert any("head" in x and "GPU: 0" in x for x in probs)


def test_generated_config_keeps_aws_regions_out_of_runpod():
    from core.settings import Settings
    from infra.clusters.generate import generate_config

    work = "s3://bucket/s2v-work"
    cfg = generate_config(Settings(cloud_provider="runpod"), work=work)  # cloud_region defaults to us-west-2
    assert cfg["provider"]["data_center_id"] == "any"
    cfg = generate_config(Settings(cloud_provider="runpod", cloud_region="EU-RO-1", cloud_image="me/img:1"), work=work)
    assert cfg["provider"]["data_center_id"] == "EU-RO-1"
    assert {nt["node_config"]["image_name"] for nt in cfg["available_node_types"].values()} == {"me/img:1"}


def _key_leaks(fake, *texts) -> list[str]:
    return [t[:80] for t in [*fake.queries, *texts] if KEY in t]


def test_api_key_reaches_the_head_as_a_file_only(fake_runpod, tmp_path, caplog, monkeypatch):
    """Through Ray's own launcher code: staged 0600, mounted on the head only, read there from the file."""
    from ray.autoscaler._private.commands import _bootstrap_config, _set_up_config_for_head_node

    cfg = _template()
    cfg["provider"]["state_dir"] = str(tmp_path / "state")
    with caplog.at_level("DEBUG"):
        boot = _bootstrap_config(copy.deepcopy(cfg), no_config_cache=True)
        key_file = boot["provider"]["api_key_file"]
        local = Path(boot["file_mounts"][key_file])
        assert local.read_text().strip() == KEY and stat.S_IMODE(local.stat().st_mode) == 0o600
        p = RunPodNodeProvider(boot["provider"], boot["cluster_name"])
        head_cfg, remote_file = _set_up_config_for_head_node(copy.deepcopy(boot), p, no_restart=False)
        remote_text = Path(remote_file.name).read_text()  # ~/ray_bootstrap_config.yaml on the head
        remote_file.close()
        remote = json.loads(remote_text)
        assert head_cfg["file_mounts"][key_file] == str(local)  # the launcher syncs it to the head...
        assert key_file not in remote["file_mounts"]  # ...whose autoscaler never passes it on to workers
        assert remote["provider"]["api_key_file"] == key_file
        for name, nt in cfg["available_node_types"].items():
            p.create_node(nt["node_config"], {"ray-user-node-type": name}, 1)
        # On the head: RunPod sets a pod-scoped RUNPOD_API_KEY there; the account key comes from the mounted file.
        monkeypatch.setenv("RUNPOD_POD_ID", "headpod0001")
        monkeypatch.setenv("RUNPOD_API_KEY", "pod-scoped-key")
        head = RunPodNodeProvider(remote["provider"], remote["cluster_name"])
        assert len(head.non_terminated_nodes({})) == 3
    envs = [e for pod in fake_runpod.pods.values() for e in pod["env"]]
    assert not _key_leaks(fake_runpod, json.dumps(boot), json.dumps(head_cfg), remote_text, caplog.text, *envs)
    assert len(fake_runpod.queries) > 3


def test_head_without_key_file_fails_clearly(fake_runpod, tmp_path, monkeypatch):
    monkeypatch.setenv("RUNPOD_POD_ID", "headpod0001")
    with pytest.raises(ClusterError, match="scoped to that pod"):
        _provider(tmp_path)
    monkeypatch.delenv("RUNPOD_POD_ID")
    monkeypatch.delenv("RUNPOD_API_KEY")
    with pytest.raises(ClusterError, match="RUNPOD_API_KEY"):
        _provider(tmp_path)


def test_secrets_never_go_into_pod_env(fake_runpod, tmp_path):
    from infra.clusters.config import check_node_configs

    with pytest.raises(ConfigError, match="secret"):
        _provider(tmp_path).create_node(dict(NC, env={"RUNPOD_API_KEY": KEY}), {}, 1)
    assert fake_runpod.deploys == []
    cfg = _template()
    cfg["available_node_types"]["gpu_spot"]["node_config"]["env"] = {"AWS_SECRET_ACCESS_KEY": "x"}
    assert any("looks like a secret" in str(x) for x in check_node_configs(cfg).items)


def test_exited_pods_are_deleted_and_gone(fake_runpod, tmp_path, caplog):
    p = _provider(tmp_path)
    a, b = sorted(p.create_node(dict(NC, interruptible=True), {}, 2))
    fake_runpod.pods[a]["desiredStatus"] = "EXITED"  # what an interrupted spot pod looks like
    with caplog.at_level("WARNING", logger="s2v.runpod"):
        assert p.non_terminated_nodes({}) == [b]
    assert fake_runpod.pods[a]["desiredStatus"] == "TERMINATED"
    assert any("podTerminate" in q and a in q for q in fake_runpod.queries)
    assert p.is_terminated(a) and "EXITED" in caplog.text


@pytest.mark.parametrize("failure", ["502", "drop"])
def test_create_is_never_resent_after_an_unanswered_request(fake_runpod, tmp_path, caplog, failure):
    """RunPod made the pod but the answer was lost: the provider finds it by name instead of creating a second."""
    p = _provider(tmp_path)
    fake_runpod.fail_create = failure
    with caplog.at_level("WARNING", logger="s2v.runpod"):
        created = p.create_node(NC, {"ray-node-kind": "worker"}, 1)
    assert len(fake_runpod.pods) == 1 and fake_runpod.ops() == ["podFindAndDeployOnDemand"]
    assert list(created) == list(fake_runpod.pods) and "using it" in caplog.text


def test_create_lost_without_a_pod_is_reported_not_resent(fake_runpod, tmp_path):
    from ray.autoscaler.node_launch_exception import NodeLaunchException

    p = _provider(tmp_path)
    fake_runpod.fail_create = "lost"
    with pytest.raises(NodeLaunchException, match="not retried"):
        p.create_node(dict(NC, interruptible=True), {}, 1)
    assert fake_runpod.ops() == ["podRentInterruptable"] and fake_runpod.pods == {}


def test_internal_ip_is_the_global_network_address_on_runpod(fake_runpod, tmp_path, monkeypatch):
    import socket

    p = _provider(tmp_path, global_networking=True)
    (pid,) = p.create_node(NC, {}, 1)
    asked: list[str] = []
    real = socket.gethostbyname

    def resolve(host):  # *.runpod.internal exists only inside RunPod; everything else resolves as usual
        asked.append(host)
        return "100.96.4.7" if host.endswith(".runpod.internal") else real(host)

    monkeypatch.setattr(socket, "gethostbyname", resolve)
    assert p.internal_ip(pid).startswith("100.65.0.")  # on the user's machine: no lookup of a RunPod-only name
    assert asked == []
    monkeypatch.setenv("RUNPOD_POD_ID", "headpod0001")
    p2 = _provider(tmp_path, global_networking=True)  # the head: its key comes from the file p staged
    assert p2.internal_ip(pid) == "100.96.4.7" and asked == [f"{pid}.runpod.internal"]


def test_node_start_env_merges_labels_and_sets_the_node_ip(tmp_path, monkeypatch, capsys):
    """What the start commands eval: the market RunPod actually gave wins over the node type's label."""
    import socket

    from infra.clusters.runpod import node as runpod_node

    environ = tmp_path / "environ"
    labels = {"s2v-price-key": "runpod-h100-80gb-hbm3-x1", "s2v-market": "on-demand"}
    environ.write_bytes(b"\0".join([b"PATH=/usr/bin", b"RUNPOD_POD_ID=abc123xyz",
                                    f"S2V_RAY_LABELS={json.dumps(labels)}".encode()]) + b"\0")
    monkeypatch.setenv("RAY_OVERRIDE_LABELS", json.dumps({"s2v-market": "spot", "team": "render"}))
    monkeypatch.setattr(socket, "gethostbyname", lambda h: {"abc123xyz.runpod.internal": "100.96.0.9"}[h])
    assert runpod_node.main(["env", str(environ)]) == 0
    line = capsys.readouterr().out.strip()
    out = subprocess.run(["bash", "-c", f'{line}; echo "$S2V_NODE_IP"; echo "$RAY_OVERRIDE_LABELS"'],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "100.96.0.9"
    assert json.loads(out[1]) == {**labels, "team": "render"}
    # Ray's own reader of RAY_OVERRIDE_LABELS (what `ray start` applies) parses it.
    from ray._private.resource_and_label_spec import ResourceAndLabelSpec

    monkeypatch.setenv("RAY_OVERRIDE_LABELS", out[1])
    assert ResourceAndLabelSpec._load_env_labels()["s2v-market"] == "on-demand"
    # A pod without global networking fails loudly instead of starting Ray on an unreachable address.
    monkeypatch.setattr(socket, "gethostbyname", lambda h: (_ for _ in ()).throw(socket.gaierror("no such name")))
    with pytest.raises(SystemExit, match="global networking"):
        runpod_node.main(["ip", str(environ)])
    r = subprocess.run([sys.executable, "-m", "infra.clusters.runpod.node", "labels", str(environ)], capture_output=True,
                       text=True, env={**os.environ, "RAY_OVERRIDE_LABELS": ""}, cwd=ROOT, check=True)
    assert json.loads(r.stdout) == labels


def test_pod_entrypoint_traps_sigterm_into_the_watchers_flag(tmp_path):
    """The entrypoint RunPod runs as PID 1 (docker args): a real bash with a fake HOME gets SIGTERM and leaves the
    flag the preemption watcher honours (its contract: infra/preemption/sigterm.py)."""
    import shlex
    import signal
    import subprocess
    import time

    from infra.preemption.sigterm import FLAG_NAME, SIGTERM_FLAG_DIR, SigtermSource
    from infra.clusters.runpod.provider import SIGTERM_ENTRYPOINT

    argv = shlex.split(SIGTERM_ENTRYPOINT)
    assert argv[:2] == ["bash", "-c"]
    # only the trap part: the rest starts sshd, which has no place in a test
    script = argv[2].split("; (test -x /start.sh")[0] + "; sleep 30 & wait"
    proc = subprocess.Popen(["bash", "-c", script], env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    flag = tmp_path / SIGTERM_FLAG_DIR.removeprefix("~/") / FLAG_NAME
    try:
        end = time.monotonic() + 10
        while not flag.parent.is_dir() and time.monotonic() < end:  # made just before the trap is set
            time.sleep(0.02)
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    finally:
        proc.kill()
    assert flag.is_file() and (flag.parent.stat().st_mode & 0o077) == 0
    src = SigtermSource(flag_path=str(flag), install_handler=False, not_before=time.time() - 60)
    assert [n.source for n in src.check()] == ["sigterm"]


def test_pods_land_only_in_data_centres_with_global_networking(fake_runpod, tmp_path):
    """data_center_id `any`: each pod tries the data centres RunPod lists with global networking, the next one when
    a centre has no capacity; a centre without it is never asked. A pinned centre is the only one tried."""
    fake_runpod.full = {"EU-RO-1"}
    p = _provider(tmp_path, global_networking=True, data_center_id="any")
    (pid,) = p.create_node(NC, {}, 1)
    asked = [inp.get("dataCenterId") for _op, inp in fake_runpod.deploys]
    assert asked == ["EU-RO-1", "US-TX-3"] and fake_runpod.pods[pid]["input"]["dataCenterId"] == "US-TX-3"
    assert "S2V_DATA_CENTER=US-TX-3" in fake_runpod.pods[pid]["env"]
    p.create_node(NC, {}, 1)
    assert sum("dataCenters" in q for q in fake_runpod.queries) == 1  # asked once per provider
    fake_runpod.full = {"EU-RO-1", "US-TX-3"}
    with pytest.raises(PodLaunchError, match="RunPodRefused"):
        p.create_node(NC, {}, 1)
    assert "US-KS-2" not in [inp.get("dataCenterId") for _op, inp in fake_runpod.deploys]
    fake_runpod.full, fake_runpod.deploys = set(), []
    _provider(tmp_path, global_networking=True, data_center_id="US-TX-3").create_node(NC, {}, 1)
    assert [inp["dataCenterId"] for _op, inp in fake_runpod.deploys] == ["US-TX-3"]


def test_a_schema_without_the_global_network_flag_asks_for_a_data_centre(fake_runpod, tmp_path):
    fake_runpod.no_dc_flag = True
    with pytest.raises(ConfigError, match="provider.data_center_id"):
        _provider(tmp_path, global_networking=True).create_node(NC, {}, 1)
    assert fake_runpod.deploys == []


def _launched_for_up(tmp_path, monkeypatch) -> dict:
    """What `up` hands Ray's launcher for the template (launch_config with a project; the wheel build stubbed)."""
    from infra.clusters import launch
    from core.settings import Settings

    def build(root, dist, cache=None):
        dist.mkdir(parents=True, exist_ok=True)
        (dist / "s2v-build.json").write_text(json.dumps({"fingerprint": "f" * 64, "version": "0"}))
        return SimpleNamespace(fingerprint="f" * 64)

    cfg = _template()
    cfg["provider"]["state_dir"] = str(tmp_path / "state")
    cfg["metadata"]["s2v"]["work"] = "s3://night-work/s2v-work"
    path = tmp_path / "runpod.yaml"
    path.write_text(yaml.safe_dump(cfg))
    monkeypatch.setattr(launch, "build_bundle", build)
    return launch.launch_config(path, tmp_path, Settings(clusters_dir=tmp_path / "clusters"))


def test_object_store_keys_reach_every_pod_as_a_file(fake_runpod, tmp_path, caplog, monkeypatch):
    """Through Ray's launcher code: the keys are staged 0600 and mounted; the head's config keeps the mount, so its
    autoscaler copies it to every worker it sets up; they never appear in a query or pod env."""
    from ray.autoscaler._private.commands import _bootstrap_config, _set_up_config_for_head_node

    from infra.clusters.runpod.secrets import MOUNT

    cfg = _launched_for_up(tmp_path, monkeypatch)
    with caplog.at_level("DEBUG"):
        boot = _bootstrap_config(copy.deepcopy(cfg), no_config_cache=True)
        local = Path(boot["file_mounts"][MOUNT])
        assert stat.S_IMODE(local.stat().st_mode) == 0o600
        out = subprocess.run(["bash", "-c", f". {local}; printf '%s\\n' \"$AWS_ACCESS_KEY_ID\" \"$AWS_SECRET_ACCESS_KEY\""],
                             capture_output=True, text=True, check=True).stdout.splitlines()
        assert out == ["AKIAFAKEFAKEFAKE", STORE_SECRET]  # quoted: a quote in the secret stays in it
        p = RunPodNodeProvider(boot["provider"], boot["cluster_name"])
        _head_cfg, remote_file = _set_up_config_for_head_node(copy.deepcopy(boot), p, no_restart=False)
        remote = json.loads(Path(remote_file.name).read_text())
        remote_file.close()
        assert MOUNT in remote["file_mounts"]  # the workers' mounts come from the head's copy
        for name, nt in cfg["available_node_types"].items():
            p.create_node(nt["node_config"], {"ray-user-node-type": name}, 1)
    envs = [e for pod in fake_runpod.pods.values() for e in pod["env"]]
    texts = [*fake_runpod.queries, *envs, caplog.text, json.dumps(boot), json.dumps(remote)]
    assert not [t[:60] for t in texts if STORE_SECRET in t]


def test_no_keys_for_an_s3_work_area_fails_up_before_any_pod_but_not_down(fake_runpod, tmp_path, monkeypatch):
    from ray.autoscaler._private.commands import _bootstrap_config

    from infra.clusters.runpod.secrets import MOUNT

    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ClusterError, match="AWS_SECRET_ACCESS_KEY.*s2v cluster up"):
        _launched_for_up(tmp_path, monkeypatch)
    assert fake_runpod.deploys == []
    cfg = _template()  # down, status, exec: the launcher's bootstrap needs no object-store keys
    cfg["provider"]["state_dir"] = str(tmp_path / "state")
    assert MOUNT not in (_bootstrap_config(copy.deepcopy(cfg), no_config_cache=True).get("file_mounts") or {})


def test_the_weight_sync_sees_the_endpoint_and_the_mounted_keys(s3_server, tmp_path, monkeypatch):
    """A node set up as `up` leaves it (node.json with metadata.s2v.s3_endpoint_url, the keys file mounted) syncs the
    weights from an S3-compatible store that is not AWS (SeaweedFS on 127.0.0.1) with no keys in its own env."""
    from infra.clusters import node
    from storage_servers import ACCESS_KEY, SECRET_KEY, unique

    bucket = s3_server.make_bucket(unique("weights"))
    s3_server.client().put_object(Bucket=bucket, Key="wan/model.safetensors", Body=b"w" * 1000)
    home = tmp_path / "home"
    (home / "s2v-dist").mkdir(parents=True)
    meta = {"model_dir": f"s3://{bucket}/wan", "s3_endpoint_url": s3_server.endpoint, "s3_region": "us-east-1"}
    (home / "s2v-dist" / "node.json").write_text(json.dumps({"metadata": meta}))
    (home / ".s2v").mkdir()
    (home / ".s2v" / "objstore.env").write_text(f"export AWS_ACCESS_KEY_ID={ACCESS_KEY}\n"
                                                f"export AWS_SECRET_ACCESS_KEY={SECRET_KEY}\n")
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "S2V_S3_ENDPOINT_URL", "S2V_NODE_CACHE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    node.prepare(home)
    shown = subprocess.run(["bash", "-c", f"HOME={home}; . {home}/.s2v/node.env && echo \"$S2V_S3_ENDPOINT_URL "
                            "$AWS_ACCESS_KEY_ID\""], capture_output=True, text=True, check=True).stdout.split()
    assert shown == [s3_server.endpoint, ACCESS_KEY]  # what `ray start` (and so every actor) inherits
    dest = node.sync_weights(home)
    import time

    deadline = time.monotonic() + 60
    while node.status(dest, meta["model_dir"]) != "ready":
        assert node.status(dest, meta["model_dir"]) != "failed", (dest.with_name(dest.name + ".log")).read_text()
        assert time.monotonic() < deadline, "the weight sync did not finish"
        time.sleep(0.2)
    assert (dest / "model.safetensors").read_bytes() == b"w" * 1000
    # without the keys file node.env still sources cleanly: the start commands run `. node.env && ray start`
    (home / ".s2v" / "objstore.env").unlink()
    subprocess.run(["bash", "-c", f"HOME={home}; . {home}/.s2v/node.env && true"], check=True)


def test_the_cost_clock_reads_pods_from_their_create_at_runpods_price(fake_runpod, tmp_path):
    import time

    from infra.clusters.clock import Tracker
    from infra.clusters.clock_readers import RunPodClock

    p = _provider(tmp_path)
    before = time.time()
    (a,) = p.create_node(dict(NC, interruptible=True), {"ray-node-type": "worker", "ray-user-node-type": "gpu_spot"}, 1)
    (b,) = p.create_node(NC, {"ray-node-type": "head"}, 1)
    _provider(tmp_path, "other").create_node(NC, {}, 1)
    tracker = Tracker(RunPodClock({"state_dir": str(tmp_path / "state")}, "c1"))
    got = {i.id: i for i in tracker.read()}
    assert set(got) == {a, b}
    assert got[a].market == "spot" and got[a].usd_per_hour == pytest.approx(1.49)  # its bid: RunPod's costPerHr
    assert got[a].node_type == "gpu_spot" and got[b].head and got[b].usd_per_hour == pytest.approx(2.69)
    assert before - 1 <= got[a].launched <= time.time() + 1 and got[a].instance_type == "runpod-h100-80gb-hbm3-x1"
    del fake_runpod.pods[a]  # terminated pods vanish from RunPod's list
    gone = {i.id: i for i in tracker.read()}[a]
    assert gone.terminated is not None and gone.end_source == "last seen"
