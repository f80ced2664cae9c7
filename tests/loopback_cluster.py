"""A Ray node provider whose "nodes" run on 127.0.0.1, for driving Ray's launcher (`s2v cluster up`) in tests.

Approach (DESIGN.md "Clouds"): Ray's `fake_multinode` provider cannot be driven through the launcher from the
wheel, so `LocalNodeProvider` runs nodes on loopback. Node state lives in a JSON file (the provider is
instantiated in the launching process and again in the head's autoscaler monitor). Each node has its own folder,
used as its HOME and working directory, so nodes share no home; the command runner runs the launcher's commands
there with `bash -c`. `ray stop` would stop every Ray on this machine, so the runner replaces it with killing
only the processes that carry this node's environment marker.

`port_forward` — what Ray's SSH runner turns into `ssh -L LOCAL:localhost:REMOTE` — is a small TCP forwarder
process from 127.0.0.1:LOCAL to the node's 127.0.0.1:REMOTE, started through the process_runner the caller
passed, exactly where Ray would start ssh. So a caller's tunnel code (its process_runner, its wait for the
forward, closing it) runs as it does against a real head; only Ray's ssh itself is left out.

Run as a script (`python loopback_cluster.py forward LOCAL HOST REMOTE`) it is that forwarder.
"""

from __future__ import annotations

import asyncio
import atexit
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

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
MARKER = "S2V_LOCAL_NODE"
MODULE = "loopback_cluster.LocalNodeProvider"
_NOT_INHERITED = ("S2V_", "AWS_", "GOOGLE_", "GCE_", "CLOUDSDK_", "STORAGE_EMULATOR_HOST", "RUNPOD_")  # `provider.module` in a cluster config (tests/ is on PYTHONPATH)


# --- the forwarder (stdlib only: it also runs as a bare script) ---------------------------------------------

async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.close()
        except OSError:
            pass


async def _forward(local_port: int, host: str, remote_port: int) -> None:
    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection(host, remote_port)
        except OSError:
            cw.close()  # like ssh: the forward exists, the far side refuses
            return
        await asyncio.gather(_pipe(cr, uw), _pipe(ur, cw))

    server = await asyncio.start_server(handle, "127.0.0.1", local_port)
    async with server:
        await server.serve_forever()


def forward_main(argv: list[str]) -> int:
    local_port, host, remote_port = int(argv[0]), argv[1], int(argv[2])
    try:
        asyncio.run(_forward(local_port, host, remote_port))
    except OSError as e:  # the local port is taken: fail as ssh does with ExitOnForwardFailure=yes
        print(f"bind [127.0.0.1]:{local_port}: {e}", file=sys.stderr)
        return 255
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "forward":
    sys.exit(forward_main(sys.argv[2:]))


# --- nodes ----------------------------------------------------------------------------------------------------

from ray.autoscaler._private.command_runner import _with_environment_variables  # noqa: E402
from ray.autoscaler._private.subprocess_output_util import ProcessRunnerError  # noqa: E402
from ray.autoscaler.command_runner import CommandRunnerInterface  # noqa: E402
from ray.autoscaler.node_provider import NodeProvider  # noqa: E402

import pytest  # noqa: E402

from procs import free_ports, marked_pids  # noqa: E402


def node_pids(node_id: str) -> list[int]:
    return [p for p in marked_pids(node_id, MARKER) if p != os.getpid()]


def kill_node(node_id: str) -> None:
    kill_nodes([node_id])


