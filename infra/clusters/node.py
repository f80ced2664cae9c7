"""Node set-up steps run by a cluster's setup commands (`python -m infra.clusters.node ...`).

Everything a node needs from the cluster config arrives as data in ~/s2v-dist/node.json (written by `s2v
cluster up` beside the wheel), never as text spliced into a shell command: the only shell file written here,
~/.s2v/node.env, holds shlex-quoted values. Commands:
  prepare          choose the weight cache (local NVMe when mounted), write ~/.s2v/node.env, source it from .bashrc
  sync-weights     start copying metadata.s2v.model_dir to the cache in the background (GPU workers)
  check-image      refuse a node image (`s2v cluster image`) that does not hold the code `up` shipped
  mount-local-ssd  RAID-0, format and mount unformatted GCP local NVMe SSDs at /mnt/disks/s2v (run as root)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from infra.clusters.weights import NODE_CACHE_ENV, is_remote, model_copy_dir, status

NODE_JSON = "node.json"
ENV_FILE = Path(".s2v") / "node.env"
SOURCE_LINE = "[ -f ~/.s2v/node.env ] && . ~/.s2v/node.env  # s2v-batch: node environment"
KEYS_FILE = Path(".s2v") / "objstore.env"  # object-store keys a provider mounted (RunPod: runpod/secrets.py)
# `if`, not `[ -f ] &&`: node.env's own status must be 0 without the file (start commands run `. node.env && …`)
KEYS_SOURCE = "if [ -f ~/.s2v/objstore.env ]; then . ~/.s2v/objstore.env; fi"
STORE_SETTINGS = {"s3_endpoint_url": "S2V_S3_ENDPOINT_URL", "s3_region": "S2V_S3_REGION"}  # metadata.s2v → env
IMAGE_DIR = Path("s2v-image")  # in a node image: the record of the wheel baked into it (infra/clusters/image/)
LOCAL_SSD_GLOB = "google-local-nvme-ssd-*"
LOCAL_SSD_MOUNT = Path("/mnt/disks/s2v")


def node_info(home: Path) -> dict:
    path = home / "s2v-dist" / NODE_JSON
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"cannot read {path} (written by `s2v cluster up`): {e}") from None


def _usable(path: Path) -> bool:
    """Create path (asking sudo to hand it to us when its parent is root's) and check we can write there."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except PermissionError:
        # argv, not a shell string: the path is data from the config
        r = subprocess.run(["sudo", "-n", "install", "-d", "-o", str(os.getuid()), "-g", str(os.getgid()), str(path)],
                           capture_output=True)
        if r.returncode != 0:
            return False
    except OSError:
        return False
    return os.access(path, os.W_OK)


def cache_root(candidates: list[str], home: Path) -> Path:
    """The first configured local disk that is mounted and writable, else the home volume."""
    for c in candidates:
        mount = Path(os.path.expanduser(c))
        if mount.is_dir() and _usable(mount / "s2v"):
            return mount / "s2v"
    fallback = home / ".s2v" / "cache"
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


def env_lines(values: dict[str, str], path_prefix: str) -> list[str]:
    lines = ["# written by `python -m infra.clusters.node prepare`; sourced before `ray start`",
             f'export PATH={shlex.quote(path_prefix)}:"$PATH"']
    lines += [f"export {k}={shlex.quote(v)}" for k, v in values.items()]
    return lines


def store_values(meta: dict) -> dict[str, str]:
    """The object store's endpoint and region from the config (R2, MinIO: the weight sync and the runs need them)."""
    return {var: str(meta[key]) for key, var in STORE_SETTINGS.items() if meta.get(key)}


def prepare(home: Path | None = None) -> Path:
    home = Path(home or Path.home())
    meta = node_info(home).get("metadata") or {}
    root = cache_root(list(meta.get("node_cache_dirs") or []), home)
    env = home / ENV_FILE
    env.parent.mkdir(parents=True, exist_ok=True)
    tmp = env.with_name(env.name + ".tmp")
    lines = env_lines({NODE_CACHE_ENV: str(root), **store_values(meta)}, str(Path(sys.executable).parent))
    tmp.write_text("\n".join(lines + [KEYS_SOURCE]) + "\n")
    os.replace(tmp, env)
    bashrc = home / ".bashrc"
    text = bashrc.read_text() if bashrc.exists() else ""
    if SOURCE_LINE not in text:
        # First line: Ubuntu's .bashrc returns early for non-interactive shells, and `ray` must be on PATH in those.
        bashrc.write_text(SOURCE_LINE + "\n" + text)
    print(f"node cache: {root}; environment: {env}")
    return root


def sync_weights(home: Path | None = None) -> Path | None:
    """Start the weight copy detached from this SSH session; the render actor waits on its READY marker."""
    home = Path(home or Path.home())
    model = (node_info(home).get("metadata") or {}).get("model_dir")
    if not model or not is_remote(model):
        print("no remote model_dir: nothing to copy")
        return None
    root = Path(os.environ.get(NODE_CACHE_ENV) or env_file_values(home / ENV_FILE).get(NODE_CACHE_ENV)
                or cache_root([], home))
    dest = model_copy_dir(root, model)
    if status(dest, model) in ("ready", "syncing"):
        print(f"weights {model}: already {status(dest, model)} at {dest}")
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    log = dest.with_name(dest.name + ".log")
    with open(log, "ab") as out:
        subprocess.Popen([sys.executable, "-m", "infra.clusters.weights", "sync", model, str(dest)],
                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                         env=sync_env(home, root))
    print(f"weights {model}: copying to {dest} in the background (log: {log})")
    return dest


def sync_env(home: Path, root: Path) -> dict[str, str]:
    """The weight sync's environment: setup commands do not source node.env, so the cache, the store's endpoint
    and the mounted object-store keys are added here (the keys only when the provider mounted them)."""
    return {**os.environ, **env_file_values(home / ENV_FILE), **env_file_values(home / KEYS_FILE),
            NODE_CACHE_ENV: str(root)}


def env_file_values(path: Path) -> dict[str, str]:
    """NAME → value of a file of `export NAME=value` lines, read the way bash would (written with shlex.quote)."""
    out: dict[str, str] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        name, eq, rest = line.removeprefix("export ").partition("=")
        if not line.startswith("export ") or not eq or name == "PATH":
            continue
        try:
            out[name] = shlex.split(rest)[0] if rest else ""
        except (ValueError, IndexError):
            continue
    return out


def check_image(home: Path | None = None) -> None:
    """The image's build record against the one `up` shipped: a different fingerprint (other code) or Ray pin
    (another launcher) would run something else than what was launched, so the node's setup stops here."""
    from infra.clusters.ship import CONSTRAINTS, read_record

    home = Path(home or Path.home())
    baked, shipped = read_record(home / IMAGE_DIR), read_record(home / "s2v-dist")
    if not baked or not shipped:
        raise SystemExit(f"s2v: cannot compare the node image with the launched code: "
                         f"{'~/s2v-image' if not baked else '~/s2v-dist'}/s2v-build.json is missing or unreadable")

    def pins(folder: Path) -> str:
        try:
            return (folder / CONSTRAINTS).read_text().strip()
        except OSError:
            return ""

    stale = []
    if baked.get("fingerprint") != shipped.get("fingerprint"):
        stale.append(f"it holds s2v-batch {baked.get('version')} fingerprint {str(baked.get('fingerprint'))[:12]}, "
                     f"the launched checkout is {shipped.get('version')} fingerprint "
                     f"{str(shipped.get('fingerprint'))[:12]}")
    if pins(home / IMAGE_DIR) != pins(home / "s2v-dist"):
        stale.append(f"it pins {pins(home / IMAGE_DIR) or 'nothing'}, the launcher runs {pins(home / 's2v-dist')}")
    if stale:
        raise SystemExit("s2v: stale node image: " + "; ".join(stale) + ". Rebuild it with `s2v cluster image CONFIG "
                         "--push` and put the new reference in the config (docker.image; RunPod: image_name), or "
                         "`s2v cluster init --docker-image REF --force`")
    print(f"node image: s2v-batch {baked.get('version')} ({str(baked.get('fingerprint'))[:12]}), the launched code")


def mount_local_ssd(dev_dir: Path = Path("/dev/disk/by-id"), mount: Path = LOCAL_SSD_MOUNT) -> Path | None:
    """GCP A3/A2 Ultra come with local NVMe SSDs that nobody formats: stripe them and mount once per boot."""
    devices = sorted(str(p) for p in dev_dir.glob(LOCAL_SSD_GLOB))
    if not devices:
        print("no local SSDs")
        return None
    if subprocess.run(["mountpoint", "-q", str(mount)]).returncode == 0:
        return mount
    dev = devices[0]
    if len(devices) > 1 and shutil.which("mdadm") is None:
        print(f"mdadm is missing: using {dev} alone of {len(devices)} local SSDs")
    elif len(devices) > 1:
        dev = "/dev/md/s2v"
        subprocess.run(["mdadm", "--create", dev, "--level=0", f"--raid-devices={len(devices)}", *devices,
                        "--force", "--run"], check=True)
    subprocess.run(["mkfs.ext4", "-F", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1", dev], check=True)
    mount.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-o", "discard,defaults", dev, str(mount)], check=True)
    os.chmod(mount, 0o1777)
    print(f"mounted {', '.join(devices)} at {mount}")
    return mount


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m infra.clusters.node", description=__doc__.splitlines()[0])
    ap.add_argument("cmd", choices=["prepare", "sync-weights", "check-image", "mount-local-ssd"])
    a = ap.parse_args(argv)
    {"prepare": prepare, "sync-weights": sync_weights, "check-image": check_image,
     "mount-local-ssd": mount_local_ssd}[a.cmd]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
