"""RunPod node provider against a local HTTP server on 127.0.0.1 that speaks RunPod's GraphQL shapes.

The server parses each query's input object with a small GraphQL value parser, so a value that escaped its
string literal would show up as a changed structure (or a parse error) here, as it would at RunPod.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from infra.runpod_provider import CLUSTER_ENV, RunPodNodeProvider, deployment_mutation, gql_str
from core.errors import ConfigError

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


class FakeRunPod:
    def __init__(self):
        self.pods: dict[str, dict] = {}
        self.queries: list[str] = []
        self.interruptible_supported = True
        self.n = 0

    def handle(self, query: str) -> dict:
        self.queries.append(query)
        if "myself" in query and "pods" in query:
            return {"data": {"myself": {"pods": list(self.pods.values())}}}
        for op in ("podFindAndDeployOnDemand", "podRentInterruptable"):
            if op + "(" in query:
                if op == "podRentInterruptable" and not self.interruptible_supported:
                    return {"errors": [{"message": "Cannot query field \"podRentInterruptable\" on type \"Mutation\"."}]}
                inp = parse_input(query, op)
                self.n += 1
                pid = f"pod{self.n:04d}x"
                self.pods[pid] = {
                    "id": pid, "name": inp["name"], "desiredStatus": "RUNNING", "imageName": inp["imageName"],
                    "env": [f"{e['key']}={e['value']}" for e in inp.get("env", [])],
                    "podType": "INTERRUPTABLE" if op == "podRentInterruptable" else "RESERVED",
                    "input": inp,
                    "runtime": {"ports": [
                        {"ip": "100.65.0.%d" % self.n, "isIpPublic": False, "privatePort": 22, "publicPort": 22,
                         "type": "tcp"},
                        {"ip": "203.0.113.%d" % self.n, "isIpPublic": True, "privatePort": 22,
                         "publicPort": 40000 + self.n, "type": "tcp"},
                    ]},
                }
                return {"data": {op: {"id": pid, "desiredStatus": "RUNNING", "imageName": inp["imageName"],
                                      "machineId": "m1"}}}
        if "podTerminate(" in query:
            pid = parse_input(query, "podTerminate")["podId"]
            self.pods[pid]["desiredStatus"] = "TERMINATED"
            return {"data": {"podTerminate": None}}
        if re.search(r"\bpod\(input", query):
            pid = parse_input(query, "pod")["podId"]
            return {"data": {"pod": self.pods.get(pid)}}
        return {"errors": [{"message": "unsupported query"}]}


@pytest.fixture
def fake_runpod(monkeypatch, tmp_path):
    fake = FakeRunPod()

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            assert self.path == "/graphql"
            if self.headers.get("Authorization") != "Bearer test-key":
                self.send_response(401)
                self.end_headers()
                return
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            try:
                out = json.dumps(fake.handle(body["query"])).encode()
            except Exception as e:  # a query the parser rejects is a GraphQL syntax error at RunPod too
                out = json.dumps({"errors": [{"message": f"Syntax Error: {e}"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    monkeypatch.setenv("RUNPOD_API_BASE_URL", f"http://127.0.0.1:{srv.server_address[1]}")
    monkeypatch.setenv("RUNPOD_API_KEY", "test-key")
    try:
        yield fake
    finally:
        srv.shutdown()
        srv.server_close()


NC = {"gpu_type_id": "NVIDIA H100 80GB HBM3", "gpu_count": 1, "image_name": "runpod/pytorch:2.8.0",
      "cloud_type": "SECURE", "container_disk_in_gb": 50, "interruptible": False}


def _provider(tmp_path, name="c1"):
    return RunPodNodeProvider({"type": "external", "module": "infra.runpod_provider.RunPodNodeProvider",
                               "global_networking": False, "state_dir": str(tmp_path)}, name)


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
    assert p.non_terminated_nodes({}) == [b]
    assert p.is_terminated(a)
    pod = fake_runpod.pods[b]
    assert pod["input"]["cloudType"] == "SECURE" and pod["input"]["gpuCount"] == 1
    assert any(e.startswith(CLUSTER_ENV + "=c1") for e in pod["env"])


def test_hostile_values_stay_inside_their_strings(fake_runpod, tmp_path):
    p = _provider(tmp_path)
    evil = 'x", cloudType: COMMUNITY, imageName: "evil\\'
    nc = dict(NC, env={"NOTE": evil, "PATHY": "a\\b\nc"}, docker_args='bash -c "echo \\"hi\\""')
    (pid,) = p.create_node(nc, {"ray-node-kind": "worker"}, 1)
    inp = fake_runpod.pods[pid]["input"]
    assert inp["cloudType"] == "SECURE" and inp["imageName"] == NC["image_name"]
    env = {e["key"]: e["value"] for e in inp["env"]}
    assert env["NOTE"] == evil and env["PATHY"] == "a\\b\nc"
    assert inp["dockerArgs"] == nc["docker_args"]


def test_invalid_inputs_rejected_before_any_query(fake_runpod, tmp_path):
    p = _provider(tmp_path)
    with pytest.raises(ConfigError):
        p.create_node(dict(NC, env={'BAD KEY"': "v"}), {}, 1)
    with pytest.raises(ConfigError):
        p.create_node(dict(NC, cloud_type="SECURE } evil"), {}, 1)
    with pytest.raises(ConfigError):
        p.create_node(dict(NC, ports='22/tcp"'), {}, 1)
    with pytest.raises(ConfigError):
        p.terminate_node('abc" } evil')
    assert not any("Deploy" in q for q in fake_runpod.queries)
    assert gql_str('a"b') == '"a\\"b"'


def test_interruptible_then_fallback_with_warning(fake_runpod, tmp_path, caplog):
    p = _provider(tmp_path)
    (pid,) = p.create_node(dict(NC, interruptible=True, bid_per_gpu=1.2), {}, 1)
    assert fake_runpod.pods[pid]["podType"] == "INTERRUPTABLE"
    assert fake_runpod.pods[pid]["input"]["bidPerGpu"] == pytest.approx(1.2)
    fake_runpod.interruptible_supported = False
    with caplog.at_level("WARNING", logger="s2v.runpod"):
        (pid2,) = p.create_node(dict(NC, interruptible=True), {}, 1)
    assert fake_runpod.pods[pid2]["podType"] == "RESERVED"
    assert "ON-DEMAND" in caplog.text


def test_ssh_port_in_command_runner(fake_runpod, tmp_path):
    import subprocess

    p = _provider(tmp_path)
    (pid,) = p.create_node(NC, {}, 1)
    r = p.get_command_runner("x: ", pid, {"ssh_user": "root"}, "c1", subprocess, False)
    assert r.ssh_options.arg_dict["Port"] == p.ssh_endpoint(pid)[1]


def test_global_networking_flag_and_mutation_shape():
    q = deployment_mutation("n", NC, {"A": "1"}, False, True)
    inp = parse_input(q, "podFindAndDeployOnDemand")
    assert inp["globalNetwork"] is True and inp["startSsh"] is True and inp["ports"] == "22/tcp"
    assert "s2v-sigterm" in inp["dockerArgs"]


def test_missing_key(monkeypatch, tmp_path):
    import runpod

    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    monkeypatch.setattr(runpod, "api_key", None)
    from core.errors import ClusterError

    with pytest.raises(ClusterError, match="RUNPOD_API_KEY"):
        _provider(tmp_path)