def kill_nodes(node_ids: list[str], grace_s: float = 1.0) -> None:
    """Stop only the processes started for these nodes (never a machine-wide `ray stop`), all at once: SIGTERM,
    then SIGKILL for what is still there after grace_s — an instance going away, not a polite shutdown."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        pids = [p for n in node_ids for p in node_pids(n)]
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        end = time.time() + wait_s
        while pids and time.time() < end:
            time.sleep(0.1)
            pids = [p for n in node_ids for p in node_pids(n)]
        if not pids:
            return


def forwarder_argv(local_port: int, remote_port: int, host: str = "127.0.0.1") -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "forward", str(local_port), host, str(remote_port)]


class LocalCommandRunner(CommandRunnerInterface):
    """Runs the launcher's commands in the node's own folder (its HOME), as Ray's SSH runner would remotely."""

    def __init__(self, node_id: str, home: Path, extra_env: dict[str, str], process_runner=subprocess):
        self.node_id, self.home, self.extra_env = node_id, home, extra_env
        self.process_runner = process_runner

    def _path(self, p: str) -> Path:
        return Path(p.replace("~", str(self.home), 1)) if p.startswith("~") else Path(p)

    def node_env(self) -> dict[str, str]:
        # a node shares nothing with the launching shell: no S2V_* settings, no cloud credentials
        env = {k: v for k, v in os.environ.items() if not k.startswith(_NOT_INHERITED)}
        env.update(HOME=str(self.home), **{MARKER: self.node_id}, **self.extra_env)
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        return env

    def run(self, cmd=None, timeout=120, exit_on_fail=False, port_forward=None, with_output=False,
            environment_variables=None, run_env="auto", ssh_options_override_ssh_key="", shutdown_after_run=False,
            silent=False):
        forwards = [port_forward] if isinstance(port_forward, tuple) else list(port_forward or [])
        if forwards and not cmd:
            # `ssh -L … user@head 'while true; do sleep 86400; done'`: runs until the caller ends it
            (local, remote), *more = forwards
            if more:
                raise NotImplementedError("the loopback runner forwards one port per call")
            return self.process_runner.check_call(forwarder_argv(local, remote), stdin=subprocess.DEVNULL)
        cmd = cmd or "true"
        if re.search(r"\bray stop\b", cmd):
            kill_node(self.node_id)
            cmd = re.sub(r"\bray stop\b", "true", cmd)
        if environment_variables:
            cmd = _with_environment_variables(cmd, environment_variables)
        helpers = [subprocess.Popen(forwarder_argv(lp, rp), start_new_session=True) for lp, rp in forwards]
        try:
            r = subprocess.run(["bash", "-c", cmd], cwd=self.home, env=self.node_env(), capture_output=True,
                               timeout=timeout)
        finally:
            for h in helpers:
                h.terminate()
                h.wait(timeout=10)
        if not with_output and not silent:
            sys.stdout.write(r.stdout.decode(errors="replace"))  # what ssh shows of a remote command
            sys.stdout.flush()
        if r.returncode != 0:
            raise ProcessRunnerError(f"Command failed: {cmd}\n{r.stderr.decode(errors='replace')[-2000:]}",
                                     "ssh_command_failed", code=r.returncode, command=cmd)
        return r.stdout if with_output else ""

    def run_rsync_up(self, source, target, options=None):
        dst = self._path(target)
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree(source, dst, dirs_exist_ok=True) if os.path.isdir(source) else shutil.copy2(source, dst))

    def run_rsync_down(self, source, target, options=None):
        src = self._path(source)
        (shutil.copytree(src, target, dirs_exist_ok=True) if src.is_dir() else shutil.copy2(src, target))

    def remote_shell_command_str(self):
        return "bash"

    def run_init(self, *, as_head, file_mounts, sync_run_yet):
        return None


