"""`s2v cluster init|up|down|status|attach`: cluster configs and the Ray cluster launcher (ray.autoscaler.sdk).

The remote-run commands (dashboard, exec, jobs, logs, stop) are in cli_cluster_jobs.py, registered at the end."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

import typer

from core.errors import ClusterError, ConfigError, S2VError, exit_code_for

app = typer.Typer(help="Create, inspect and tear down Ray clusters on AWS, GCP or RunPod.", no_args_is_help=True)

CONFIG_ARG = typer.Argument(Path("cluster.yaml"), help="Cluster config (see `s2v cluster init`).")


def _settings(ctx: typer.Context):
    """Settings from the S2V_* environment, like every other `s2v` command."""
    from core.settings import Settings

    return Settings()


def _errors_to_exit(fn):
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except S2VError as e:
            typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
            raise typer.Exit(exit_code_for(e)) from e

    return wrapper


def _checked(config: Path) -> dict:
    """Load + validate (Ray's schema and ours) before any cloud call is made."""
    from infra.clusters.config import load_config, validate_cluster_config

    if not config.exists():
        raise ConfigError(f"no cluster config at {config}; create one with `s2v cluster init --provider aws`")
    cfg = load_config(config)
    validate_cluster_config(cfg, where=str(config))
    return cfg


@app.command()
@_errors_to_exit
def init(
    ctx: typer.Context,
    provider: str = typer.Option(None, "--provider", "-p", help="aws | gcp | runpod (default: settings)."),
    out: Path = typer.Option(Path("cluster.yaml"), "--out", "-o", help="Where to write the config."),
    region: Optional[str] = typer.Option(None, help="Region (AWS/GCP) or RunPod data center id."),
    zone: Optional[str] = typer.Option(None, help="Availability zone(s) / GCP zone."),
    gpu_type: Optional[str] = typer.Option(None, help="Instance type, machine type or RunPod GPU type id."),
    gpus: Optional[int] = typer.Option(None, help="GPUs per worker node."),
    max_workers: Optional[int] = typer.Option(None, help="Most GPU worker nodes."),
    spot: Optional[bool] = typer.Option(None, "--spot/--on-demand", help="Spot GPU workers (plus on-demand fallback)."),
    image: Optional[str] = typer.Option(None, help="VM image (AMI / GCE image) or container image (RunPod)."),
    model_dir: Optional[str] = typer.Option(None, help="Model weights location (s3://, gs:// or a node path)."),
    project: Optional[str] = typer.Option(None, help="GCP project id."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Write a validated cluster config generated from settings and these flags."""
    from infra.clusters.config import PROVIDERS, dump_config, generate_config

    s = _settings(ctx)
    prov = provider or s.cloud_provider
    if prov not in PROVIDERS:
        raise ConfigError(f"unknown provider {prov!r}; expected one of {', '.join(PROVIDERS)}")
    updates = {
        "cloud_region": region, "cloud_zone": zone, "cloud_gpu_type": gpu_type, "cloud_gpu_count": gpus,
        "cloud_max_workers": max_workers, "spot": spot, "cloud_image": image, "model_dir": model_dir,
        "cloud_project": project,
    }
    s = s.model_copy(update={k: v for k, v in updates.items() if v is not None})
    if region is None and prov == "gcp" and s.cloud_region[-2:-1] == "-":
        # The settings default is an AWS region ("us-west-2"); GCP names look like "us-central1".
        s = s.model_copy(update={"cloud_region": "us-central1"})
    if out.exists() and not force:
        raise ConfigError(f"{out} exists; pass --force to overwrite it")
    cfg = generate_config(s, prov)
    dump_config(cfg, out, prov)
    types = ", ".join(cfg["available_node_types"])
    typer.echo(f"wrote {out} ({prov}, node types: {types}); next: s2v cluster up {out}")


@app.command()
@_errors_to_exit
def up(
    config: Path = CONFIG_ARG,
    no_restart: bool = typer.Option(False, "--no-restart", help="Keep Ray running on existing nodes."),
    restart_only: bool = typer.Option(False, "--restart-only", help="Skip setup commands; restart Ray only."),
) -> None:
    """Create or update the cluster (head node first; workers come with demand)."""
    _checked(config)
    from ray.autoscaler import sdk

    try:
        sdk.create_or_update_cluster(str(config), no_restart=no_restart, restart_only=restart_only,
                                     no_config_cache=True)
        head = sdk.get_head_node_ip(str(config))
    except (Exception, SystemExit) as e:  # noqa: BLE001 — the launcher sys.exits on failed updates
        raise ClusterError(f"cluster up failed: {e}") from e
    typer.echo(f"cluster is up; head node {head}. Submit with: s2v render --cluster {config} MANIFEST")


@app.command()
@_errors_to_exit
def down(
    config: Path = CONFIG_ARG,
    workers_only: bool = typer.Option(False, "--workers-only", help="Keep the head node."),
) -> None:
    """Tear the cluster down (every node it launched)."""
    _checked(config)
    from ray.autoscaler import sdk

    try:
        sdk.teardown_cluster(str(config), workers_only=workers_only)
    except (Exception, SystemExit) as e:  # noqa: BLE001
        raise ClusterError(f"cluster down failed: {e}") from e
    typer.echo("workers terminated" if workers_only else "cluster terminated")


def cluster_status(config: Path) -> dict:
    """Head and worker addresses plus `ray status` from the head (empty when it is unreachable)."""
    from ray.autoscaler import sdk

    try:
        head = sdk.get_head_node_ip(str(config))
    except (Exception, SystemExit) as e:  # noqa: BLE001 — "Head node of cluster not found!" is a RuntimeError
        raise ClusterError(f"no running cluster for {config}: {e}") from e
    workers = sdk.get_worker_node_ips(str(config))
    try:
        from ray.autoscaler._private.commands import exec_cluster

        report = exec_cluster(str(config), cmd="ray status", run_env="auto", screen=False, tmux=False, stop=False,
                              start=False, override_cluster_name=None, port_forward=None, with_output=True)
        report = report.decode() if isinstance(report, bytes) else str(report or "")
    except (Exception, SystemExit) as e:  # noqa: BLE001
        report = f"(ray status failed: {e})"
    return {"head": head, "workers": workers, "ray_status": report}


@app.command()
@_errors_to_exit
def status(config: Path = CONFIG_ARG) -> None:
    """Show the head, the workers and the autoscaler's view (`ray status` on the head)."""
    _checked(config)
    st = cluster_status(config)
    typer.echo(f"head: {st['head']}")
    typer.echo(f"workers ({len(st['workers'])}): {', '.join(st['workers']) or '-'}")
    typer.echo(st["ray_status"])


@app.command()
@_errors_to_exit
def attach(
    config: Path = CONFIG_ARG,
    tmux: bool = typer.Option(False, "--tmux", help="Attach inside tmux."),
    port_forward: Optional[list[int]] = typer.Option(None, "--port-forward", "-p", help="Forward these ports."),
) -> None:
    """Open a shell on the head node."""
    _checked(config)
    from ray.autoscaler._private.commands import attach_cluster

    forwards = [(p, p) for p in port_forward] if port_forward else None
    try:
        attach_cluster(str(config), start=False, use_screen=False, use_tmux=tmux, override_cluster_name=None,
                       no_config_cache=False, new=False, port_forward=forwards)
    except (Exception, SystemExit) as e:  # noqa: BLE001
        raise ClusterError(f"attach failed: {e}") from e


# the remote-run commands (dashboard, exec, jobs, logs, stop) register themselves on `app`
import orchestrator.cli_cluster_jobs  # noqa: E402,F401
