"""Cold start choices `init` writes into a config: a pre-built node image (Ray's `docker:`; on RunPod the pods'
own image) instead of the install at boot, and an AWS EBS snapshot of the weights instead of a copy per node."""

from __future__ import annotations

import re

from core.errors import ConfigError
from infra.clusters.config import HEAD
from infra.clusters.node_image import check_ref

CONTAINER = "s2v"
WEIGHTS_MOUNT = "/mnt/s2v-weights"
WEIGHTS_LABEL = "s2v-weights"  # the filesystem label the snapshot's volume was formatted with (docs/clusters.md)
WEIGHTS_DEVICE = "/dev/sdf"  # EC2's name for it; on Nitro it shows as /dev/nvmeXn1, so it is found by label
SNAPSHOT_ID = re.compile(r"^snap-[0-9a-f]{8,17}$")
AWS_NVME = "/opt/dlami/nvme"
# The image's checks, then the node set-up: no uv, no CPython, no wheels — only what is this node's own.
IMAGE_SETUP = [
    # an image not built by `s2v cluster image` has no venv or build record where the commands look: say so
    'test -x ~/s2v-venv/bin/python -a -s ~/s2v-image/s2v-build.json || { echo "s2v: this node image was not built '
    'by \\`s2v cluster image\\` (no ~/s2v-venv or ~/s2v-image/s2v-build.json in it): build one, then set '
    'docker.image (RunPod: image_name) to it" >&2; exit 1; }',
    "~/s2v-venv/bin/python -m infra.clusters.node check-image",
    "~/s2v-venv/bin/python -m infra.clusters.node prepare",
]
IMAGE_WORKER_SETUP = ["~/s2v-venv/bin/python -m infra.clusters.node sync-weights"]
# Ray's docker runner needs docker on the host. The GPU images (DLAMI, DLVM) have it with the NVIDIA toolkit; the
# Ubuntu head does not. The chown: group membership counts only for new logins, and Ray reuses its SSH connection.
DOCKER_ON_HOST = ('command -v docker >/dev/null || { sudo apt-get update -q && sudo DEBIAN_FRONTEND=noninteractive '
                  'apt-get install -y -q docker.io && sudo usermod -aG docker "$USER" && sudo chown "$USER" '
                  '/var/run/docker.sock; }')
# On the host, before the container starts (it is bind-mounted into it read-only): the snapshot's volume by label.
MOUNT_WEIGHTS = (f"sudo mkdir -p {WEIGHTS_MOUNT} && {{ mountpoint -q {WEIGHTS_MOUNT} || sudo mount -o ro,noatime "
                 f"/dev/disk/by-label/{WEIGHTS_LABEL} {WEIGHTS_MOUNT}; }}")


def gpu_types(cfg: dict) -> list[dict]:
    return [nt for name, nt in cfg["available_node_types"].items()
            if name != cfg.get("head_node_type", HEAD) and (nt.get("resources") or {}).get("GPU")]


def use_image(cfg: dict, provider: str, ref: str) -> None:
    """Nodes run `ref` (built by `s2v cluster image`): the install steps go, the setup checks the image is the code
    being launched (infra.clusters.node check-image) and prepares the node as before."""
    check_ref(ref)
    meta = cfg["metadata"]["s2v"]
    meta["node_image"] = ref
    cfg["setup_commands"] = list(IMAGE_SETUP)
    cfg["worker_setup_commands"] = list(IMAGE_WORKER_SETUP)
    if provider == "runpod":
        for nt in cfg["available_node_types"].values():  # a pod is a container: its image is the node image
            nt["node_config"]["image_name"] = ref
        return
    gpu_options = ["--gpus all"]
    if provider == "aws":
        # the DLAMI mounts the instance's NVMe there at boot: the weights' cache stays on it inside the container
        gpu_options.append(f"-v {AWS_NVME}:{AWS_NVME}")
    cfg["docker"] = {
        "image": ref,
        "container_name": CONTAINER,
        "pull_before_run": True,
        # shared by head and workers; Ray adds --net=host, the shm size and (with nvidia-smi) --runtime=nvidia
        "run_options": ["--ulimit nofile=65536:65536"],
        # only the GPU workers: `--gpus all` fails the container on the CPU head (no NVIDIA runtime there)
        "worker_run_options": gpu_options,
    }
    cfg["initialization_commands"] = [DOCKER_ON_HOST]
    if provider == "gcp":
        # the local-SSD RAID needs root on the host, which the container has not: the cache is the boot disk here
        meta.pop("node_cache_dirs", None)


def use_weights_snapshot(cfg: dict, provider: str, snapshot: str, model_dir: str | None) -> str:
    """AWS: every GPU node gets a volume made from `snapshot` (the weights, on a filesystem labelled s2v-weights),
    mounted read-only at /mnt/s2v-weights; model_dir points there, so no node copies the weights. Returns it."""
    if provider != "aws":
        raise ConfigError("--weights-snapshot is an EBS snapshot (AWS); on GCP attach a read-only disk, on RunPod a "
                          "network volume (docs/clusters.md, Cold start)")
    if not SNAPSHOT_ID.match(snapshot):
        raise ConfigError(f"--weights-snapshot {snapshot!r} is not an EBS snapshot id (snap-0123456789abcdef0)")
    if model_dir and (model_dir.rstrip("/") + "/")[: len(WEIGHTS_MOUNT) + 1] != WEIGHTS_MOUNT + "/":
        raise ConfigError(f"--model-dir {model_dir} is not on the snapshot: with --weights-snapshot the weights are "
                          f"at {WEIGHTS_MOUNT} on every GPU node (give --model-dir {WEIGHTS_MOUNT}/SUBFOLDER or "
                          "leave it out)")
    for nt in gpu_types(cfg):
        maps = nt["node_config"].setdefault("BlockDeviceMappings", [])
        maps[:] = [m for m in maps if m.get("DeviceName") != WEIGHTS_DEVICE]
        # gp3 at its most for a volume made from a snapshot: blocks load lazily from S3 on first read (docs)
        maps.append({"DeviceName": WEIGHTS_DEVICE, "Ebs": {"SnapshotId": snapshot, "VolumeType": "gp3",
                                                           "Iops": 16000, "Throughput": 1000,
                                                           "DeleteOnTermination": True}})
        # node-type initialization_commands replace the global ones for this type: keep the docker step too
        nt["initialization_commands"] = [*(cfg.get("initialization_commands") or []), MOUNT_WEIGHTS]
    if "docker" in cfg:
        cfg["docker"]["worker_run_options"].append(f"-v {WEIGHTS_MOUNT}:{WEIGHTS_MOUNT}:ro")
    meta = cfg["metadata"]["s2v"]
    meta["weights_snapshot"] = snapshot
    meta["model_dir"] = model_dir or WEIGHTS_MOUNT
    return meta["model_dir"]