class LocalNodeProvider(NodeProvider):
    """provider config: `state_path` (JSON state; each node's folder lives beside it), `ray_address` (the
    head's GCS, as RAY_ADDRESS in every node's environment), optional `node_env` (more environment for every
    node: what an instance profile or an image would give a real one) and `ray_temp_dir` (removed by stop_all)."""

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
            # a new file renamed into place: a reader without the lock (stop_all, while the autoscaler still runs)
            # never sees a half-written one — it read an empty file once and failed the rehearsal's teardown
            tmp = self.state.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self.state)

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
        self.terminate_nodes([node_id])

    def terminate_nodes(self, node_ids):
        kill_nodes(list(node_ids))
        with self._nodes() as nodes:
            for nid in node_ids:
                nodes[nid]["state"] = "terminated"

    def node_home(self, node_id) -> Path:
        return self.state.parent / node_id

    def get_command_runner(self, log_prefix, node_id, auth_config, cluster_name, process_runner,
                           use_internal_ip, docker_config=None):
        # the project comes from the wheel installed in the node's own ~/site, never from this checkout
        env = {"PYTHONPATH": f"{self.node_home(node_id)}/site:{TESTS}", "RAY_ADDRESS": self.provider_config["ray_address"],
               **{str(k): str(v) for k, v in (self.provider_config.get("node_env") or {}).items()}}
        return LocalCommandRunner(node_id, self.node_home(node_id), env, process_runner)

    def stop_all(self) -> None:
        """Test cleanup: kill every node's processes, whatever state the file says, and remove Ray's temp dir."""
        kill_nodes(list(json.loads(self.state.read_text())) if self.state.exists() else [])
        if self.provider_config.get("ray_temp_dir"):
            shutil.rmtree(self.provider_config["ray_temp_dir"], ignore_errors=True)


LOOPBACK_LABELS = {"s2v-price-key": "loopback", "s2v-market": "on-demand"}


def loopback_config(tmp_path: Path, *, head_cpus: int = 1, head_gpus: int = 0, max_workers: int = 1,
                    metadata: dict | None = None, node_env: dict | None = None) -> dict:
    """A cluster config for LocalNodeProvider: a head started with `ray start` on free loopback ports (its
    dashboard, the Jobs API, on 127.0.0.1 only and named in `metadata.s2v.dashboard_port`) and one GPU worker
    type (no Ray started on workers: tests that need them add their own start commands)."""
    from infra.clusters.config import CPU_WORK_RESOURCE, CPU_WORK_SLOTS

    gcs, dash, client, agent = free_ports(4)
    # Its own Ray temp dir (short: Unix socket paths are limited to 107 bytes): in the shared /tmp/ray, the head
    # would be "the current cluster" that any `address="auto"` on this machine joins — other tests' included.
    temp = f"/tmp/s2v-ray-{uuid.uuid4().hex[:8]}"  # created by `ray start`, removed by stop_all
    # the autoscaler looks every second, not every 5 s: a test waits for what it does, never for its idle loop
    head_start = (f"AUTOSCALER_UPDATE_INTERVAL_S=1 ray start --head --node-ip-address=127.0.0.1 --port={gcs} "
                  "--dashboard-host=127.0.0.1 "
                  f"--dashboard-port={dash} --ray-client-server-port={client} --dashboard-agent-listen-port={agent} "
                  f"--num-cpus={head_cpus} --num-gpus={head_gpus} --disable-usage-stats --temp-dir={temp} "
                  f"--resources='{{\"{CPU_WORK_RESOURCE}\": {CPU_WORK_SLOTS}}}' "
                  "--autoscaling-config=~/ray_bootstrap_config.yaml")
    meta = {"s2v": {"work": "s3://loopback/s2v-work", "dashboard_port": dash, "idle_stop_minutes": 0,
                    "prices": {"loopback": {"on_demand": 0.0, "spot": 0.0}}}}
    for k, v in (metadata or {}).get("s2v", {}).items():
        meta["s2v"][k] = v
    # the head carries the CPU-work marker like the shipped configs' heads (infra/clusters/config.py)
    resources = {"CPU": head_cpus, **({"GPU": head_gpus} if head_gpus else {}), CPU_WORK_RESOURCE: CPU_WORK_SLOTS}
    return {
        "cluster_name": f"t{uuid.uuid4().hex[:6]}",
        "max_workers": max_workers,
        "idle_timeout_minutes": 1,
        "provider": {"type": "external", "module": MODULE, "state_path": str(tmp_path / "nodes" / "state.json"),
                     "ray_address": f"127.0.0.1:{gcs}", "ray_temp_dir": temp,
                     **({"node_env": node_env} if node_env else {})},
        "auth": {"ssh_user": "nobody"},
        "head_node_type": "head",
        "available_node_types": {
            "head": {"resources": resources, "node_config": {}, "labels": dict(LOOPBACK_LABELS)},
            "gpu_ondemand": {"resources": {"CPU": 1, "GPU": 1}, "node_config": {}, "min_workers": 0,
                             "max_workers": max_workers, "labels": dict(LOOPBACK_LABELS)},
        },
        "metadata": meta,
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [],
        # The same mechanism as the real configs (the wheel `s2v cluster up` builds and mounts at ~/s2v-dist),
        # installed without deps into the node's own folder, which comes first on its PYTHONPATH: the test's venv
        # already has the dependencies.
        "setup_commands": ["test -s ~/s2v-dist/WHEEL && find ~/s2v-dist -maxdepth 1 -name '*.whl' ! -name \"$(cat ~/s2v-dist/WHEEL)\" -delete",
                           "rm -rf ~/site && python -m pip install -q --no-deps --no-index --target ~/site "
                           "~/s2v-dist/$(cat ~/s2v-dist/WHEEL)"],
        "head_setup_commands": [], "worker_setup_commands": [],
        "head_start_ray_commands": ["ray stop", head_start],
        "worker_start_ray_commands": ["ray stop", "true"],
    }


