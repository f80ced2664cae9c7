"""`ray start` for a loopback worker node: `python -m loopback_ray start --address=127.0.0.1:PORT …`.

Ray's CLI cannot add a second node on 127.0.0.1 (DESIGN.md, "Multi-node on one machine"): with
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 — which every loopback node runs with, so that each of its processes takes
127.0.0.1 as its own address and binds nothing else — `ray start --address` refuses to join a cluster, and with
it unset Ray rewrites a loopback `--address` and `--node-ip-address` to this machine's external address. This
wrapper tells the `ray start` process alone that it may join and that 127.0.0.1 means 127.0.0.1; everything
else is Ray's own `ray start` (resources and labels from the launcher's RAY_OVERRIDE_* variables included).
`ray.cluster_utils.Cluster` does the same in-process; a launcher-driven node needs it as a command.

It also picks a free dashboard-agent port: the default (52365) is one per machine, and several nodes share it.
"""

from __future__ import annotations

import socket
import sys


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str]) -> int:
    import ray._private.ray_constants as ray_constants
    import ray._private.services as services
    import ray.scripts.scripts as scripts

    ray_constants.ENABLE_RAY_CLUSTER = True
    services.resolve_ip_for_localhost = lambda host: host
    services.canonicalize_bootstrap_address = lambda addr, temp_dir=None: addr
    services.canonicalize_bootstrap_address_or_die = lambda addr, temp_dir=None: addr
    if argv[:1] == ["start"] and not any(a.startswith("--dashboard-agent-listen-port") for a in argv):
        argv = [*argv, f"--dashboard-agent-listen-port={_free_port()}"]
    sys.argv = ["ray", *argv]
    return scripts.main()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
