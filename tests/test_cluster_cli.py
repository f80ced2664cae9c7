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
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from ray.autoscaler.tags import NODE_KIND_HEAD, STATUS_UP_TO_DATE, TAG_RAY_NODE_KIND, TAG_RAY_NODE_STATUS
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
        res = r.invoke(app, ["init", "--no-resolve-zones", prov, "--bucket", "my-bucket", "--out", str(out), "--spot", "--gpus", "1",
                             "--max-workers", "2", *extra])
        assert res.exit_code == 0, res.output
        cfg = yaml.safe_load(out.read_text())
        assert {"head", "gpu_spot", "gpu_ondemand"} <= set(cfg["available_node_types"])
        assert cfg["metadata"]["s2v"]["work"].endswith("://my-bucket/s2v-work")
    res = r.invoke(app, ["init", "--no-resolve-zones", "aws", "--bucket", "b", "--out", str(tmp_path / "aws.yaml")])
    assert res.exit_code == 2 and "--force" in res.output
    res = r.invoke(app, ["init", "--no-resolve-zones", "--provider", "azure", "--bucket", "b", "--out", str(tmp_path / "x.yaml")])
    assert res.exit_code == 2 and "unknown provider" in res.output
    res = r.invoke(app, ["init", "--no-resolve-zones", "aws", "--out", str(tmp_path / "nobucket.yaml"), "--no-resolve-images"])
    assert res.exit_code == 2 and "--bucket" in res.output and not (tmp_path / "nobucket.yaml").exists()
    res = r.invoke(app, ["init", "--no-resolve-zones", "gcp", "--bucket", "b", "--out", str(tmp_path / "noproject.yaml")])
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
        res = CliRunner().invoke(app, ["init", "--no-resolve-zones", "aws", "--bucket", "b", "--region", "eu-west-1", "--out", str(out)])
        assert res.exit_code == 0, res.output
        cfg = yaml.safe_load(out.read_text())
        images = {n: nt["node_config"]["ImageId"] for n, nt in cfg["available_node_types"].items()}
        assert images == {"head": "ami-0fedcba9876543210", "gpu_spot": "ami-0123456789abcdef0",
                          "gpu_ondemand": "ami-0123456789abcdef0"}
        assert sorted(set(_SSM.asked)) == sorted({(AWS_GPU_IMAGE_PARAM, "eu-west-1"), (AWS_HEAD_IMAGE_PARAM, "eu-west-1")})
        assert AWS_GPU_IMAGE_PARAM in cfg["metadata"]["s2v"]["image_source"]
        # A parameter that is not there: a clear error naming it and the way around it; nothing written.
        _SSM.values = {}
        res = CliRunner().invoke(app, ["init", "--no-resolve-zones", "aws", "--bucket", "b", "--out", str(tmp_path / "x.yaml")])
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

        # A change in the checkout reaches the node on the next `up` (here one that keeps Ray running), also with
        # a new version: the node then holds the old wheel too (its sync never deletes), and installs the new one.
        (project / "orchestrator" / "cli" / "cluster.py").write_text(marker.read_text() + "\n# changed after up\n")
        pyproject = project / "pyproject.toml"
        pyproject.write_text(pyproject.read_text().replace('version = "0.1.0"', 'version = "0.1.1"', 1))
        res = r.invoke(app, ["up", str(path), "--project", str(project), "--no-restart"])
        assert res.exit_code == 0, res.output
        assert marker.read_text().endswith("# changed after up\n")
        assert [w.name for w in (home / "s2v-dist").glob("*.whl")] == ["s2v_batch-0.1.1-py3-none-any.whl"]
        assert json.loads((home / "s2v-dist" / "s2v-build.json").read_text())["fingerprint"] == \
            source_fingerprint(project) != record["fingerprint"]

        # `up` restarts Ray on every node: with a job running there it refuses, and the job runs on
        from orchestrator.remote.submit import jobs_api

        with jobs_api(str(path)) as client:
            job = client.submit_job(entrypoint="sleep 300", metadata={"run_id": "night-7"})
            deadline = time.time() + 60
            while str(client.get_job_status(job)).rsplit(".", 1)[-1] != "RUNNING" and time.time() < deadline:
                time.sleep(0.5)
            res = r.invoke(app, ["up", str(path), "--project", str(project)])
            assert res.exit_code == 1 and "night-7 (running)" in res.output and "--no-restart" in res.output
            assert str(client.get_job_status(job)).rsplit(".", 1)[-1] == "RUNNING"
            client.stop_job(job)

        res = r.invoke(app, ["down", str(path)])
        assert res.exit_code == 0, res.output
        assert provider.non_terminated_nodes({}) == []
        assert _node_pids(head) == []
        res = r.invoke(app, ["status", str(path)])
        assert res.exit_code != 0
    finally:
        provider.stop_all()


MALFORMED = [
    ("provider", lambda c: c.update(provider="aws"), "provider", "must be a mapping"),
    ("types-as-list", lambda c: c.update(available_node_types=[{"name": "head"}]), "available_node_types",
     "must be a mapping"),
    ("meta-as-string", lambda c: c["metadata"].update(s2v="s3://bucket/work"), "metadata.s2v", "must be a mapping"),
    ("gpu-as-string", lambda c: c["available_node_types"]["gpu_ondemand"]["resources"].update(GPU="1"),
     "resources.GPU", "must be a number"),
    ("azure", lambda c: c.update(provider={"type": "azure", "location": "westus2"}), "provider",
     "'azure' is not a provider s2v supports"),
]


