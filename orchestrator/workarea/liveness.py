"""Is the process that wrote a record (a lease, a run's state) still alive? One answer for every holder: a record
names its host, boot, PID namespace, pid and the pid's start time, and only this very machine — in that very PID
namespace — can tell (containers with host networking share a host name and a boot, not their pids)."""

from __future__ import annotations

import os
import socket


def _read(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return ""


def boot_id() -> str:
    return _read("/proc/sys/kernel/random/boot_id")


def pid_namespace() -> str:
    """The PID namespace's id, e.g. 'pid:[4026531836]' ('' where /proc cannot say)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def pid_start(pid: int) -> str:
    """The process's start time in clock ticks since boot ('' when it does not exist): tells a reused pid apart."""
    stat = _read(f"/proc/{int(pid)}/stat")
    return stat.rpartition(")")[2].split()[19] if stat else ""


def this_process() -> dict:
    """What a record stores so that `alive` can judge it later."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "pid_start": pid_start(pid), "boot_id": boot_id(),
            "pid_ns": pid_namespace()}


def alive(doc: dict) -> bool | None:
    """True or False when the record's process ran on this machine since its last boot, in this PID namespace;
    None when this machine cannot tell (another host, boot or namespace, no pid, a record that does not say its
    namespace), and the caller falls back on time (an expiry, the age of the last write). A pid the kernel
    reused for another process is gone, not alive."""
    if not isinstance(doc, dict) or doc.get("host") != socket.gethostname() or not doc.get("pid"):
        return None
    if doc.get("boot_id") and doc.get("boot_id") != boot_id():
        return None
    if doc.get("pid_ns") != pid_namespace():  # '' on both sides where /proc cannot say (one namespace there)
        return None
    pid = int(doc["pid"])
    if doc.get("pid_start"):
        return pid_start(pid) == doc["pid_start"]
    try:  # a record from before start times were stored: the pid alone
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process: alive
        return True
    return True
