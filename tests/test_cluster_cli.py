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
            "head": {"resources": {"CPU": 1}, "node_config": {}},
            "gpu_ondemand": {"resources": {"CPU": 1, "GPU": 1}, "node_config": {}, "min_workers": 0,
                             "max_workers": 1},
        },
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [],
        "head_start_ray_commands": ["ray stop", head_start],
        "worker_start_ray_commands": ["ray stop", "true"],
    }


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
        for nid in json.loads(provider.state.read_text()) if provider.state.exists() else []:
            kill_node(nid)
