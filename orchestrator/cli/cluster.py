"""`s2v cluster init|up|down|status|attach`: cluster configs and the Ray cluster launcher (ray.autoscaler.sdk).

Every launcher call gets `_launch(config)` (infra/clusters/launch.py), never the bare file: it carries the code
bundle mount and the zone `up` chose, so all commands address the same cluster.
The remote-run commands (dashboard, exec, jobs, logs, stop) are in cluster_jobs.py and the preflight (check) in
cluster_check.py, both merged into this group."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from core.errors import ClusterError, ConfigError, S2VError
from orchestrator.cli import cluster_check, cluster_cost, cluster_image, cluster_jobs
from orchestrator.cli.common import CONFIG_ARG, errors_to_exit, project_root, settings

app = typer.Typer(help="Create, inspect and tear down Ray clusters on AWS, GCP or RunPod.", no_args_is_help=True)
app.add_typer(cluster_jobs.app)  # no name: its commands join this group
app.add_typer(cluster_cost.app)
app.add_typer(cluster_check.app)
app.add_typer(cluster_image.app)


def _launch(config: Path, project: Path | None = None) -> dict:
    """The config dict every launcher call gets (bundle mount, remembered zone); see infra/clusters/launch.py."""
    from infra.clusters.launch import launch_config

    return launch_config(config, project, settings())


@app.command()
@errors_to_exit
def init(
    provider_arg: Optional[str] = typer.Argument(None, metavar="[PROVIDER]", help="aws | gcp | runpod."),
    provider: Optional[str] = typer.Option(None, "--provider", "-p", help="Same as PROVIDER (default: settings)."),
    bucket: Optional[str] = typer.Option(None, help="Bucket for the work area (s3://BUCKET/s2v-work; gs:// on GCP)."),
    work: Optional[str] = typer.Option(None, help="Work area URI instead of --bucket (s3://… or gs://…)."),
    input_bucket: Optional[List[str]] = typer.Option(None, "--input-bucket", help="Another bucket runs read "
                                                     "inputs from (repeatable); the grants written cover it."),
    output_bucket: Optional[List[str]] = typer.Option(None, "--output-bucket", help="Another bucket runs publish "
                                                      "to (repeatable); the grants written cover it."),
    out: Path = typer.Option(Path("cluster.yaml"), "--out", "-o", help="Where to write the config."),
    name: Optional[str] = typer.Option(None, help="Cluster name (default: settings cluster_name)."),
    region: Optional[str] = typer.Option(None, help="Region (AWS/GCP) or RunPod data center id."),
    zone: Optional[str] = typer.Option(None, help="AWS availability zones / GCP zones to try in order (comma list)."),
    gpu_type: Optional[str] = typer.Option(None, help="Instance type, machine type or RunPod GPU type id."),
    gpus: Optional[int] = typer.Option(None, help="GPUs per worker node."),
    max_workers: Optional[int] = typer.Option(None, help="Most GPU worker nodes."),
    spot: bool = typer.Option(True, "--spot/--on-demand", help="Spot GPU workers plus an on-demand fallback type "
                              "(default), or on-demand GPU workers only."),
    image: Optional[str] = typer.Option(None, help="VM image (AMI / GCE image) or container image (RunPod)."),
    resolve_images: bool = typer.Option(True, "--resolve-images/--no-resolve-images",
                                        help="AWS: pin today's AMI ids from their public SSM parameters (needs "
                                             "ssm:GetParameter); off: EC2 resolves them at each launch."),
    model_dir: Optional[str] = typer.Option(None, help="Model weights folder (s3://, gs:// or a node path)."),
    project: Optional[str] = typer.Option(None, help="GCP project id."),
    key_name: Optional[str] = typer.Option(None, help="AWS: an existing EC2 key pair (with --ssh-key)."),
    ssh_key: Optional[str] = typer.Option(None, help="Private key file for SSH to the nodes."),
    idle_stop_minutes: Optional[int] = typer.Option(None, min=0, help="Stop the cluster after this many idle "
                                                    "minutes (0 = never; default 30)."),
    fallback_type: Optional[List[str]] = typer.Option(None, "--fallback-type", help="Another instance/machine "
                                                      "type the GPU workers may fall back to (repeatable)."),
    resolve_zones: bool = typer.Option(True, "--resolve-zones/--no-resolve-zones", help="AWS/GCP: ask the cloud "
                                       "which zones offer the types and write those (needs ec2:DescribeInstance"
                                       "TypeOfferings / compute.machineTypes.list); off: the template's zones."),
    docker_image: Optional[str] = typer.Option(None, "--docker-image", help="A node image from `s2v cluster "
                                               "image` (REGISTRY/NAME:TAG): nodes run it instead of installing "
                                               "at boot (AWS/GCP: Ray's docker:, RunPod: the pods' image)."),
    weights_snapshot: Optional[str] = typer.Option(None, "--weights-snapshot", help="AWS: an EBS snapshot of the "
                                                   "weights (snap-…), mounted on every GPU node instead of a copy."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Write a validated cluster config for your account: bucket, region, key, machine types, images, prices."""
    from infra.clusters.config import PROVIDERS
    from infra.clusters.generate import dump_config, generate_config

    s = settings()
    prov = provider_arg or provider or s.cloud_provider
    if prov not in PROVIDERS:
        raise ConfigError(f"unknown provider {prov!r}; expected one of {', '.join(PROVIDERS)}")
    updates = {
        "cloud_region": region, "cloud_zone": zone, "cloud_gpu_type": gpu_type, "cloud_gpu_count": gpus,
        "cloud_max_workers": max_workers, "spot": spot, "cloud_image": image, "model_dir": model_dir,
        "cloud_project": project, "cluster_name": name,
    }
    s = s.model_copy(update={k: v for k, v in updates.items() if v is not None})
    if region is None and prov == "gcp" and s.cloud_region[-2:-1] == "-":
        # The settings default is an AWS region ("us-west-2"); GCP names look like "us-central1".
        s = s.model_copy(update={"cloud_region": "us-central1"})
    if prov == "gcp" and not s.cloud_project:
        raise ConfigError("a GCP cluster needs its project: pass --project PROJECT_ID (or set S2V_CLOUD_PROJECT)")
    if out.exists() and not force:
        raise ConfigError(f"{out} exists; pass --force to overwrite it")
    if work is None and bucket is None and s.work.startswith(("s3://", "gs://")):
        work = s.work
    cfg = generate_config(s, prov, work=work, bucket=bucket, key_name=key_name, ssh_key=ssh_key,
                          idle_stop_minutes=idle_stop_minutes,
                          resolve_images=resolve_images and prov == "aws" and not image,
                          input_buckets=input_bucket or (), output_buckets=output_bucket or (),
                          fallback_types=fallback_type or (), resolve_zones=resolve_zones,
                          docker_image=docker_image, weights_snapshot=weights_snapshot)
    dump_config(cfg, out, prov)
    from infra.clusters.iam import write_grants

    grants = write_grants(cfg, prov, out.with_name(f"{out.stem}-iam"))
    types = ", ".join(f"{n} ({nt['labels']['s2v-price-key']}, {nt['labels']['s2v-market']})"
                      for n, nt in cfg["available_node_types"].items())
    typer.echo(f"wrote {out}: {prov}, work area {cfg['metadata']['s2v']['work']}; node types {types}")
    if grants:
        typer.echo(f"wrote the grants for its buckets: {', '.join(map(str, grants))}")
    typer.echo(f"next: create the IAM pieces in docs/clusters.md (with those files), then `s2v cluster up {out}`")


