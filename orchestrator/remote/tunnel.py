"""The head node through Ray's launcher: its command runner (the config's SSH key and user) and an SSH tunnel to
its Jobs API, which s2v opens, waits for and closes itself — the Jobs API is never exposed on a public port."""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from core.errors import ClusterError, ConfigError

DEFAULT_DASHBOARD_PORT = 8265
READY_TIMEOUT_S = 90.0  # first SSH connection to a fresh head, plus the dashboard answering


def dashboard_port(cfg: dict) -> int:
    """The head's Jobs API port (`metadata.s2v.dashboard_port`, validated with the rest of the config)."""
    from infra.clusters.config import s2v_meta

    return int(s2v_meta(cfg).get("dashboard_port") or DEFAULT_DASHBOARD_PORT)


@dataclass
class Head:
    """The running head node of a cluster, as the launcher sees it."""

    config_path: str
    config: dict  # bootstrapped (auth filled in by the provider, as `ray up` left it)
    provider: object
    node_id: str

    def runner(self, process_runner=subprocess, pinned: bool = True):
        """Ray's command runner for the head (SSH with the config's auth, or the provider's own), connecting only
        to the host key pinned for this head (infra/clusters/hostkeys.py); pinned=False for pinning it."""
        from infra.clusters import hostkeys

        cfg = self.config
        runner = self.provider.get_command_runner(
            "s2v: ", self.node_id, cfg["auth"], cfg["cluster_name"], process_runner,
            bool(cfg["provider"].get("use_internal_ips", False)), docker_config=cfg.get("docker"))
        return hostkeys.checked(runner, self.config_path, self.node_id) if pinned else runner

    def pin_host_key(self, replace: bool = True) -> str | None:
        """Record the host key the head shows now; its fingerprint (None: the runner is not SSH). replace=False
        keeps one pinned before."""
        from infra.clusters import hostkeys

        return hostkeys.pin(self.runner(pinned=False), self.config_path, self.node_id, replace)


@contextlib.contextmanager
def quiet_launcher() -> Iterator[None]:
    """Ray's launcher logs its config preparation at INFO/WARNING ("Dropping the empty legacy field …") on every
    call; s2v reports what went wrong itself."""
    log = logging.getLogger("ray.autoscaler")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def find_head(config_path: str | Path) -> Head:
    """Load and bootstrap a cluster config the way `ray exec` does, and find its running head node. The config is
    the one every `s2v cluster` command hands the launcher (validated, with the code bundle mount and the zone
    `up` chose), so the tunnel finds the head `up` made."""
    from infra.clusters.launch import launch_config
    from infra.clusters.private_tmp import launcher_tmp

    path = Path(config_path)
    if not path.is_file():
        raise ConfigError(f"no cluster config at {path}; create one with `s2v cluster init`")
    raw = launch_config(path)
    try:
        with quiet_launcher(), launcher_tmp():
            return _find_head(path, raw)
    except (Exception, SystemExit) as e:  # noqa: BLE001 — "Head node … not found" is a RuntimeError
        raise ClusterError(f"no running cluster for {path} ({e}); start it with `s2v cluster up {path}`") from e


def _find_head(path: Path, raw: dict) -> Head:
    from ray.autoscaler._private.commands import _bootstrap_config, _get_running_head_node
    from ray.autoscaler._private.providers import _get_node_provider

    cfg = _bootstrap_config(copy.deepcopy(raw), no_config_cache=True)  # never a cache another user could plant
    provider = _get_node_provider(cfg["provider"], cfg["cluster_name"])
    node = _get_running_head_node(cfg, str(path), None, create_if_needed=False, _provider=provider)
    return Head(str(path), cfg, provider, node)


class BackgroundRunner:
    """A `process_runner` for Ray's command runners that starts the command and returns at once, keeping the
    process: Ray's own runner would block on `ssh -L` until it exits, and nobody could close it."""

    DEVNULL = subprocess.DEVNULL
    PIPE = subprocess.PIPE
    STDOUT = subprocess.STDOUT
    CalledProcessError = subprocess.CalledProcessError

    def __init__(self) -> None:
        self.log = tempfile.TemporaryFile()
        self.proc: subprocess.Popen | None = None

    def check_call(self, cmd, **_ignored) -> int:
        # Its own session: a Ctrl-C in the terminal reaches s2v (which may still stop the run through the
        # tunnel), not ssh.
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return 0

    def check_output(self, cmd, **kw):
        return subprocess.check_output(cmd, **kw)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-2000:].strip()

    def close(self) -> None:
        p = self.proc
        if p is not None and p.poll() is None:
            for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, sig)
                try:
                    p.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self.log.close()


class _Foreground:
    """A `process_runner` for a command the user watches: output to the terminal, the exit code kept (Ray's SSH
    runner turns a failure into an error without it)."""

    DEVNULL = subprocess.DEVNULL
    PIPE = subprocess.PIPE
    STDOUT = subprocess.STDOUT
    CalledProcessError = subprocess.CalledProcessError

    def __init__(self) -> None:
        self.code = 0

    def check_call(self, cmd, **kw) -> int:
        self.code = subprocess.call(cmd, **kw)
        if self.code:
            raise subprocess.CalledProcessError(self.code, cmd)
        return 0

    def check_output(self, cmd, **kw):
        return subprocess.check_output(cmd, **kw)


