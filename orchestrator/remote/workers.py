"""The cluster's other nodes, seen from the head: which node a name means, the autoscaler's logs and a worker's
setup output there (Ray's monitor writes both to its logs on the head), and SSH to a worker through the head with
pinned host keys — the commands and argv built here as pure functions, run by the CLI."""

from __future__ import annotations

import shlex
from pathlib import Path

from core.errors import ClusterError

DEFAULT_TEMP = "/tmp/ray"
# Ray's autoscaler (the monitor process on the head) logs to monitor.log, and runs every worker's setup and start
# commands with their output on its stdout and stderr: monitor.out / monitor.err (and their rotations .1, .2 …).
MONITOR_GLOB = "monitor*"
UPDATER_TAG = "NodeUpdater: {node}: "  # Ray's updater prefixes its own lines for a node with this


def logs_dir(cfg: dict) -> str:
    """Where Ray writes the head's logs: <--temp-dir of the head's `ray start`, default /tmp/ray>/session_latest/logs."""
    from infra.clusters.config import _flag_values

    temp = DEFAULT_TEMP
    for cmd in cfg.get("head_start_ray_commands") or []:
        values = _flag_values(str(cmd), "--temp-dir")
        temp = values[-1] if values else temp
    return f"{temp.rstrip('/')}/session_latest/logs"


def autoscaler_log_command(logs: str, lines: int, follow: bool) -> str:
    """What `ray monitor` runs on the head, with a clear message where there are no logs yet."""
    return (f"cd {shlex.quote(logs)} 2>/dev/null && ls {MONITOR_GLOB} >/dev/null 2>&1 || "
            f"{{ echo {shlex.quote(f'no autoscaler logs under {logs} on the head (is Ray running there?)')} >&2; "
            "exit 3; }; "
            f"tail -n {int(lines)} {'-f ' if follow else ''}{MONITOR_GLOB}")


def setup_log_command(logs: str, node_id: str, lines: int) -> str:
    """monitor.out from the first to the last line the updater of node_id wrote (its setup and start commands'
    output in between), other nodes' updater lines left out, then the end of monitor.err (stderr, not split by
    node). Output of two nodes set up at the same time is interleaved in Ray's file, and stays so here."""
    tag = shlex.quote(UPDATER_TAG.format(node=node_id))
    q = shlex.quote(logs)
    return (f"cd {q} 2>/dev/null || {{ echo {shlex.quote(f'no Ray logs under {logs} on the head')} >&2; exit 3; }}; "
            "files=$(ls -1tr monitor.out* 2>/dev/null); "
            "[ -n \"$files\" ] || { echo 'no monitor.out on the head: no autoscaler has run there' >&2; exit 3; }; "
            f"set -- $(cat $files | awk -v id={tag} 'index($0, id) {{ if (!a) a = NR; b = NR }} "
            "END { print a + 0, b + 0 }'); "
            f"[ \"$1\" -gt 0 ] || {{ echo {shlex.quote(f'the autoscaler logged no setup for node {node_id}')}"
            "\"; nodes it logged: $(cat $files | grep -o 'NodeUpdater: [^:]*' | cut -c14- | sort -u | tr '\\n' ' ')\" "
            ">&2; exit 4; }; "
            f"echo {shlex.quote(f'== monitor.out: the setup of node {node_id} ==')}; "
            f"cat $files | awk -v a=\"$1\" -v b=\"$2\" -v id={tag} "
            "'NR >= a && NR <= b && (index($0, \"NodeUpdater: \") == 0 || index($0, id))' "
            f"| tail -n {int(lines)}; "
            f"echo '== monitor.err (every node, last {int(lines)} lines) =='; "
            f"tail -n {int(lines)} monitor.err 2>/dev/null || true")


def find_node(head, name: str) -> tuple[str, str]:
    """(node id, the address the head reaches it at: its internal one) for a worker named by its id or an IP."""
    provider = head.provider
    known = []
    for nid in provider.non_terminated_nodes({}):
        if nid == head.node_id:
            continue
        ips = {provider.internal_ip(nid), provider.external_ip(nid)} - {None}
        known.append(f"{nid} ({', '.join(sorted(ips))})")
        if name == nid or name in ips:
            return nid, provider.internal_ip(nid) or provider.external_ip(nid)
    raise ClusterError(f"no worker {name!r} in the cluster of {head.config_path}; workers now: "
                       f"{', '.join(known) or 'none'} (`s2v cluster status {head.config_path}`)")


# Options of the head's connection that must not carry over to the worker's: its port (NAT-mapped on RunPod),
# its host-key file, and connection sharing (the worker hop is its own connection).
_HEAD_ONLY = ("Port", "StrictHostKeyChecking", "UserKnownHostsFile", "UpdateHostKeys", "ControlMaster",
              "ControlPath", "ControlPersist", "ConnectTimeout")


def worker_ssh_argv(head_options: list[str], head_target: str, key: str | None, options: dict, user: str,
                    worker_ip: str, known_hosts: Path, first: bool, command: str | None = None,
                    tty: bool = False) -> list[str]:
    """ssh to a worker with the head as its ProxyCommand (`ssh … -W %h:%p head`), as Ray's launcher reaches
    workers: from inside the cluster's network, with the same key. Both hops check host keys: the head's pinned
    file, and the worker's own file, which the first connection fills (accept-new, through the head already
    checked) and every later one requires (StrictHostKeyChecking=yes)."""
    proxy = shlex.join(["ssh", *head_options, "-W", "%h:%p", head_target])
    own = {k: v for k, v in options.items() if k not in _HEAD_ONLY and v is not None}
    own.update(StrictHostKeyChecking="accept-new" if first else "yes", UserKnownHostsFile=str(known_hosts),
               UpdateHostKeys="no", ControlMaster="no", ConnectTimeout="30s", ProxyCommand=proxy)
    argv = ["ssh", *(["-tt"] if tty else []), *(["-i", key] if key else [])]
    argv += [x for k, v in own.items() for x in ("-o", f"{k}={v}")]
    return argv + [f"{user}@{worker_ip}"] + ([command] if command else [])


def worker_hop(head, node_id: str, worker_ip: str, command: str | None, tty: bool = False) -> tuple[list[str], bool]:
    """The argv for `command` on a worker (a shell when None), and whether it pins the worker's key now."""
    from infra.clusters import hostkeys

    runner = head.runner()  # the head's own options: its pinned key, StrictHostKeyChecking=yes
    ssh = getattr(runner, "ssh_command_runner", runner)
    head_options = ssh.ssh_options.to_ssh_options_list(timeout=30)
    user = head.config["auth"]["ssh_user"]
    known = hostkeys.known_hosts(head.config_path, node_id)
    first = not (known.is_file() and known.stat().st_size)
    argv = worker_ssh_argv(head_options, f"{user}@{ssh._get_node_ip()}", ssh.ssh_options.ssh_key,
                           dict(ssh.ssh_options.arg_dict), user, worker_ip, known, first, command, tty)
    return argv, first
