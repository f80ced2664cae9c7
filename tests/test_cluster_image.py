"""Cold start you can choose (issue 18 item 6): configs that run a pre-built node image (Ray's `docker:`, RunPod's
pod image) or mount an EBS snapshot of the weights pass Ray's validator and ours; `s2v cluster image` builds the
argv for each registry, names a missing docker or a refused login without a traceback; a node refuses a stale
image (its setup commands run by bash in a node HOME); a weight copy that keeps failing stops after a bounded
number of attempts. No traffic anywhere: docker is a script here, and the registries are never reached."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from core.errors import ConfigError, ImageError, ImageToolMissing, InputError, RegistryLoginFailed, TransientError
from core.settings import Settings
from infra.clusters import node_image as ni
from infra.clusters.coldstart import IMAGE_SETUP, WEIGHTS_MOUNT
from infra.clusters.config import validate_cluster_config
from infra.clusters.generate import dump_config, generate_config

ROOT = Path(__file__).resolve().parents[1]
ECR = "123456789012.dkr.ecr.us-east-1.amazonaws.com/s2v-batch"
SNAP = "snap-0123456789abcdef0"


def _config(provider: str, **kw) -> dict:
    s = Settings(spot=True, cloud_region="us-central1" if provider == "gcp" else "us-east-1", cloud_project="proj-1",
                 cloud_gpu_count=1, model_dir=kw.pop("model_dir", "s3://weights/wan"))
    return generate_config(s, provider, bucket="my-bucket", **kw)


@pytest.mark.parametrize("provider", ["aws", "gcp", "runpod"])
def test_a_config_with_a_node_image_passes_rays_validator_and_installs_nothing(provider, tmp_path):
    ref = f"{ECR}:0.1.0-0123456789ab"
    cfg = _config(provider, docker_image=ref)
    again = yaml.safe_load(dump_config(cfg, tmp_path / "c.yaml", provider).read_text())
    prepared = validate_cluster_config(again)  # Ray's prepare_config + validate_config, then ours
    commands = [str(c) for k in ("initialization_commands", "setup_commands", "worker_setup_commands")
                for c in again.get(k) or []]
    assert not any("uv pip install" in c or "astral.sh" in c for c in commands), commands
    assert again["setup_commands"][1] == "~/s2v-venv/bin/python -m infra.clusters.node check-image"
    assert again["metadata"]["s2v"]["node_image"] == ref
    types = again["available_node_types"]
    if provider == "runpod":  # a pod is a container: no docker-in-docker, the pod's image is the node image
        assert "docker" not in again
        assert {nt["node_config"]["image_name"] for nt in types.values()} == {ref}
    else:
        d = prepared["docker"]
        assert d["image"] == ref and d["container_name"] == "s2v" and d["pull_before_run"] is True
        assert "--gpus all" in d["worker_run_options"] and "--gpus all" not in d.get("run_options", [])
        assert again["initialization_commands"][0].startswith("command -v docker")
    for c in commands:
        r = subprocess.run(["bash", "-n", "-c", c], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, f"{c}\n{r.stderr}"
    with pytest.raises(ConfigError, match="not an image reference"):
        _config(provider, docker_image="my image:latest")


@pytest.mark.parametrize("docker_image", [None, f"{ECR}:t"])
def test_an_ebs_snapshot_of_the_weights_is_mounted_on_gpu_nodes_only(docker_image, tmp_path):
    cfg = _config("aws", model_dir=None, weights_snapshot=SNAP, docker_image=docker_image)
    again = yaml.safe_load(dump_config(cfg, tmp_path / "c.yaml", "aws").read_text())
    validate_cluster_config(again)
    types = again["available_node_types"]
    for name, nt in types.items():
        snaps = [m["Ebs"].get("SnapshotId") for m in nt["node_config"]["BlockDeviceMappings"]]
        assert (SNAP in snaps) == (name != "head"), (name, snaps)
        if name != "head":
            assert nt["initialization_commands"][-1].endswith(f"/dev/disk/by-label/s2v-weights {WEIGHTS_MOUNT}; }}")
    assert again["metadata"]["s2v"]["model_dir"] == WEIGHTS_MOUNT
    if docker_image:  # the node-type commands replace the global ones: the docker step is kept
        assert types["gpu_spot"]["initialization_commands"][0].startswith("command -v docker")
        assert f"-v {WEIGHTS_MOUNT}:{WEIGHTS_MOUNT}:ro" in again["docker"]["worker_run_options"]
    with pytest.raises(ConfigError, match="not on the snapshot"):
        _config("aws", model_dir="s3://weights/wan", weights_snapshot=SNAP)
    with pytest.raises(ConfigError, match="not an EBS snapshot id"):
        _config("aws", model_dir=None, weights_snapshot="vol-0123456789abcdef0")
    with pytest.raises(ConfigError, match="network volume"):
        _config("gcp", weights_snapshot=SNAP)


def test_registry_argv_for_each_registry():
    assert ni.registry_for(ECR) == ni.Registry(ECR, ECR.split("/")[0], "ecr", "us-east-1")
    ar = "europe-west4-docker.pkg.dev/proj-1/s2v/s2v-batch"
    assert ni.registry_for(ar).login == "gcp" and ni.registry_for(ar).host == "europe-west4-docker.pkg.dev"
    assert ni.registry_for("me/s2v-batch") == ni.Registry("me/s2v-batch", "docker.io", "none")
    assert ni.registry_for("ghcr.io/me/s2v-batch").host == "ghcr.io"
    assert ni.registry_for("localhost:5000/s2v-batch").host == "localhost:5000"
    aws, gcp = _config("aws"), _config("gcp")
    assert ni.default_repo("aws", aws, "123456789012") == ECR
    assert ni.default_repo("gcp", gcp) == "us-central1-docker.pkg.dev/proj-1/s2v/s2v-batch"
    with pytest.raises(ConfigError, match="pass --repo"):
        ni.default_repo("runpod", _config("runpod"))
    assert ni.image_tag("0.1.0", "ab" * 32) == "0.1.0-abababababab"
    ctx = Path("/tmp/ctx")
    assert ni.build_argv("docker", ctx, f"{ECR}:t") == ["docker", "build", "--platform", "linux/amd64", "-t",
                                                        f"{ECR}:t", "-f", "/tmp/ctx/Dockerfile", "/tmp/ctx"]
    assert ni.push_argv("podman", f"{ECR}:t") == ["podman", "push", f"{ECR}:t"]
    assert ni.login_argv("docker", "ghcr.io", "AWS") == ["docker", "login", "--username", "AWS", "--password-stdin",
                                                         "ghcr.io"]


@dataclass
class _Ran:
    returncode: int = 0
    stdout: str = ""
    stderr: str = ""


def _runner(log: list, answers: dict):
    def run(argv, input=None, text=True, capture_output=False):
        log.append((list(argv), input))
        return answers.get(argv[1], _Ran())
    return run


def test_build_login_and_push_run_in_order_with_the_password_on_stdin_only():
    log, echoed = [], []
    ref = f"{ECR}:0.1.0-abc"
    ni.build_and_push(Path("/ctx"), ref, push=True, tool="docker", echo=echoed.append,
                      runner=_runner(log, {"push": _Ran(stdout="0.1.0-abc: digest: sha256:feed size: 4242")}),
                      credentials=lambda reg: ("AWS", "s3cr3t-token") if reg.login == "ecr" else None)
    assert [a[:2] for a, _ in log] == [["docker", "build"], ["docker", "login"], ["docker", "push"]]
    assert log[1] == (ni.login_argv("docker", ECR.split("/")[0], "AWS"), "s3cr3t-token")
    assert not any("s3cr3t" in " ".join(a) for a, _ in log) and not any("s3cr3t" in e for e in echoed)
    assert echoed[0] == f"$ docker build --platform linux/amd64 -t {ref} -f /ctx/Dockerfile /ctx"
    assert echoed[-1].endswith("digest: sha256:feed size: 4242")
    # any other registry: the user's own login; a push it refuses is a login failure, named as such
    log.clear()
    with pytest.raises(RegistryLoginFailed, match="refused the credentials"):
        ni.build_and_push(Path("/ctx"), "ghcr.io/me/s2v:t", push=True, tool="docker", echo=echoed.append,
                          runner=_runner(log, {"push": _Ran(1, "", "unauthorized: authentication required")}))
    assert [a[1] for a, _ in log] == ["build", "push"]
    with pytest.raises(RegistryLoginFailed):
        ni.build_and_push(Path("/ctx"), f"{ECR}:t", push=True, tool="docker", echo=echoed.append,
                          runner=_runner([], {"login": _Ran(1, "", "Error response from daemon: login denied")}),
                          credentials=lambda reg: ("AWS", "x"))
    with pytest.raises(ImageError) as e:  # a failed build is no login problem
        ni.build_and_push(Path("/ctx"), f"{ECR}:t", push=True, tool="docker", echo=echoed.append,
                          runner=_runner([], {"build": _Ran(1, "", "failed to solve: denied: base image pull")}))
    assert not isinstance(e.value, RegistryLoginFailed) and "failed to solve" in str(e.value)


def _runpod_config(tmp_path: Path) -> Path:
    res = CliRunner().invoke(_app(), ["init", "runpod", "--bucket", "b", "--out", str(tmp_path / "rp.yaml")])
    assert res.exit_code == 0, res.output
    return tmp_path / "rp.yaml"


def _app():
    from orchestrator.cli.cluster import app

    return app


def test_image_without_docker_is_a_named_error_with_exit_2(tmp_path, monkeypatch):
    config = _runpod_config(tmp_path)
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(ImageToolMissing):
        ni.find_tool()
    res = CliRunner().invoke(_app(), ["image", str(config), "--repo", "ghcr.io/me/s2v-batch"])
    assert res.exit_code == 2, res.output
    assert "docker or podman is not on PATH" in res.output and "Traceback" not in res.output


def test_image_builds_the_context_and_prints_each_command(tmp_path, monkeypatch):
    """Through the CLI with a `docker` that records its arguments: the context holds the Dockerfile, the wheel of
    this checkout with its record, and the model stack's pins; a push the registry refuses exits 2, named."""
    from infra.clusters.ship import source_fingerprint

    config = _runpod_config(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$*\" >> {tmp_path / 'docker.log'}\n"
                      "[ \"$1\" = push ] && [ -n \"$REFUSE\" ] && { echo 'unauthorized: authentication required' >&2; "
                      "exit 1; }\nexit 0\n")
    docker.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("S2V_CLUSTERS_DIR", str(tmp_path / "clusters"))
    monkeypatch.setenv("S2V_CACHE_DIR", str(tmp_path / "cache"))
    res = CliRunner().invoke(_app(), ["image", str(config)])  # RunPod has no registry of its own
    assert res.exit_code == 2 and "pass --repo" in res.output and not (tmp_path / "docker.log").exists()
    res = CliRunner().invoke(_app(), ["image", str(config), "--repo", "ghcr.io/me/s2v-batch", "--push"])
    assert res.exit_code == 0, res.output
    fp = source_fingerprint(ROOT)
    ctx = tmp_path / "clusters" / "s2v" / "image" / "context"
    ref = f"ghcr.io/me/s2v-batch:0.1.0-{fp[:12]}"
    assert f"$ {docker} build --platform linux/amd64 -t {ref} -f {ctx}/Dockerfile {ctx}" in res.output
    assert f"$ {docker} push {ref}" in res.output and f"--docker-image {ref}" in res.output
    assert (tmp_path / "docker.log").read_text().splitlines() == [
        f"build --platform linux/amd64 -t {ref} -f {ctx}/Dockerfile {ctx}", f"push {ref}"]
    assert json.loads((ctx / "dist" / "s2v-build.json").read_text())["fingerprint"] == fp
    wheel = (ctx / "dist" / "WHEEL").read_text().strip()
    assert (ctx / "dist" / wheel).is_file() and not (ctx / "dist" / "node.json").exists()
    assert "torch==2.13.0" in (ctx / "deps.txt").read_text().split()
    assert (ctx / "Dockerfile").read_text() == (ROOT / "infra/clusters/image/Dockerfile").read_text()
    monkeypatch.setenv("REFUSE", "1")
    res = CliRunner().invoke(_app(), ["image", str(config), "--repo", "ghcr.io/me/s2v-batch", "--push"])
    assert res.exit_code == 2 and "refused the credentials" in res.output and "Traceback" not in res.output