@app.command()
@errors_to_exit
def up(
    config: Path = CONFIG_ARG,
    project: Optional[Path] = typer.Option(None, help="Checkout whose code the nodes run (default: this one)."),
    no_restart: bool = typer.Option(False, "--no-restart", help="Keep Ray running on existing nodes."),
    restart_only: bool = typer.Option(False, "--restart-only", help="Skip setup commands; restart Ray only."),
    force: bool = typer.Option(False, "--force", help="Restart Ray even while jobs run on the cluster (they are "
                               "killed; their checkpoints stay, and resubmitting resumes them)."),
    skip_check: bool = typer.Option(False, cluster_check.SKIP_FLAG, help="Launch without the preflight "
                                    "(`s2v cluster check`) passing first."),
) -> None:
    """Create or update the cluster: check the account first (`s2v cluster check`), build a wheel of your checkout,
    mount it on every node, (re)install it there."""
    from infra.clusters.launch import up_in_zones

    if not skip_check:
        cluster_check.gate(config)  # before the wheel is built or anything launched: a failure here costs nothing
    root = project_root(project)
    cfg = _launch(config, root)
    if not no_restart and not force:
        _refuse_to_restart_under_jobs(config, cfg)
    build = cfg["metadata"]["s2v_build"]
    typer.echo(f"built s2v-batch {build['version']} from {root} (fingerprint {build['fingerprint'][:12]})")
    _warn_unpriced(cfg)
    from ray.autoscaler import sdk

    def create(c: dict) -> None:
        sdk.create_or_update_cluster(c, no_restart=no_restart, restart_only=restart_only, no_config_cache=True)

    try:
        zone = up_in_zones(cfg, create, _head_exists, echo=typer.echo, settings=settings())
        head = sdk.get_head_node_ip(cfg)
    except ClusterError:
        raise
    except (Exception, SystemExit) as e:  # noqa: BLE001 — the launcher sys.exits on failed updates
        raise ClusterError(f"cluster up failed: {e}") from e
    where = f" in {zone}" if zone else ""
    typer.echo(f"cluster is up{where}; head node {head}. Submit with: s2v render MANIFEST --cluster {config}")
    _pin(config, "pinned", replace=False)


