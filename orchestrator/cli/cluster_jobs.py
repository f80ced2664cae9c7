"""`s2v cluster dashboard|exec|jobs|logs|stop`: a cluster's runs and nodes, reached through the launcher's SSH (the
Jobs API only ever through a tunnel s2v opens; workers through the head). Merged into the `s2v cluster` group."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import List, Optional

import typer

from core.errors import ClusterError
from orchestrator.cli.common import CONFIG_ARG, ask, checked, errors_to_exit

app = typer.Typer()
RUN_ARG = typer.Argument(..., help="Run id (or Ray job id) printed by `s2v render --cluster`.")
CONFIG_OPT = typer.Option(None, "--config", "-c", help="Cluster config (default: the one the run was submitted to).")


@app.command()
@errors_to_exit
def dashboard(config: Path = CONFIG_ARG,
              port: Optional[int] = typer.Option(None, help="Local port (default: 8265 if free, else any)."),
              ) -> None:
    """Open the Ray dashboard through an SSH tunnel; prints the local URL and keeps it open until Ctrl-C."""
    from orchestrator.remote import tunnel

    checked(config)
    head = tunnel.find_head(config)
    if port is None:
        port = tunnel.DEFAULT_DASHBOARD_PORT if _free(tunnel.DEFAULT_DASHBOARD_PORT) else None
    done = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: done.set())  # `kill` closes it as cleanly as Ctrl-C
    try:
        with tunnel.jobs_tunnel(head, local_port=port) as url:
            typer.echo(f"dashboard: {url}  (through SSH to the head of {config}; Ctrl-C closes it)")
            typer.echo("while it is open, anyone logged in on this machine can reach the head's Jobs API through it, "
                       "and that API runs commands without authentication: close it when you are done", err=True)
            try:
                while not done.wait(1.0):
                    pass
            except KeyboardInterrupt:
                pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    typer.echo("tunnel closed")


def _free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@app.command("exec")
@errors_to_exit
def exec_(cmd: List[str] = typer.Argument(..., help="Command to run on the head (quote it, or put it after --)."),
          config: Path = typer.Option(Path("cluster.yaml"), "--config", "-c", help="Cluster config."),
          node: Optional[str] = typer.Option(None, "--node", help="Run on this worker instead (its IP or node id, "
                                             "from `s2v cluster status`), reached through the head."),
          ) -> None:
    """Run a shell command on the head node (or --node: a worker, through the head) over the launcher's SSH, host
    keys checked; exits with its exit code."""
    import shlex

    checked(config)
    from orchestrator.remote.tunnel import find_head, head_exec

    line = cmd[0] if len(cmd) == 1 else shlex.join(cmd)
    head = find_head(config)
    if node:
        raise typer.Exit(_worker_exec(head, _node_name(node), line))
    try:
        code = head_exec(head, line)
    except ClusterError:
        raise
    except (Exception, SystemExit) as e:  # noqa: BLE001 — ssh failure (click errors carry no code)
        raise ClusterError(f"exec on the head of {config} failed: {e}") from e
    if code:
        raise typer.Exit(code)


def _node_name(value: str) -> str:
    """A node id or IP as the user typed it: it reaches a shell command on the head, so only these characters."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", value):
        raise typer.BadParameter(f"{value!r} is not a node id or IP (letters, digits, . _ : -)", param_hint="NODE")
    return value


def _worker_exec(head, node: str, line: str | None) -> int:
    import subprocess

    from orchestrator.remote.workers import find_node, worker_hop

    node_id, ip = find_node(head, node)
    argv, first = worker_hop(head, node_id, ip, line, tty=line is None)
    if first:
        typer.echo(f"pinning the SSH host key of worker {node_id} ({ip}) on this first connection, made through the "
                   "head (whose key is pinned); later connections require it", err=True)
    code = subprocess.call(argv)
    if code == 255:
        from infra.clusters.hostkeys import changed_hint

        typer.echo(f"ssh to worker {node_id} through the head failed (exit 255): if it says the host key changed, "
                   f"the worker was replaced at the same address — {changed_hint('Host key verification failed', head.config_path)}",
                   err=True)
    return code


