"""Run on a RunPod pod before `ray start`: its global-network IP and node labels (`python -m infra.clusters.runpod.node env`)."""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
from typing import Callable

LABELS_ENV = "S2V_RAY_LABELS"  # same name as infra.clusters.runpod.api.LABELS_ENV; kept stdlib-only so it runs anywhere
OVERRIDE_ENV = "RAY_OVERRIDE_LABELS"  # what Ray's launcher exports before each start command (node-type labels)


def pod_env(path: str = "/proc/1/environ") -> dict[str, str]:
    """The container's own environment (PID 1's): what RunPod set at create, which SSH sessions do not inherit."""
    try:
        raw = open(path, "rb").read().decode(errors="replace")
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def merged_labels(env: dict[str, str], launcher_labels: str | None) -> dict[str, str]:
    """The launcher's node-type labels, overridden by the labels the provider set at create (what really launched)."""
    labels = json.loads(launcher_labels) if launcher_labels else {}
    labels.update(json.loads(env.get(LABELS_ENV) or "{}"))
    return {str(k): str(v) for k, v in labels.items()}


def node_ip(env: dict[str, str], resolve: Callable[[str], str] | None = None) -> str:
    """The pod's address on RunPod's global network: what Ray nodes must advertise to reach each other."""
    pod_id = env.get("RUNPOD_POD_ID") or os.environ.get("RUNPOD_POD_ID")
    if not pod_id:
        raise SystemExit("runpod_node: RUNPOD_POD_ID is not set — not a RunPod pod?")
    host = f"{pod_id}.runpod.internal"
    try:
        return (resolve or socket.gethostbyname)(host)
    except OSError as e:
        raise SystemExit(f"runpod_node: cannot resolve {host} ({e}) — was the pod created with global networking "
                         "(an NVIDIA GPU pod in Secure Cloud, in a data center that offers it)?") from e


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else "env"
    env = pod_env(argv[1] if len(argv) > 1 else "/proc/1/environ")
    labels = merged_labels(env, os.environ.get(OVERRIDE_ENV))
    if cmd == "labels":
        print(json.dumps(labels))
    elif cmd == "ip":
        print(node_ip(env))
    elif cmd == "env":
        # One line for `E=$(python -m infra.clusters.runpod.node env) && eval "$E" && ray start --node-ip-address=$S2V_NODE_IP`
        print(f"export S2V_NODE_IP={shlex.quote(node_ip(env))} {OVERRIDE_ENV}={shlex.quote(json.dumps(labels))}")
    else:
        print("usage: python -m infra.clusters.runpod.node [env|ip|labels] [ENVIRON_FILE]", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