def _pin(config: Path, verb: str, replace: bool = True) -> None:
    from orchestrator.remote.tunnel import find_head

    fp = find_head(config).pin_host_key(replace)
    if fp:
        typer.echo(f"{verb} the head's SSH host key ({fp}); every later connection checks it")


@app.command()
@errors_to_exit
def trust(config: Path = CONFIG_ARG) -> None:
    """Pin the SSH host key the running head shows now (for a head made outside `s2v cluster up`): later tunnels
    and secret deliveries connect only to that key. Compare the fingerprint with the cloud console's if you can."""
    _pin(config, "trusted")


def _refuse_to_restart_under_jobs(config: Path, cfg: dict) -> None:
    """`up` restarts Ray on every node of a running cluster, which kills whatever renders there without a word:
    refuse while the head's Jobs API shows a job running or pending, or cannot be read (no evidence of idleness)."""
    if not _head_exists(cfg):
        return  # a new cluster: nothing to kill
    from orchestrator.remote import submit

    ways = (f"`s2v cluster up {config} --no-restart` updates the code without restarting Ray; `--force` restarts "
            "anyway (the jobs are killed, their checkpoints stay)")
    try:
        rows = submit.list_jobs(str(config))
    except S2VError as e:
        raise ClusterError(f"cannot tell whether jobs run on {config} ({e}), and `up` would restart Ray under "
                           f"them: {ways}. A head whose setup failed has no Jobs API to ask: `up --force` repairs "
                           "it") from e
    live = [r for r in rows if r["status"] in ("RUNNING", "PENDING")]
    if live:
        names = ", ".join(f"{r['run'] or r['job']} ({r['status'].lower()})" for r in live)
        raise ClusterError(f"{len(live)} job(s) on {config}: {names}. `up` restarts Ray on every node and would "
                           f"kill them: wait (`s2v cluster logs RUN --follow`), or {ways}")


