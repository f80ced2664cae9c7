"""`s2v cluster logs --setup NODE / --autoscaler` and `exec --node`, on loopback: the shell commands the head runs
are run here by bash over a monitor.out laid out as Ray's autoscaler writes it (its updater's `NodeUpdater: <id>:`
lines around each node's command output), and the worker hop is the real `ssh` client through two paramiko SSH
servers on 127.0.0.1 (the head forwards the connection to the worker, as `ssh -W` asks)."""

from __future__ import annotations

import socket
import subprocess
import threading
from pathlib import Path

import paramiko
import pytest
from test_hostkeys import SSHServer, _OneHead, _Session, client_side

from core.errors import ClusterError
from orchestrator.remote import workers
from orchestrator.remote.tunnel import Head

MONITOR_OUT = """\
2026-12-01 10:00:00,000 INFO autoscaler.py:1 -- StandardAutoscaler: Queue 2 new nodes for launch
NodeUpdater: i-aaa: Updating to 9a1b
NodeUpdater: i-bbb: Updating to 9a1b
Collecting s2v-batch (from aaa's install)
NodeUpdater: i-bbb: Setup commands succeeded [LogTimer=40000ms]
error: Failed to download torch (aaa's uv)
NodeUpdater: i-aaa: Setup commands failed [LogTimer=41000ms]
2026-12-01 10:01:00,000 INFO autoscaler.py:1 -- Terminating i-aaa: setup failed
"""


def _logs(tmp_path: Path) -> Path:
    logs = tmp_path / "ray" / "session_latest" / "logs"
    logs.mkdir(parents=True)
    (logs / "monitor.out").write_text(MONITOR_OUT)
    (logs / "monitor.err").write_text("ssh: warning from some node\n")
    (logs / "monitor.log").write_text("autoscaler summary\n")
    return logs


def _bash(cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=30)


def test_the_setup_log_of_one_node_leaves_the_others_updater_lines_out(tmp_path):
    logs = _logs(tmp_path)
    r = _bash(workers.setup_log_command(str(logs), "i-aaa", 200))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "NodeUpdater: i-aaa: Updating to 9a1b" in out and "Setup commands failed" in out
    assert "Failed to download torch" in out  # the command output between its updater's lines
    assert "i-bbb" not in out  # the other node's own lines are left out
    assert "Terminating" not in out  # after its last line
    assert "ssh: warning from some node" in out  # monitor.err, not split by node, shown after
    r = _bash(workers.setup_log_command(str(logs), "i-ccc", 200))
    assert r.returncode == 4 and "no setup for node i-ccc" in r.stderr and "i-aaa i-bbb" in r.stderr
    r = _bash(workers.setup_log_command(str(tmp_path / "nowhere"), "i-aaa", 200))
    assert r.returncode == 3 and "no Ray logs under" in r.stderr


def test_the_autoscaler_logs_are_the_monitor_files(tmp_path):
    logs = _logs(tmp_path)
    r = _bash(workers.autoscaler_log_command(str(logs), 2, follow=False))
    assert r.returncode == 0 and "autoscaler summary" in r.stdout and "==> monitor.out <==" in r.stdout
    assert "Queue 2 new nodes" not in r.stdout  # only the last 2 lines of each
    assert "tail -n 5 -f monitor*" in workers.autoscaler_log_command(str(logs), 5, follow=True)
    r = _bash(workers.autoscaler_log_command(str(tmp_path / "none"), 2, follow=False))
    assert r.returncode == 3 and "no autoscaler logs" in r.stderr


def test_the_logs_folder_follows_the_heads_temp_dir():
    assert workers.logs_dir({}) == "/tmp/ray/session_latest/logs"
    cfg = {"head_start_ray_commands": ["ray stop", "ray start --head --temp-dir=/mnt/ray --port=6379"]}
    assert workers.logs_dir(cfg) == "/mnt/ray/session_latest/logs"


def test_the_worker_hop_checks_both_host_keys(tmp_path):
    head_opts = ["-i", "/k", "-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=/pins/head.known_hosts",
                 "-o", "Port=2222"]
    options = {"IdentitiesOnly": "yes", "Port": 2222, "StrictHostKeyChecking": "yes",
               "UserKnownHostsFile": "/pins/head.known_hosts", "ControlPath": "/tmp/x"}
    argv = workers.worker_ssh_argv(head_opts, "ubuntu@1.2.3.4", "/k", options, "ubuntu", "10.0.0.7",
                                   tmp_path / "w.known_hosts", first=False, command="nvidia-smi")
    assert argv[0] == "ssh" and argv[-2:] == ["ubuntu@10.0.0.7", "nvidia-smi"]
    opts = [argv[i + 1] for i, a in enumerate(argv) if a == "-o"]
    assert "StrictHostKeyChecking=yes" in opts and f"UserKnownHostsFile={tmp_path / 'w.known_hosts'}" in opts
    assert not any(o.startswith(("Port=", "ControlPath=")) for o in opts)  # the head's port and sharing stay there
    (proxy,) = [o for o in opts if o.startswith("ProxyCommand=")]
    assert "UserKnownHostsFile=/pins/head.known_hosts" in proxy and "-W %h:%p ubuntu@1.2.3.4" in proxy
    first = workers.worker_ssh_argv(head_opts, "ubuntu@1.2.3.4", "/k", options, "ubuntu", "10.0.0.7",
                                    tmp_path / "w.known_hosts", first=True)
    assert "StrictHostKeyChecking=accept-new" in first and first[-1] == "ubuntu@10.0.0.7"


