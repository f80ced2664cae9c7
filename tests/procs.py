"""Test helpers for processes we start: free loopback ports, and finding a process tree by an env marker."""

from __future__ import annotations

import socket
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
