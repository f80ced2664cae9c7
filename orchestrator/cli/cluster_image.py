"""`s2v cluster image CONFIG [--push] [--tag TAG] [--repo REPO]`: build (and push) the node image of this checkout
for a cluster (infra/clusters/node_image.py). Merged into the `s2v cluster` group."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from core.errors import ConfigError
from orchestrator.cli.common import CONFIG_ARG, checked, errors_to_exit, project_root, settings

app = typer.Typer()


@app.command()
@errors_to_exit
def image(
    config: Path = CONFIG_ARG,
    push: bool = typer.Option(False, "--push", help="Push it too (ECR and Artifact Registry: logged in with your "
                              "cloud credentials; any other registry: your own `docker login`)."),
    tag: Optional[str] = typer.Option(None, "--tag", help="Image tag (default: VERSION-FINGERPRINT of the code)."),
    repo: Optional[str] = typer.Option(None, "--repo", help="Repository without tag (default: AWS ECR "
                                       "ACCOUNT.dkr.ecr.REGION.amazonaws.com/s2v-batch, GCP REGION-docker.pkg.dev/"
                                       "PROJECT/s2v/s2v-batch; RunPod: required)."),
    tool: Optional[str] = typer.Option(None, "--tool", help="docker or podman (default: whichever is on PATH)."),
    project: Optional[Path] = typer.Option(None, help="Checkout to build (default: this one)."),
) -> None:
    """Build the node image (CUDA base, uv, CPython, the pinned stack, this checkout's wheel) with the local docker
    or podman, printing each command; with --push, push it where the cluster's nodes pull from. Then point the
    config at it: `s2v cluster init ... --docker-image REF`."""
    from infra.clusters import node_image as ni
    from infra.clusters.config import provider_of
    from infra.clusters.launch import state_dir
    from infra.clusters.ship import build_bundle

    cfg = checked(config)
    prov = provider_of(cfg)
    exe = ni.find_tool(tool)  # before the wheel is built: without docker there is nothing to do
    if repo is None:
        repo = ni.default_repo(prov, cfg, _aws_account() if prov == "aws" else None)
    if tag is not None:
        ni.check_ref(f"{repo}:{tag}")
    s = settings()
    root = project_root(project)
    work = state_dir(cfg["cluster_name"], s) / "image"
    bundle = build_bundle(root, work / "dist", Path(s.cache_dir) / "wheels")
    ref = ni.check_ref(f"{repo}:{tag or ni.image_tag(bundle.version, bundle.fingerprint)}")
    context = ni.write_context(root, work / "context", work / "dist")
    typer.echo(f"build context {context}: s2v-batch {bundle.version}, fingerprint {bundle.fingerprint[:12]}")
    ni.build_and_push(context, ref, push=push, tool=exe, echo=typer.echo)
    typer.echo(f"{'pushed' if push else 'built (not pushed: add --push)'} {ref}")
    where = "image_name of every node type" if prov == "runpod" else "docker.image"
    typer.echo(f"next: `s2v cluster init {prov} --docker-image {ref} ... --force` (or set {where} in {config}); "
               "rebuild after every code change: a node refuses an image that is not the code `up` ships")


def _aws_account() -> str:
    """The caller's account id (STS), for the default ECR repository."""
    try:
        import boto3

        return str(boto3.client("sts").get_caller_identity()["Account"])
    except Exception as e:  # noqa: BLE001 — no boto3, no credentials, no network
        raise ConfigError(f"cannot tell the AWS account for the ECR repository ({type(e).__name__}: {e}); pass "
                          "--repo ACCOUNT.dkr.ecr.REGION.amazonaws.com/s2v-batch") from e