@app.command()
@errors_to_exit
def jobs(config: Path = CONFIG_ARG) -> None:
    """List the runs (Ray jobs) on the cluster, oldest first."""
    import time

    from orchestrator.remote import submit

    checked(config)
    rows = submit.list_jobs(str(config))
    if not rows:
        typer.echo("no runs on this cluster")
    for r in rows:
        start = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["start"])) if r["start"] else "-"
        typer.echo(f"{r['job']:<36} {r['status']:<10} {start:<16} {r['manifest']}")


@app.command()
@errors_to_exit
def logs(run: Optional[str] = typer.Argument(None, help="Run id (or Ray job id) printed by `s2v render --cluster`; "
                                             "none with --setup or --autoscaler."),
         config: Optional[Path] = CONFIG_OPT,
         follow: bool = typer.Option(False, "--follow", "-f", help="Stream until the run ends (with --autoscaler: "
                                     "until Ctrl-C)."),
         setup: Optional[str] = typer.Option(None, "--setup", metavar="NODE", help="A worker's setup output (its IP "
                                             "or node id; a node id also after the node is gone), from the autoscaler's "
                                             "log on the head."),
         autoscaler: bool = typer.Option(False, "--autoscaler", help="The autoscaler's logs on the head (monitor.*)."),
         lines: int = typer.Option(200, "--lines", "-n", min=1, help="How many lines (--setup, --autoscaler)."),
         ) -> None:
    """Print a run's driver log (or follow it; Ctrl-C asks whether to stop the run), or a node's setup output
    (--setup NODE) or the autoscaler's logs (--autoscaler)."""
    from orchestrator.remote import submit

    if setup or autoscaler:
        if run or (setup and autoscaler):
            raise typer.BadParameter("give one of RUN, --setup NODE, --autoscaler", param_hint="RUN")
        code = _node_logs(config or Path("cluster.yaml"), setup and _node_name(setup), follow, lines)
        if code:
            raise typer.Exit(code)
        return
    if not run:
        raise typer.BadParameter("name a run (`s2v cluster jobs` lists them), or pass --setup NODE or --autoscaler",
                                 param_hint="RUN")
    if config:
        checked(config)
    code = submit.logs(run, str(config) if config else None, follow_=follow, echo=typer.echo, confirm=ask)
    if code:
        raise typer.Exit(code)


def _node_logs(config: Path, setup: str | None, follow: bool, lines: int) -> int:
    from orchestrator.remote import workers
    from orchestrator.remote.tunnel import find_head, head_exec

    checked(config)
    head = find_head(config)
    logs_dir = workers.logs_dir(head.config)
    if setup is None:
        return head_exec(head, workers.autoscaler_log_command(logs_dir, lines, follow))
    if setup in ("head", head.node_id):
        raise ClusterError(f"the head's setup ran from this machine during `s2v cluster up {config}` and was printed "
                           f"there; Ray keeps no copy on the head. The autoscaler's own logs: `s2v cluster logs "
                           f"--autoscaler -c {config}`")
    try:
        node_id, _ = workers.find_node(head, setup)
    except ClusterError:
        if setup.replace(".", "").isdigit():
            raise  # an IP of no running worker: nothing says which node it was
        node_id = setup  # a node that is gone (a failed setup is terminated): its id is still in the log
    return head_exec(head, workers.setup_log_command(logs_dir, node_id, lines))


@app.command()
@errors_to_exit
def stop(run: str = RUN_ARG, config: Optional[Path] = CONFIG_OPT) -> None:
    """Stop a run on the cluster (its checkpoints stay: submitting the manifest again resumes it)."""
    from orchestrator.remote import submit

    if config:
        checked(config)
    status = submit.stop(run, str(config) if config else None, echo=typer.echo)
    if status != "STOPPED" and status != "SUCCEEDED" and status != "FAILED":
        typer.echo(f"the run did not stop in time (status {status})", err=True)
        raise typer.Exit(1)