def _head_exists(cfg: dict) -> bool:
    from ray.autoscaler._private.providers import _get_node_provider
    from ray.autoscaler.tags import NODE_KIND_HEAD, TAG_RAY_NODE_KIND

    try:
        provider = _get_node_provider(cfg["provider"], cfg["cluster_name"])
        return bool(provider.non_terminated_nodes({TAG_RAY_NODE_KIND: NODE_KIND_HEAD}))
    except Exception:  # noqa: BLE001 — cannot tell: assume the worst, never launch a second head elsewhere
        return True


def _warn_unpriced(cfg: dict) -> None:
    s = settings()
    prices = (cfg["metadata"]["s2v"].get("prices") or {})
    for name, nt in cfg["available_node_types"].items():
        labels = nt.get("labels") or {}
        key, market = labels.get("s2v-price-key"), labels.get("s2v-market")
        if key not in prices and s.node_price(key, market) is None:
            typer.secho(f"warning: no {market} price for {key} (node type {name}); its node-hours will be reported "
                        "unpriced — add it to metadata.s2v.prices or S2V_NODE_PRICES",
                        fg=typer.colors.YELLOW, err=True)


@app.command()
@errors_to_exit
def down(
    config: Path = CONFIG_ARG,
    workers_only: bool = typer.Option(False, "--workers-only", help="Keep the head node."),
) -> None:
    """Tear the cluster down (every node it launched)."""
    cfg = _launch(config)
    from ray.autoscaler import sdk

    try:
        sdk.teardown_cluster(cfg, workers_only=workers_only)
    except (Exception, SystemExit) as e:  # noqa: BLE001
        raise ClusterError(f"cluster down failed: {e}") from e
    typer.echo("workers terminated" if workers_only else "cluster terminated")


def cluster_status(config: Path) -> dict:
    """Head and worker addresses plus `ray status` from the head (empty when it is unreachable)."""
    from ray.autoscaler import sdk

    cfg = _launch(config)
    try:
        head = sdk.get_head_node_ip(cfg)
    except (Exception, SystemExit) as e:  # noqa: BLE001 — "Head node of cluster not found!" is a RuntimeError
        raise ClusterError(f"no running cluster for {config}: {e}") from e
    workers = sdk.get_worker_node_ips(cfg)
    try:
        from orchestrator.remote.tunnel import find_head, head_exec

        report = head_exec(find_head(config), "ray status", with_output=True)  # through the pinned runner
        report = report.decode() if isinstance(report, bytes) else str(report or "")
    except (Exception, SystemExit) as e:  # noqa: BLE001
        report = f"(ray status failed: {e})"
    return {"head": head, "workers": workers, "ray_status": report}


@app.command()
@errors_to_exit
def status(config: Path = CONFIG_ARG) -> None:
    """Show the head, the workers and the autoscaler's view (`ray status` on the head)."""
    st = cluster_status(config)
    typer.echo(f"head: {st['head']}")
    typer.echo(f"workers ({len(st['workers'])}): {', '.join(st['workers']) or '-'}")
    typer.echo(st["ray_status"])


@app.command()
@errors_to_exit
def attach(
    config: Path = CONFIG_ARG,
    tmux: bool = typer.Option(False, "--tmux", help="Attach inside tmux."),
    port_forward: Optional[list[int]] = typer.Option(None, "--port-forward", "-p", help="Forward these ports."),
) -> None:
    """Open a shell on the head node (through the pinned SSH connection, like every s2v command)."""
    from orchestrator.remote.tunnel import find_head, head_exec

    forwards = [(p, p) for p in port_forward] if port_forward else None
    try:
        code = head_exec(find_head(config), "tmux attach || tmux new" if tmux else "$SHELL", port_forward=forwards)
    except ClusterError:
        raise
    except (Exception, SystemExit) as e:  # noqa: BLE001
        raise ClusterError(f"attach failed: {e}") from e
    if code:
        raise typer.Exit(code)
