"""`s2v cluster image`: a node image of the pinned stack and this checkout's wheel — its build context, the docker
or podman argv that build, log in and push it (pure functions), and the one place they run."""

from __future__ import annotations

import base64
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from core.errors import ConfigError, ImageError, ImageToolMissing, RegistryLoginFailed

IMAGE_FILES = Path("infra") / "clusters" / "image"  # in the checkout: Dockerfile, start.sh
CONTEXT_FILES = ("Dockerfile", "start.sh")
REPO_NAME = "s2v-batch"
TOOLS = ("docker", "podman")
# Nodes are x86_64 (p5, a3, RunPod's H100s): a laptop on arm64 must not push an arm64 image.
PLATFORM = "linux/amd64"
ECR_HOST = re.compile(r"^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com$")
GCP_HOST = re.compile(r"^([a-z0-9-]+-docker\.pkg\.dev|(?:[a-z]+\.)?gcr\.io)$")
# What a registry answers to a push without (valid) credentials, as docker and podman print it.
AUTH_REFUSED = re.compile(r"unauthorized|authentication required|no basic auth credentials|denied|"
                          r"401 Unauthorized|403 Forbidden", re.I)
IMAGE_REF = re.compile(r"^[a-z0-9][a-z0-9._\-/:@]*$")


@dataclass(frozen=True)
class Registry:
    """Where an image goes: its repository (host/path/name, no tag), the host to log in to, and how."""

    repo: str
    host: str
    login: str  # "ecr" (a token from ECR), "gcp" (an OAuth token), "none" (the user's own `docker login`)
    region: str | None = None


def registry_host(repo: str) -> str:
    """The registry host of a repository, as docker reads it: a first part with a dot, a colon or `localhost`."""
    first = repo.split("/", 1)[0]
    return first if "/" in repo and ("." in first or ":" in first or first == "localhost") else "docker.io"


def registry_for(repo: str) -> Registry:
    host = registry_host(repo)
    if m := ECR_HOST.match(host):
        return Registry(repo, host, "ecr", m.group(2))
    if GCP_HOST.match(host):
        return Registry(repo, host, "gcp")
    return Registry(repo, host, "none")


def default_repo(provider: str, cfg: dict, account: str | None = None) -> str:
    """The repository an image of this cluster goes to when --repo is not given: the account's ECR in the cluster's
    region, or an Artifact Registry repository `s2v` in the project's region. RunPod has no registry of its own."""
    p = cfg.get("provider") or {}
    if provider == "aws":
        if not account:
            raise ConfigError("the ECR repository needs the AWS account id: pass --repo "
                              "ACCOUNT.dkr.ecr.REGION.amazonaws.com/s2v-batch")
        return f"{account}.dkr.ecr.{p['region']}.amazonaws.com/{REPO_NAME}"
    if provider == "gcp":
        return f"{p['region']}-docker.pkg.dev/{p['project_id']}/s2v/{REPO_NAME}"
    raise ConfigError("RunPod pulls from any registry it can reach: pass --repo (e.g. docker.io/USER/s2v-batch or "
                      "ghcr.io/USER/s2v-batch; a private one needs RunPod registry credentials)")


def image_tag(version: str, fingerprint: str) -> str:
    """One tag per build of the code: the version for people, the fingerprint so two builds never share a tag."""
    return f"{version}-{fingerprint[:12]}"


def check_ref(ref: str) -> str:
    """An image reference safe to put in a config, a shell command and RunPod's GraphQL (no spaces, no quotes)."""
    if not IMAGE_REF.match(ref) or ref.endswith((":", "/")) or "//" in ref:
        raise ConfigError(f"{ref!r} is not an image reference like REGISTRY/PATH/NAME:TAG (lower case, no spaces)")
    return ref


def find_tool(prefer: str | None = None, which: Callable[[str], str | None] = shutil.which) -> str:
    """docker, else podman (or the one asked for): the path of the CLI that builds and pushes."""
    for name in ([prefer] if prefer else TOOLS):
        path = which(name)
        if path:
            return path
    wanted = prefer or " or ".join(TOOLS)
    raise ImageToolMissing(f"{wanted} is not on PATH: `s2v cluster image` builds with the local docker (or podman) "
                           "CLI. Install one (docs.docker.com/engine/install, podman.io), or keep the install-on-boot "
                           "path (a config without --docker-image needs no image)")


def build_argv(tool: str, context: Path, ref: str, platform: str = PLATFORM) -> list[str]:
    return [tool, "build", "--platform", platform, "-t", ref, "-f", str(Path(context) / "Dockerfile"), str(context)]


def login_argv(tool: str, host: str, user: str) -> list[str]:
    """The password goes on stdin: never in argv, where `ps` and shell history would show it."""
    return [tool, "login", "--username", user, "--password-stdin", host]