@contextmanager
def loopback_cluster(cfg: dict, path: Path, down: bool = False):
    """`s2v cluster up` on this config (written to path), yielding the provider; afterwards every node's
    processes are stopped by marker (after `s2v cluster down` when down=True; test_cluster_cli tests down)."""
    import yaml
    from typer.testing import CliRunner

    from orchestrator.cli.cluster import app

    path.write_text(yaml.safe_dump(cfg))
    provider = LocalNodeProvider(cfg["provider"], cfg["cluster_name"])
    try:
        res = CliRunner().invoke(app, ["up", str(path)])
        assert res.exit_code == 0, res.output
        yield provider
    finally:
        try:
            if down:
                CliRunner().invoke(app, ["down", str(path)])
        finally:
            provider.stop_all()


# One S3-backed loopback cluster per test session, shared by the modules that import the fixture below (a fixture
# imported into several modules is defined once per module, so the singleton is what makes it "once").
_shared: dict = {}


def _stop_shared() -> None:
    ctx = _shared.pop("ctx", None)
    _shared.clear()
    if ctx is not None:
        ctx.__exit__(None, None, None)


atexit.register(_stop_shared)


@pytest.fixture(scope="session")
def s3_cluster(s3_server, tmp_path_factory, request):
    """A loopback cluster for `s2v render --cluster`: a head with 2 CPUs and 2 logical GPUs, no workers, S3
    credentials in the node's own environment (what an instance profile gives a real node) and its work area
    (`metadata.s2v.work`) in a bucket of the session's SeaweedFS. Yields a dict: path, provider, head, bucket."""
    from storage_servers import ACCESS_KEY, SECRET_KEY, unique

    if "info" not in _shared:
        tmp = tmp_path_factory.mktemp("loopback-cluster")
        bucket = s3_server.make_bucket(unique("cluster"))
        node_env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                    "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/dev/null"}
        cfg = loopback_config(tmp, head_cpus=2, head_gpus=2, max_workers=0, node_env=node_env,
                              metadata={"s2v": {"work": f"s3://{bucket}/work"}})
        ctx = loopback_cluster(cfg, tmp / "cluster.yaml")
        provider = ctx.__enter__()
        _shared["ctx"] = ctx
        (head,) = provider.non_terminated_nodes({"ray-node-type": "head"})
        _shared["info"] = {"path": str(tmp / "cluster.yaml"), "provider": provider, "head": head, "bucket": bucket}
        request.addfinalizer(_stop_shared)
    return _shared["info"]
