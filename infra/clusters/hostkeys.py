"""The head's SSH host key, pinned when `s2v cluster up` makes the head and checked on every later connection
(the Jobs API tunnel, secret delivery): Ray's SSH runner accepts any key and records none
(`StrictHostKeyChecking=no`, `UserKnownHostsFile=/dev/null`), so a man in the middle would receive the webhook
secret and URL token. The key is recorded in a known-hosts file per cluster config and head node, under
~/.s2v/clusters (0700), and ssh itself checks it."""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

from core.errors import ClusterError

CLUSTERS = "~/.s2v/clusters"


def known_hosts(config_path: str, node_id: str) -> Path:
    """The file that holds the host key of this cluster's head node (a new head is a new file)."""
    from infra.clusters.private_tmp import _private

    root = Path(CLUSTERS).expanduser()
    _private(root.parent)
    _private(root)
    folder = _folder(config_path)
    _private(folder)
    return folder / (re.sub(r"[^A-Za-z0-9._-]+", "_", str(node_id))[:100] + ".known_hosts")


def _folder(config_path: str) -> Path:
    return Path(CLUSTERS).expanduser() / hashlib.sha256(str(Path(config_path).resolve()).encode()).hexdigest()[:16]


def pinned(config_path: str) -> list[Path]:
    """The host keys pinned for this config's nodes so far, without creating anything (for `s2v cluster check`)."""
    folder = _folder(config_path)
    return sorted(p for p in folder.glob("*.known_hosts") if p.stat().st_size) if folder.is_dir() else []


def _ssh_options(runner):
    """The SSH options of Ray's runner (under a Docker runner too); None for a runner that is not SSH."""
    ssh = getattr(runner, "ssh_command_runner", runner)
    opts = getattr(ssh, "ssh_options", None)
    return opts if isinstance(getattr(opts, "arg_dict", None), dict) else None


def _own_connections(opts) -> None:
    """No connection sharing: Ray puts the master's socket at a predictable /tmp/ray_ssh_… path another local user
    could prepare, and a forward added to a shared master outlives its client (the tunnel must end with it)."""
    opts.arg_dict.pop("ControlPath", None)
    opts.arg_dict.pop("ControlPersist", None)
    opts.arg_dict["ControlMaster"] = "no"


def checked(runner, config_path: str, node_id: str):
    """The runner, set to connect only to the host key pinned for this head (ssh refuses any other)."""
    opts = _ssh_options(runner)
    if opts is None:
        return runner
    path = known_hosts(config_path, node_id)
    if not path.is_file() or not path.stat().st_size:
        raise ClusterError(f"the SSH host key of the head of {config_path} (node {node_id}) is not pinned, so s2v "
                           f"cannot tell the head from a machine in the middle: run `s2v cluster trust "
                           f"{config_path}` to pin the key the head shows now (`s2v cluster up` pins it when it "
                           "makes the head)")
    opts.arg_dict.update(StrictHostKeyChecking="yes", UserKnownHostsFile=str(path), UpdateHostKeys="no")
    _own_connections(opts)
    return runner


def pin(runner, config_path: str, node_id: str, replace: bool = True) -> str | None:
    """Record the host key the head shows now (trust on first use, right after the head was made); returns its
    fingerprint, or None for a runner that is not SSH. replace=False keeps a key pinned before (`up` over a
    running head must not re-trust whatever answers)."""
    opts = _ssh_options(runner)
    if opts is None:
        return None
    path = known_hosts(config_path, node_id)
    if not replace and path.is_file() and path.stat().st_size:
        return fingerprint(path)
    path.unlink(missing_ok=True)
    opts.arg_dict.update(StrictHostKeyChecking="accept-new", UserKnownHostsFile=str(path), UpdateHostKeys="no")
    _own_connections(opts)
    try:
        runner.run("true", with_output=True, timeout=60)
    except (Exception, SystemExit) as e:  # noqa: BLE001 — the runner raises click/process errors
        raise ClusterError(f"cannot reach the head of {config_path} over SSH to pin its host key: {e}") from e
    if not path.is_file() or not path.stat().st_size:
        raise ClusterError(f"ssh recorded no host key for the head of {config_path} in {path}")
    path.chmod(0o600)
    return fingerprint(path)


def fingerprint(path: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-l", "-f", str(path)], capture_output=True, text=True)
    return out.stdout.strip() or f"(recorded in {path})"


def changed_hint(error: str, config_path: str) -> str:
    """What to do when ssh refused the head's key."""
    if "IDENTIFICATION HAS CHANGED" in error or "Host key verification failed" in error:
        return (f"the head's SSH host key is not the one pinned for {config_path}: if you recreated the head "
                f"outside s2v, run `s2v cluster trust {config_path}`; otherwise something is in the middle")
    return ""
