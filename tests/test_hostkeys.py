"""The head's SSH host key is pinned and checked, with the real `ssh` client and Ray's own SSH command runner
against an SSH server on 127.0.0.1 (paramiko's server side: a stand-in for the head's sshd, which is out of reach
here). The review's finding: the tunnel and secret delivery ran with `StrictHostKeyChecking=no` and
`UserKnownHostsFile=/dev/null`, so a man in the middle received the webhook secret and URL token."""

from __future__ import annotations

import socket
import subprocess
import threading

import paramiko
import pytest
from ray.autoscaler.node_provider import NodeProvider

from core.errors import ClusterError
from infra.clusters import hostkeys
from orchestrator.remote.tunnel import Head


class _Session(paramiko.ServerInterface):
    def __init__(self, commands: list[str]):
        self.commands = commands

    def check_channel_request(self, kind, chanid):
        return paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def get_allowed_auths(self, username):
        return "publickey"

    def check_auth_publickey(self, username, key):
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_pty_request(self, *args):
        return True

    def check_channel_exec_request(self, channel, command):
        self.commands.append(command.decode())

        def finish():
            channel.send_exit_status(0)
            channel.close()

        threading.Timer(0.05, finish).start()
        return True


class SSHServer:
    """An SSH server on 127.0.0.1 with a host key of its own; every command "succeeds"."""

    def __init__(self, port: int = 0):
        self.key = paramiko.RSAKey.generate(2048)
        self.commands: list[str] = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.transports: list[paramiko.Transport] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            t = paramiko.Transport(conn)
            t.add_server_key(self.key)
            self.transports.append(t)
            try:
                t.start_server(server=self.session())
            except (paramiko.SSHException, EOFError):
                continue
            self.started(t)

    def session(self) -> paramiko.ServerInterface:
        return _Session(self.commands)

    def started(self, transport: paramiko.Transport) -> None:
        """A subclass's hook for a connection that has started (tests/test_cluster_nodes.py forwards channels)."""

    def stop(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept(): the port is free once this returns
        except OSError:
            pass
        self.sock.close()
        for t in self.transports:
            t.close()
        self.thread.join(10)


class _OneHead(NodeProvider):
    """The head at 127.0.0.1 on the server's port (as the RunPod provider sets its pods' SSH port)."""

    def __init__(self, port: int):
        super().__init__({}, "pin-test")
        self.port = port

    def external_ip(self, node_id):
        return "127.0.0.1"

    def internal_ip(self, node_id):
        return "127.0.0.1"

    def get_command_runner(self, *args, **kwargs):
        runner = super().get_command_runner(*args, **kwargs)
        runner.ssh_options.arg_dict["Port"] = self.port
        return runner


def client_side(tmp_path, monkeypatch) -> tuple[dict, str]:
    """A HOME of the test's own, a fresh client key, and the (bootstrapped) config and its path a Head carries."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    config_path = tmp_path / "cluster.yaml"
    config_path.write_text("cluster_name: pin-test\n")
    return ({"auth": {"ssh_user": "ubuntu", "ssh_private_key": str(key)}, "cluster_name": "pin-test",
             "provider": {}}, str(config_path))


@pytest.fixture
def head(tmp_path, monkeypatch):
    cfg, config_path = client_side(tmp_path, monkeypatch)
    server = SSHServer()
    yield Head(config_path, cfg, _OneHead(server.port), "head-1"), server
    server.stop()


def test_the_head_key_is_pinned_and_a_different_key_is_refused(head):
    h, server = head
    with pytest.raises(ClusterError, match="is not pinned.*s2v cluster trust"):
        h.runner()  # never connect to a head whose key nobody recorded
    assert server.commands == []

    fp = h.pin_host_key()
    pinned = hostkeys.known_hosts(h.config_path, h.node_id)
    assert "RSA" in fp and pinned.stat().st_mode & 0o777 == 0o600
    assert pinned.parent.stat().st_mode & 0o777 == 0o700
    recorded = pinned.read_bytes()
    opts = h.runner().ssh_options.arg_dict
    assert opts["StrictHostKeyChecking"] == "yes" and opts["UserKnownHostsFile"] == str(pinned)
    assert "ControlPath" not in opts  # no shared master at a predictable /tmp path
    h.runner().run("echo pinned", with_output=True, timeout=30)
    assert len(server.commands) == 2 and "echo pinned" in server.commands[1]  # the pin's `true`, then this

    port = server.port
    server.stop()
    impostor = SSHServer(port)  # same address, another key: a machine in the middle
    try:
        with pytest.raises(BaseException):  # Ray's runner raises click/process errors when ssh refuses
            h.runner().run("cat > ~/.s2v/secrets/x", with_output=True, timeout=30)
        assert impostor.commands == []  # ssh stopped at the key exchange: nothing was sent
        assert pinned.read_bytes() == recorded  # and it learned no new key
        h.pin_host_key()  # `s2v cluster trust`: the user says the new head is theirs
        h.runner().run("true", with_output=True, timeout=30)
        assert len(impostor.commands) == 2
    finally:
        impostor.stop()


def test_what_to_do_when_ssh_refuses_the_key():
    hint = hostkeys.changed_hint("@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@", "c.yaml")
    assert "s2v cluster trust c.yaml" in hint and "in the middle" in hint
    assert hostkeys.changed_hint("Connection refused", "c.yaml") == ""