@pytest.mark.parametrize("name, break_it, where, says", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_malformed_cluster_config_exits_2_naming_the_key(tmp_path, run_cli, capsys, name, break_it, where, says):
    """Hand-edited configs gave tracebacks (AttributeError, TypeError) or passed validation and then failed with
    "No module named 'azure'"; `render --cluster` read metadata.s2v before anything checked it."""
    cfg = _local_config(tmp_path)
    break_it(cfg)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["status", str(path)])
    assert res.exit_code == 2, res.output
    assert where in res.output and says in res.output and "Traceback" not in res.output
    manifest = tmp_path / "m.yaml"
    manifest.write_text("jobs:\n  - {id: a, audio: a.wav, image: p.png, output: s3://b/out}\n")
    assert run_cli("render", str(manifest), "--cluster", str(path), "--work", "s3://b/work") == 2
    err = capsys.readouterr().err
    assert where in err and says in err and "Traceback" not in err


def _running_head(cfg: dict, name: str = "local-head") -> None:
    """A head node in the loopback provider's state, as `up` leaves it (nothing started: nothing is needed)."""
    state = Path(cfg["provider"]["state_path"])
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps({name: {"state": "running", "tags": {
        TAG_RAY_NODE_KIND: NODE_KIND_HEAD, TAG_RAY_NODE_STATUS: STATUS_UP_TO_DATE,
        "ray-cluster-name": cfg["cluster_name"]}}}))


def test_a_planted_ray_config_cache_is_never_read(tmp_path, monkeypatch, capsys):
    """Ray trusts `$TMPDIR/ray-config-<sha256 of the config>` as the resolved config, a name anyone can compute:
    planted by another local user with `auth.ssh_proxy_command`, it ran their command as you on the next
    `s2v cluster dashboard`. s2v drives the launcher with a temp folder of its own (~/.s2v/tmp, 0700)."""
    import copy
    import hashlib
    import os
    import stat
    import tempfile

    from ray.autoscaler._private.util import prepare_config

    from infra.clusters.launch import launch_config
    from orchestrator.remote import tunnel

    public = tmp_path / "shared-tmp"
    public.mkdir()
    public.chmod(0o1777)
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TMPDIR", str(public))
    monkeypatch.setenv("S2V_CLUSTERS_DIR", str(tmp_path / "clusters"))
    monkeypatch.setattr(tempfile, "tempdir", None)
    cfg = _local_config(tmp_path)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(cfg))
    _running_head(cfg)
    prepared = prepare_config(copy.deepcopy(launch_config(path)))
    key = hashlib.sha256(json.dumps([prepared], sort_keys=True).encode()).hexdigest()
    pwned = tmp_path / "PWNED"
    evil = {**prepared, "auth": {"ssh_user": "nobody", "ssh_proxy_command": f"touch {pwned}"}}
    (public / f"ray-config-{key}").write_text(json.dumps({"_version": 1, "config": evil}))

    head = tunnel.find_head(path)
    assert "ssh_proxy_command" not in head.config["auth"]
    res = CliRunner().invoke(app, ["status", str(path)])
    assert "Loaded cached provider configuration" not in res.output and not pwned.exists()
    assert not [p for p in public.iterdir() if p.name.startswith("ray-config-") and p.name != f"ray-config-{key}"]
    private = home / ".s2v" / "tmp"
    assert private.is_dir() and stat.S_IMODE(os.stat(private).st_mode) == 0o700
    capsys.readouterr()


def test_a_generated_cluster_config_is_private(tmp_path):
    import os
    import stat

    out = tmp_path / "cluster.yaml"
    res = CliRunner().invoke(app, ["init", "--no-resolve-zones", "aws", "--bucket", "b", "--out", str(out), "--no-resolve-images"])
    assert res.exit_code == 0, res.output
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600


def test_a_port_another_program_holds_is_never_used_for_the_tunnel(tmp_path):
    """The tunnel asked /api/version before checking that ssh held its port: a program already listening there
    got the run's `POST /api/jobs/` (entrypoint and env). The port must be the tunnel's own before a byte goes."""
    from core.errors import ClusterError
    from orchestrator.remote import tunnel

    got = []

    class Squatter(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 — http.server's naming
            got.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"ray_version": "2.60.0"}')

        do_POST = do_GET

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Squatter)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        cfg = _local_config(tmp_path)
        head = tunnel.Head(str(tmp_path / "cluster.yaml"), cfg, LocalNodeProvider(cfg["provider"], cfg["cluster_name"]),
                           "local-head")
        with pytest.raises(ClusterError, match="is taken"):
            with tunnel.jobs_tunnel(head, local_port=srv.server_address[1], timeout_s=15):
                pytest.fail("the tunnel handed out a port another program holds")
        assert got == []  # nothing was sent to it
    finally:
        srv.shutdown()
        srv.server_close()
