"""`s2v cluster init/up/status/down` through ray.autoscaler.sdk against a small external provider of our own.

Approach (DESIGN.md "Clouds"): Ray's `fake_multinode` provider cannot be driven through the launcher from the
wheel, so `LocalNodeProvider` below runs "nodes" on 127.0.0.1: node state lives in a JSON file (the provider is
instantiated in this process and again in the head's autoscaler monitor) and its command runner runs the
launcher's commands locally, with HOME set to the node's own folder. `ray stop` would stop every Ray on this
machine, so the runner replaces it with killing only the processes that carry this node's environment marker.
"""

from __future__ import annotations

import fcntl
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.command_runner import _with_environment_variables
from ray.autoscaler.command_runner import CommandRunnerInterface
from ray.autoscaler.node_provider import NodeProvider
from ray.autoscaler.tags import NODE_KIND_HEAD, TAG_RAY_NODE_KIND
from typer.testing import CliRunner

from orchestrator.cli_cluster import app
from procs import free_ports, marked_pids

MARKER = "S2V_LOCAL_NODE"
TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def _node_pids(node_id: str) -> list[int]:
    return [p for p in marked_pids(node_id, MARKER) if p != os.getpid()]


def kill_node(node_id: str) -> None:
    """Stop only the processes started for this node (never a machine-wide `ray stop`)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _node_pids(node_id)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        end = time.time() + 5
        while pids and time.time() < end:
            time.sleep(0.1)
            pids = _node_pids(node_id)
        if not pids:
            return


class LocalCommandRunner(CommandRunnerInterface):
    def __init__(self, node_id: str, home: Path, extra_env: dict[str, str]):
        self.node_id, self.home, self.extra_env = node_id, home, extra_env

    def _path(self, p: str) -> Path:
        return Path(p.replace("~", str(self.home), 1)) if p.startswith("~") else Path(p)

    def run(self, cmd=None, timeout=120, exit_on_fail=False, port_forward=None, with_output=False,
            environment_variables=None, run_env="auto", ssh_options_override_ssh_key="", shutdown_after_run=False):
        cmd = cmd or "true"
        if re.search(r"\bray stop\b", cmd):
            kill_node(self.node_id)
            cmd = re.sub(r"\bray stop\b", "true", cmd)
        if environment_variables:
            cmd = _with_environment_variables(cmd, environment_variables)
        env = dict(os.environ, HOME=str(self.home), **{MARKER: self.node_id}, **self.extra_env)
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        r = subprocess.run(["bash", "-c", cmd], cwd=self.home, env=env, capture_output=True,
                           timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"command failed ({r.returncode}): {cmd}\n{r.stderr.decode()[-2000:]}")
        return r.stdout if with_output else ""

    def run_rsync_up(self, source, target, options=None):
        dst = self._path(target)
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree(source, dst, dirs_exist_ok=True) if os.path.isdir(source) else shutil.copy(source, dst))

    def run_rsync_down(self, source, target, options=None):
        src = self._path(source)
        (shutil.copytree(src, target, dirs_exist_ok=True) if src.is_dir() else shutil.copy(src, target))

    def remote_shell_command_str(self):
        return "bash"

    def run_init(self, *, as_head, file_mounts, sync_run_yet):
        return None


class LocalNodeProvider(NodeProvider):
    def __init__(self, provider_config, cluster_name):
        super().__init__(provider_config, cluster_name)
        self.state = Path(provider_config["state_path"])
        self.state.parent.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def _nodes(self):
        with open(self.state.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = json.loads(self.state.read_text()) if self.state.exists() else {}
            yield data
            self.state.write_text(json.dumps(data))

    def non_terminated_nodes(self, tag_filters):
        with self._nodes() as nodes:
            return [i for i, n in nodes.items() if n["state"] != "terminated"
                    and all(n["tags"].get(k) == v for k, v in tag_filters.items())]

    def is_running(self, node_id):
        with self._nodes() as nodes:
            return nodes[node_id]["state"] == "running"

    def is_terminated(self, node_id):
        with self._nodes() as nodes:
            return nodes[node_id]["state"] == "terminated"

    def node_tags(self, node_id):
        with self._nodes() as nodes:
            return dict(nodes[node_id]["tags"])

    def external_ip(self, node_id):
        return "127.0.0.1"

    def internal_ip(self, node_id):
        return "127.0.0.1"

    def create_node(self, node_config, tags, count):
        with self._nodes() as nodes:
            for _ in range(count):
                nid = f"local-{uuid.uuid4().hex[:8]}"
                nodes[nid] = {"state": "running", "tags": dict(tags)}
                (self.state.parent / nid).mkdir()

    def set_node_tags(self, node_id, tags):
        with self._nodes() as nodes:
            nodes[node_id]["tags"].update(tags)

    def terminate_node(self, node_id):
        kill_node(node_id)
        with self._nodes() as nodes:
            nodes[node_id]["state"] = "terminated"

    def get_command_runner(self, log_prefix, node_id, auth_config, cluster_name, process_runner,
                           use_internal_ip, docker_config=None):
        env = {"PYTHONPATH": f"{TESTS}:{ROOT}", "RAY_ADDRESS": self.provider_config["ray_address"]}
        return LocalCommandRunner(node_id, self.state.parent / node_id, env)


LOOPBACK_LABELS = {"s2v-price-key": "loopback", "s2v-market": "on-demand"}


def _local_config(tmp_path: Path) -> dict:
    gcs, dash, client, agent = free_ports(4)
    head_start = (f"ray start --head --node-ip-address=127.0.0.1 --port={gcs} --dashboard-host=127.0.0.1 "
                  f"--dashboard-port={dash} --ray-client-server-port={client} --dashboard-agent-listen-port={agent} "
                  "--num-cpus=1 --num-gpus=0 --disable-usage-stats --autoscaling-config=~/ray_bootstrap_config.yaml")
    return {
        "cluster_name": f"t{uuid.uuid4().hex[:6]}",
        "max_workers": 1,
        "idle_timeout_minutes": 1,
        "provider": {"type": "external", "module": "test_cluster_cli.LocalNodeProvider",
                     "state_path": str(tmp_path / "nodes" / "state.json"), "ray_address": f"127.0.0.1:{gcs}"},
        "auth": {"ssh_user": "nobody"},
        "head_node_type": "head",
        "available_node_types": {
            "head": {"resources": {"CPU": 1}, "node_config": {}, "labels": LOOPBACK_LABELS},
            "gpu_ondemand": {"resources": {"CPU": 1, "GPU": 1}, "node_config": {}, "min_workers": 0,
                             "max_workers": 1, "labels": LOOPBACK_LABELS},
        },
        "metadata": {"s2v": {"work": "s3://loopback/s2v-work", "dashboard_port": dash, "idle_stop_minutes": 0,
                             "prices": {"loopback": {"on_demand": 0.0, "spot": 0.0}}}},
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [],
        # The same mechanism as the real configs (the wheel `up` mounts at ~/s2v-dist), installed without deps
        # into the node's own folder: the test's venv already has them.
        "setup_commands": ["rm -rf ~/site && python -m pip install -q --no-deps --no-index --target ~/site "
                           "~/s2v-dist/*.whl"],
        "head_setup_commands": [], "worker_setup_commands": [],
        "head_start_ray_commands": ["ray stop", head_start],
        "worker_start_ray_commands": ["ray stop", "true"],
    }


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
        marker = home / "site" / "orchestrator" / "cli_cluster.py"
        assert marker.read_bytes() == (project / "orchestrator" / "cli_cluster.py").read_bytes()
        res = r.invoke(app, ["status", str(path)])
        assert res.exit_code == 0, res.output
        assert "head: 127.0.0.1" in res.output and "Node status" in res.output
        # The node type's cost labels reached the running node (the launcher hands them to `ray start`).
        from ray.util.state import list_nodes

        (node,) = list_nodes(address=f"http://127.0.0.1:{cfg['metadata']['s2v']['dashboard_port']}", detail=True)
        assert {k: node.labels.get(k) for k in LOOPBACK_LABELS} == LOOPBACK_LABELS

        # A change in the checkout reaches the node on the next `up` (here one that keeps Ray running).
        (project / "orchestrator" / "cli_cluster.py").write_text(marker.read_text() + "\n# changed after up\n")
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
        for nid in json.loads(provider.state.read_text()) if provider.state.exists() else []:
            kill_node(nid)
