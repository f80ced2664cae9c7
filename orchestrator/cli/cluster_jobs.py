"""`s2v cluster dashboard|exec|jobs|logs|stop`: a cluster's runs and head node, reached through the launcher's SSH
(the Jobs API only ever through a tunnel s2v opens). Merged into the `s2v cluster` group."""

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
          ) -> None:
    """Run a shell command on the head node through the launcher's SSH; exits with its exit code."""
    import shlex

    checked(config)
    from orchestrator.remote.tunnel import find_head, head_exec

    line = cmd[0] if len(cmd) == 1 else shlex.join(cmd)
    head = find_head(config)
    try:
        code = head_exec(head, line)
    except ClusterError:
        raise
    except (Exception, SystemExit) as e:  # noqa: BLE001 — ssh failure (click errors carry no code)
        raise ClusterError(f"exec on the head of {config} failed: {e}") from e
    if code:
        raise typer.Exit(code)


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
def logs(run: str = RUN_ARG, config: Optional[Path] = CONFIG_OPT,
         follow: bool = typer.Option(False, "--follow", "-f", help="Stream until the run ends."),
         ) -> None:
    """Print a run's driver log (or follow it; Ctrl-C asks whether to stop the run)."""
    from orchestrator.remote import submit

    if config:
        checked(config)
    code = submit.logs(run, str(config) if config else None, follow_=follow, echo=typer.echo, confirm=ask)
    if code:
        raise typer.Exit(code)


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