def head_exec(head: Head, cmd: str, with_output: bool = False, port_forward=None):
    """Run a shell command on the head through its pinned runner: its output (with_output) or its exit code."""
    from ray.autoscaler._private.subprocess_output_util import ProcessRunnerError

    fg = _Foreground()
    try:
        with quiet_launcher():
            out = head.runner(fg).run(cmd, with_output=with_output, exit_on_fail=False, run_env="auto",
                                      port_forward=port_forward)
    except ProcessRunnerError as e:
        if with_output:
            raise
        return int(e.code or 1)
    except (Exception, SystemExit):  # noqa: BLE001 — a failed command comes as a click error without its code
        if fg.code and not with_output:
            return fg.code
        raise
    return out if with_output else 0


def _own_connection(runner):
    """The SSH runner under a Docker one: the tunnel is its own ssh process (a pinned runner shares no
    connection, infra/clusters/hostkeys.py), so ending it ends the forward."""
    return getattr(runner, "ssh_command_runner", runner)


def free_local_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/version", timeout=3) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


class _PortTaken(Exception):
    pass


def _listening_inodes(port: int) -> set[str] | None:
    """Socket inodes listening on TCP `port` (any local address: 127.0.0.1, 0.0.0.0, ::); None where this system
    has no /proc/net (not Linux): then nothing can be proven about who holds the port."""
    found, readable = set(), False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                rows = fh.read().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for row in rows:
            f = row.split()
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                found.add(f[9])
    return found if readable else None


def _socket_inodes(pid: int) -> set[str]:
    """The sockets a process (and its children) holds open; ours are readable, nobody else's are."""
    out, pids = set(), [pid]
    while pids:
        p = pids.pop()
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{p}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{p}/fd/{fd}")
                    if link.startswith("socket:["):
                        out.add(link[8:-1])
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    pids += [int(c) for c in fh.read().split()]
    return out


def _lsof_holder(port: int, pid: int) -> str | None:
    """holder_of where there is no /proc (macOS): lsof names the processes listening on the port."""
    import shutil

    if not shutil.which("lsof"):
        return "unknown"
    r = subprocess.run(["lsof", "-nP", f"-iTCP:{port}", "-sTCP:LISTEN", "-t"], capture_output=True, text=True,
                       timeout=10)
    pids = {int(p) for p in r.stdout.split() if p.isdigit()}
    if not pids:
        return None
    return "ours" if pids == {pid} else "other"


def holder_of(port: int, pid: int) -> str | None:
    """'ours' when every listener on the port is the tunnel process's, 'other' when anything else listens there,
    None when nobody listens yet, 'unknown' where the system cannot tell (no /proc, no lsof)."""
    inodes = _listening_inodes(port)
    if inodes is None:
        return _lsof_holder(port, pid)
    if not inodes:
        return None
    return "ours" if inodes <= _socket_inodes(pid) else "other"


def _wait_ready(url: str, bg: BackgroundRunner, head: Head, remote: int, timeout_s: float) -> None:
    """The tunnel is ready once ssh holds the local port (checked before a byte is sent: a program already
    listening there would receive the Jobs API calls, entrypoint and env included) and the Jobs API answers."""
    deadline = time.monotonic() + timeout_s
    port = int(url.rsplit(":", 1)[1])
    while True:
        alive = bg.proc is None or bg.proc.poll() is None
        held = holder_of(port, bg.proc.pid) if bg.proc is not None and alive else None
        if held == "other":
            raise _PortTaken(f"another program listens on 127.0.0.1:{port}")
        if held == "unknown":
            raise ClusterError(f"cannot tell which program listens on 127.0.0.1:{port} (this system has neither "
                               "/proc nor lsof), so nothing is sent through the tunnel: install lsof")
        if alive and held == "ours" and _answers(url):
            return
        if bg.proc is not None and bg.proc.poll() is not None:
            out = bg.output()
            if "already in use" in out or "cannot listen" in out.lower() or "bind" in out.lower():
                raise _PortTaken(out)
            from infra.clusters.hostkeys import changed_hint

            raise ClusterError(f"the SSH tunnel to the head of {head.config_path} closed (exit {bg.proc.returncode})"
                               f": {out or 'no output'}; " + (changed_hint(out, head.config_path) or
                               f"check `s2v cluster status {head.config_path}` and the config's auth (ssh_user, "
                               "ssh_private_key)"))
        if time.monotonic() > deadline:
            raise ClusterError(f"the Jobs API on the head of {head.config_path} (port {remote}) did not answer "
                               f"through the SSH tunnel within {timeout_s:.0f}s; check `s2v cluster status "
                               f"{head.config_path}` and metadata.s2v.dashboard_port")
        time.sleep(0.3)


@contextlib.contextmanager
def jobs_tunnel(head: Head, local_port: int | None = None, timeout_s: float = READY_TIMEOUT_S) -> Iterator[str]:
    """Forward 127.0.0.1:LOCAL to the head's dashboard port (`ssh -L` via Ray's command runner) for the
    duration of the block; yields http://127.0.0.1:LOCAL once the Jobs API answers through it."""
    remote = dashboard_port(head.config)
    for attempt in range(3):
        port = local_port or free_local_port()
        bg = BackgroundRunner()
        try:
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # the launcher's "Fetched IP", "Forwarding ports"
                    _own_connection(head.runner(bg)).run(None, port_forward=[(port, remote)], timeout=30)
            except (Exception, SystemExit) as e:  # noqa: BLE001 — the runner raises click/process errors
                raise ClusterError(f"cannot open an SSH tunnel to the head of {head.config_path}: {e}") from e
            url = f"http://127.0.0.1:{port}"
            try:
                _wait_ready(url, bg, head, remote, timeout_s)
            except _PortTaken as e:
                if local_port or attempt == 2:
                    raise ClusterError(f"local port {port} is taken ({e}); nothing was sent to it: pick another "
                                       "with --port") from None
                continue  # another program took the free port we picked: pick again
            yield url
            return
        finally:
            bg.close()