class _Forwarding(_Session):
    """The head's sshd for `ssh -W`: a direct-tcpip channel to the destination, bridged byte for byte."""

    def __init__(self, commands, server):
        super().__init__(commands)
        self.server = server

    def check_channel_direct_tcpip_request(self, chanid, origin, destination):
        self.server.forwards.append(destination)
        self.server.pending[chanid] = destination
        return paramiko.OPEN_SUCCEEDED


class _HeadServer(SSHServer):
    def __init__(self):
        self.forwards: list[tuple[str, int]] = []
        self.pending: dict[int, tuple[str, int]] = {}
        self.channels: list[paramiko.Channel] = []  # held: a dropped Channel closes itself
        super().__init__()

    def session(self) -> paramiko.ServerInterface:
        return _Forwarding(self.commands, self)

    def started(self, transport: paramiko.Transport) -> None:
        threading.Thread(target=self._bridge, args=(transport,), daemon=True).start()

    def _bridge(self, t: paramiko.Transport) -> None:
        while (ch := t.accept(timeout=30)) is not None:
            self.channels.append(ch)
            dest = self.pending.pop(ch.get_id(), None)
            if dest:
                threading.Thread(target=self._forward, args=(ch, dest), daemon=True).start()

    def _forward(self, ch: paramiko.Channel, dest: tuple[str, int]) -> None:
        out = socket.create_connection(dest, timeout=20)

        def pump(src, dst):
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for close in (dst.close, src.close):
                    try:
                        close()
                    except OSError:
                        pass

        threading.Thread(target=pump, args=(ch, out), daemon=True).start()
        pump(out, ch)


class _WithWorker(_OneHead):
    def __init__(self, port: int, worker_port: int):
        super().__init__(port)
        self.worker_port = worker_port

    def non_terminated_nodes(self, tag_filters):
        return ["head-1", "w-1"]


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    cfg, config_path = client_side(tmp_path, monkeypatch)
    head_srv, worker_srv = _HeadServer(), SSHServer()
    head = Head(config_path, cfg, _WithWorker(head_srv.port, worker_srv.port), "head-1")
    head.pin_host_key()
    yield head, head_srv, worker_srv
    head_srv.stop()
    worker_srv.stop()


def _run_on_worker(head: Head, port: int, command: str):
    argv, first = workers.worker_hop(head, "w-1", "127.0.0.1", command)
    argv = [argv[0], "-o", f"Port={port}", *argv[1:]]  # the test worker's sshd is not on 22 (ssh takes the first)
    return subprocess.run(argv, capture_output=True, text=True, timeout=60), first


def test_exec_on_a_worker_goes_through_the_pinned_head_and_pins_the_worker(cluster):
    from infra.clusters import hostkeys

    head, head_srv, worker_srv = cluster
    assert workers.find_node(head, "w-1") == ("w-1", "127.0.0.1")
    with pytest.raises(ClusterError, match="no worker 'w-9'.*w-1"):
        workers.find_node(head, "w-9")
    r, first = _run_on_worker(head, worker_srv.port, "nvidia-smi")
    assert r.returncode == 0 and first, r.stderr
    assert worker_srv.commands == ["nvidia-smi"] and head_srv.forwards == [("127.0.0.1", worker_srv.port)]
    pinned = hostkeys.known_hosts(head.config_path, "w-1")
    assert pinned.stat().st_size
    r, first = _run_on_worker(head, worker_srv.port, "true")
    assert r.returncode == 0 and not first, r.stderr

    port = worker_srv.port
    worker_srv.stop()
    impostor = SSHServer(port)  # the worker's address, another key
    try:
        r, first = _run_on_worker(head, port, "cat ~/.s2v/secrets/x")
        assert r.returncode == 255 and not first and impostor.commands == []
        assert "Host key verification failed" in r.stderr or "IDENTIFICATION HAS CHANGED" in r.stderr
    finally:
        impostor.stop()


def test_logs_and_exec_refuse_what_they_cannot_mean(tmp_path):
    from typer.testing import CliRunner

    from orchestrator.cli.cluster import app

    r = CliRunner()
    res = r.invoke(app, ["logs"])
    assert res.exit_code == 2 and "--setup NODE or --autoscaler" in res.output
    res = r.invoke(app, ["logs", "night-7", "--autoscaler"])
    assert res.exit_code == 2 and "one of RUN, --setup NODE, --autoscaler" in res.output
    res = r.invoke(app, ["logs", "--setup", "i-1;reboot", "-c", str(tmp_path / "c.yaml")])
    assert res.exit_code == 2 and "not a node id or IP" in res.output and "Traceback" not in res.output