def _node_home(tmp_path: Path, baked_fp: str, shipped_fp: str, baked_ray: str = "ray==2.60.0") -> Path:
    home = tmp_path / "home"
    venv = home / "s2v-venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
    (venv / "python").chmod(0o755)
    for folder, fp, ray in (("s2v-image", baked_fp, baked_ray), ("s2v-dist", shipped_fp, "ray==2.60.0")):
        d = home / folder
        d.mkdir()
        (d / "s2v-build.json").write_text(json.dumps({"fingerprint": fp, "version": "0.1.0"}))
        (d / "constraints.txt").write_text(ray + "\n")
    (home / "s2v-dist" / "node.json").write_text(json.dumps({"metadata": {}}))
    return home


def _setup(home: Path) -> tuple[int, str]:
    """The image configs' setup commands in order, as Ray's updater runs them: the first failure stops the node."""
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    for cmd in _config("aws", docker_image=f"{ECR}:t")["setup_commands"]:
        r = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, timeout=60)
        if r.returncode:
            return r.returncode, r.stderr
    return 0, ""


def test_a_node_refuses_a_stale_image_and_sets_up_from_a_current_one(tmp_path):
    assert _config("aws", docker_image=f"{ECR}:t")["setup_commands"] == IMAGE_SETUP
    home = _node_home(tmp_path / "ok", "f" * 64, "f" * 64)
    assert _setup(home) == (0, "")
    assert (home / ".s2v" / "node.env").is_file()  # `node prepare` ran after the check
    home = _node_home(tmp_path / "stale", "a" * 64, "b" * 64)
    code, err = _setup(home)
    assert code != 0 and "stale node image" in err and "aaaaaaaaaaaa" in err and "bbbbbbbbbbbb" in err
    assert "s2v cluster image" in err and not (home / ".s2v" / "node.env").exists()
    code, err = _setup(_node_home(tmp_path / "ray", "f" * 64, "f" * 64, baked_ray="ray==2.59.0"))
    assert code != 0 and "pins ray==2.59.0, the launcher runs ray==2.60.0" in err
    foreign = _node_home(tmp_path / "foreign", "f" * 64, "f" * 64)
    (foreign / "s2v-image" / "s2v-build.json").unlink()  # an image not built by `s2v cluster image`
    code, err = _setup(foreign)
    assert code != 0 and "was not built by `s2v cluster image`" in err


