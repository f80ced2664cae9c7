"""Object-store keys for RunPod pods: RunPod has no instance roles, so the S3/R2/MinIO keys of the user who runs
`s2v cluster up` reach every pod as a 0600 file mount (~/.s2v/objstore.env), never as pod env, which RunPod shows
to anyone who can list the account's pods. infra/clusters/launch.py stages them for `up`."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any

from core.errors import ClusterError, ConfigError

MOUNT = "~/.s2v/objstore.env"  # on every node; node.env sources it (infra/clusters/node.py)
DEFAULT_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
OPTIONAL_ENV = ("AWS_SESSION_TOKEN",)  # sent when set (it expires: long-lived keys suit a nightly cluster better)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def s3_locations(cfg: dict[str, Any]) -> list[str]:
    """The s3:// places the nodes use: the work area, the weights, the buckets `init` listed."""
    meta = ((cfg.get("metadata") or {}).get("s2v") or {})
    places = [meta.get("work"), meta.get("model_dir")]
    places += [f"s3://{b}" for key in ("input_buckets", "output_buckets") for b in meta.get(key) or []
               if "://" not in str(b)]
    return [str(p) for p in places if p and str(p).startswith("s3://")]


def staged_path(cluster_name: str) -> Path:
    return Path(f"~/.s2v/runpod/{re.sub(r'[^A-Za-z0-9_.-]', '_', cluster_name)}.objstore.env").expanduser()


def stage(cfg: dict[str, Any], environ=None) -> Path | None:
    """On the user's machine: write the keys named by provider.object_store_env (default AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY) to a 0600 file and mount it on every node. None when no node uses s3://."""
    env = os.environ if environ is None else environ
    places = s3_locations(cfg)
    if not places:
        return None
    names = (cfg.get("provider") or {}).get("object_store_env") or list(DEFAULT_ENV)
    if not isinstance(names, list) or not all(isinstance(n, str) and _NAME.fullmatch(n) for n in names):
        raise ConfigError(f"provider.object_store_env must be a list of environment variable names, got {names!r}")
    missing = [n for n in names if not env.get(n)]
    if missing:
        raise ClusterError(f"RunPod pods have no instance role, and {', '.join(places)} needs object-store keys on "
                           f"every pod: set {', '.join(missing)} in the environment of `s2v cluster up` (for R2 or "
                           "MinIO, their keys, with metadata.s2v.s3_endpoint_url naming the endpoint)")
    values = {n: env[n] for n in names}
    values.update({n: env[n] for n in OPTIONAL_ENV if env.get(n) and n not in values})
    path = staged_path(str(cfg.get("cluster_name", "default")))
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("# object-store keys for s2v on this node, from `s2v cluster up`; sourced by ~/.s2v/node.env\n")
        f.writelines(f"export {k}={shlex.quote(v)}\n" for k, v in values.items())
    os.replace(tmp, path)
    # a mount on every node (the head's config keeps it, so its autoscaler copies it to each worker it sets up)
    cfg.setdefault("file_mounts", {})[MOUNT] = str(path)
    return path