def push_argv(tool: str, ref: str) -> list[str]:
    return [tool, "push", ref]


def registry_credentials(reg: Registry) -> tuple[str, str] | None:
    """(user, password) to log in with, from the cloud's own credentials; None: the user logs in themselves."""
    if reg.login == "none":
        return None
    try:
        if reg.login == "ecr":
            import boto3

            data = boto3.client("ecr", region_name=reg.region).get_authorization_token()["authorizationData"][0]
            user, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
            return user, password
        import google.auth
        import google.auth.transport.requests

        creds, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
        creds.refresh(google.auth.transport.requests.Request())
        return "oauth2accesstoken", str(creds.token)
    except Exception as e:  # noqa: BLE001 — no library, no credentials, no permission, no network: one answer
        what = "ECR (ecr:GetAuthorizationToken)" if reg.login == "ecr" else "Artifact Registry (google.auth default)"
        raise RegistryLoginFailed(f"cannot get a login for {reg.host} from {what}: {type(e).__name__}: {e}") from e


def write_context(project_root: Path, out: Path, dist: Path) -> Path:
    """The build context: the Dockerfile and start.sh from the checkout, dist/ (the built wheel and its record) and
    deps.txt (the model stack's pins from pyproject.toml, installed in a layer of their own)."""
    root, out = Path(project_root), Path(out)
    if out.exists():
        shutil.rmtree(out)
    (out / "dist").mkdir(parents=True)
    for name in CONTEXT_FILES:
        src = root / IMAGE_FILES / name
        if not src.is_file():
            raise ConfigError(f"{src} is missing: `s2v cluster image` builds from an s2v-batch checkout (--project)")
        shutil.copy2(src, out / name)
    for f in Path(dist).iterdir():
        if f.is_file() and f.name != "node.json":  # node.json is the cluster's, written by `up`, never baked in
            shutil.copy2(f, out / "dist" / f.name)
    (out / "deps.txt").write_text("\n".join(heavy_requirements(root)) + "\n")
    return out


def heavy_requirements(project_root: Path) -> list[str]:
    """The `wan` extra's pins (torch, torchvision, diffsynth, transformers): the layer that holds the CUDA wheels."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: pip vendors the same parser
        from pip._vendor import tomli as tomllib  # type: ignore[no-redef]
    project = tomllib.loads((Path(project_root) / "pyproject.toml").read_text())["project"]
    return [str(r) for r in project["optional-dependencies"]["wan"]]


Runner = Callable[..., subprocess.CompletedProcess]


def run_step(argv: list[str], echo: Callable[[str], None], *, stdin: str | None = None, capture: bool = False,
             runner: Runner = subprocess.run, login: bool = False) -> str:
    """Run one docker/podman command, printed first; a failure is an ImageError with the tool's own words (a
    refused login, or a push the registry refused for want of credentials, a RegistryLoginFailed)."""
    echo("$ " + shlex.join(argv))
    try:
        r = runner(argv, input=stdin, text=True, capture_output=capture or stdin is not None)
    except FileNotFoundError as e:
        raise ImageToolMissing(f"{argv[0]} could not be started: {e}") from e
    out = f"{r.stdout or ''}{r.stderr or ''}".strip()
    if r.returncode == 0:
        return out
    tail = out[-2000:] or f"exit status {r.returncode}"
    if login or (argv[1:2] == ["push"] and AUTH_REFUSED.search(out)):
        raise RegistryLoginFailed(f"{argv[0]} {argv[1]} failed: the registry refused the credentials:\n{tail}")
    raise ImageError(f"`{shlex.join(argv[:2])}` failed:\n{tail}")


def build_and_push(context: Path, ref: str, *, push: bool, tool: str, echo: Callable[[str], None],
                   runner: Runner = subprocess.run,
                   credentials: Callable[[Registry], tuple[str, str] | None] = registry_credentials) -> str:
    """Build ref from context, then (push) log in where the cloud gives a login and push it. Returns ref."""
    run_step(build_argv(tool, context, ref), echo, runner=runner)
    if not push:
        return ref
    reg = registry_for(ref.rsplit(":", 1)[0] if ":" in ref.rsplit("/", 1)[-1] else ref)
    login = credentials(reg)
    if login is None:
        echo(f"(no login step for {reg.host}: the push uses your own `{Path(tool).name} login {reg.host}`)")
    else:
        run_step(login_argv(tool, reg.host, login[0]), echo, stdin=login[1], runner=runner, login=True)
    out = run_step(push_argv(tool, ref), echo, capture=True, runner=runner)
    if out:
        echo(out.splitlines()[-1])  # the digest line: which image the nodes will pull
    return ref