@dataclass(frozen=True)
class _Obj:
    key: str


class _FlakyStore:
    def __init__(self, fail: int, error=TransientError):
        self.fail, self.error, self.downloads = fail, error, 0

    def list(self, prefix):
        return [_Obj(prefix.key + "a.bin"), _Obj(prefix.key + "sub/b.bin")]

    def download(self, obj, target):
        self.downloads += 1
        if obj.key.endswith("b.bin") and self.fail > 0:
            self.fail -= 1
            raise self.error("connection reset by peer")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"w" * 8)
        return target


def test_a_weight_copy_retries_a_bounded_number_of_times_then_fails_with_the_reason(tmp_path, monkeypatch):
    from infra.clusters import weights
    from infra.storage import base

    store = _FlakyStore(fail=2)
    monkeypatch.setattr(base, "storage_for", lambda prefix, settings=None: store)
    rec = weights.sync("s3://w/wan", tmp_path / "ok", backoff_s=0.01)
    assert rec["attempts"] == 3 and rec["files"] == 2 and store.downloads == 4  # a.bin kept, b.bin tried 3 times
    store = _FlakyStore(fail=99)
    monkeypatch.setattr(base, "storage_for", lambda prefix, settings=None: store)
    bad = weights.model_copy_dir(tmp_path / "root", "s3://w/wan")  # where ensure_local looks for this URI
    with pytest.raises(TransientError):
        weights.sync("s3://w/wan", bad, attempts=3, backoff_s=0.01)
    failed = json.loads((bad / weights.FAILED).read_text())
    assert failed["attempts"] == 3 and "connection reset" in failed["error"] and store.downloads == 4
    # the render actor's side: the reason at once, not a wait for no_worker_timeout_s
    with pytest.raises(ConfigError, match=r"failed after 3 attempt\(s\): TransientError: connection reset"):
        weights.ensure_local("s3://w/wan", cache_root=tmp_path / "root", timeout_s=5)
    store = _FlakyStore(fail=99, error=InputError)  # a wrong prefix or a hostile key: no retry
    monkeypatch.setattr(base, "storage_for", lambda prefix, settings=None: store)
    with pytest.raises(InputError):
        weights.sync("s3://w/wan", tmp_path / "input", backoff_s=5.0)
    assert json.loads((tmp_path / "input" / weights.FAILED).read_text())["attempts"] == 1

