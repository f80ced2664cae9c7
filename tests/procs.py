"""Test helpers for processes we start: free loopback ports, and finding a process tree by an env marker."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

MARKER = "S2V_TEST_HEAD"


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held together so they differ, then released)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def marked_pids(tag: str, marker: str = MARKER) -> list[int]:
    """Pids whose environment holds marker=tag: the processes of one test's Ray head, and nothing else's
    (`ray stop` would kill every Ray on the machine)."""
    needle = f"{marker}={tag}\0".encode()
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if needle in (d / "environ").read_bytes():
                    out.append(int(d.name))
            except OSError:
                pass
    return out


@contextlib.contextmanager
def ray_head(num_cpus: int, num_gpus: int = 0, temp_dir: Path | None = None):
    """`ray start --head` on 127.0.0.1 with free ports (dashboard = the Jobs API); yields the dashboard URL and
    stops exactly this head's processes (found by an env marker) afterwards."""
    tag = uuid.uuid4().hex[:8]
    gcs, dash, client, agent = free_ports(4)
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0",
               RAY_AUTH_MODE="disabled", **{MARKER: tag})
    env.pop("RAY_ADDRESS", None)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # the job's `python` is this venv's
    argv = ["ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}", f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
            f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}", "--disable-usage-stats"]
    if temp_dir is not None:
        argv.append(f"--temp-dir={temp_dir}")
    proc = subprocess.run(argv, env=env, capture_output=True, timeout=180)
    try:
        assert proc.returncode == 0, proc.stderr.decode()[-3000:]
        yield f"http://127.0.0.1:{dash}"
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in marked_pids(tag):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            end = time.time() + 5
            while marked_pids(tag) and time.time() < end:
                time.sleep(0.1)
        assert not marked_pids(tag)
