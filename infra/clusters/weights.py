"""Node-local copies of model weights: a sync from s3:// or gs:// started at node setup, with markers a render
actor waits on (the cold-start contract described in docs/clusters.md "Cold start").

Layout: <node cache>/models/<sha256(uri)[:16]>/ holds the files under the URI prefix, then READY (written last,
JSON: source, files, bytes, seconds). A failed sync leaves FAILED (JSON: source, error) instead. A live sync holds
an exclusive flock on LOCK, so a reader tells "still syncing" from "nobody is syncing" without trusting pid files.
The node cache is $S2V_NODE_CACHE (set on every cluster node, on its NVMe when it has one), else
<settings.cache_dir>/node.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from core.errors import ConfigError, InputError, StorageError

READY, FAILED, LOCK = ".s2v-ready.json", ".s2v-failed.json", ".s2v-sync.lock"
NODE_CACHE_ENV = "S2V_NODE_CACHE"
# Tries of one weight copy, with a growing pause between them (BACKOFF_S × attempt): a blip of the store is
# survived, a store that keeps failing is a FAILED marker within about a minute of waiting.
ATTEMPTS, BACKOFF_S = 3, 15.0


def is_remote(uri: str) -> bool:
    return str(uri).startswith(("s3://", "gs://"))


def node_cache_root(settings=None) -> Path:
    env = os.environ.get(NODE_CACHE_ENV)
    if env:
        return Path(env)
    base = getattr(settings, "cache_dir", None) or Path.home() / ".cache" / "s2v-batch"
    return Path(base) / "node"


def model_copy_dir(cache_root: Path, uri: str) -> Path:
    """Where this node keeps its copy of the weights under `uri` (one folder per URI, so two models coexist)."""
    ident = str(uri).rstrip("/")
    return Path(cache_root) / "models" / hashlib.sha256(ident.encode()).hexdigest()[:16]


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def status(dest: Path, uri: str | None = None) -> str:
    """'ready', 'failed', 'syncing' (a process holds the lock) or 'absent'."""
    ready = _read_json(dest / READY)
    if ready and (uri is None or ready.get("source") == str(uri)):
        return "ready"
    if not dest.is_dir():
        return "absent"
    with open(dest / LOCK, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return "syncing"
        fcntl.flock(fh, fcntl.LOCK_UN)
    return "failed" if (dest / FAILED).exists() else "absent"


def sync(uri: str, dest: Path, settings=None, workers: int = 8, attempts: int = ATTEMPTS,
         backoff_s: float = BACKOFF_S) -> dict | None:
    """Copy every object under `uri` into dest, then write READY. Returns READY's record, or None when another
    process is already syncing into dest. Files already complete in dest are kept (downloads are atomic), so a
    retry fetches only what is missing. At most `attempts` tries, then FAILED: a node whose copy cannot finish
    says so within minutes (its render actor reports the reason) instead of leaving the run to wait for a worker
    until no_worker_timeout_s. A wrong prefix, a hostile key or a refused bucket is not retried."""
    dest.mkdir(parents=True, exist_ok=True)
    with open(dest / LOCK, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        done = _read_json(dest / READY)
        if done and done.get("source") == str(uri):
            return done
        (dest / FAILED).unlink(missing_ok=True)
        start = time.monotonic()
        for attempt in range(1, attempts + 1):
            try:
                record = {**_copy(uri, dest, settings, workers), "attempts": attempt,
                          "seconds": round(time.monotonic() - start, 1), "finished": time.time()}
                _write_json(dest / READY, record)
                return record
            except Exception as e:
                last = attempt == attempts or isinstance(e, (InputError, StorageError))
                print(f"weights sync attempt {attempt} of {attempts} failed: {type(e).__name__}: {e}"
                      + ("" if last else f"; again in {backoff_s * attempt:.0f} s"), file=sys.stderr)
                if last:
                    _write_json(dest / FAILED, {"source": str(uri), "error": f"{type(e).__name__}: {e}",
                                                "attempts": attempt, "failed": time.time()})
                    raise
                time.sleep(backoff_s * attempt)
    return None  # not reached: the last attempt returns or raises


def _copy(uri: str, dest: Path, settings, workers: int) -> dict:
    """One pass over the objects under uri: the ones not yet complete in dest are downloaded."""
    from infra.storage.base import storage_for
    from infra.storage.uri import parse

    prefix = parse(str(uri).rstrip("/") + "/")
    storage = storage_for(prefix, settings)
    objects = [o for o in storage.list(prefix) if not o.key.endswith("/")]
    if not objects:
        raise InputError(f"{uri}: no objects under this prefix; check model_dir")
    targets = {o: inside(dest, o.key[len(prefix.key):], o) for o in objects}  # every key checked first

    def fetch(obj) -> int:
        target = targets[obj]
        if not target.is_file():
            storage.download(obj, target)
        return target.stat().st_size

    with ThreadPoolExecutor(max_workers=workers) as pool:
        sizes = list(pool.map(fetch, objects))
    return {"source": str(uri), "files": len(objects), "bytes": sum(sizes)}


def inside(dest: Path, rel: str, obj) -> Path:
    """dest/rel, refusing a key that would leave dest: whoever can write under model_dir must not be able to write
    any file of the node (`../`, an absolute or empty part, a NUL)."""
    parts = rel.split("/")
    if not rel or "\0" in rel or any(p in ("", ".", "..") for p in parts):
        raise InputError(f"{obj}: refusing to copy an object whose key leaves the weights folder "
                         f"({rel!r} under the prefix); remove it from the bucket")
    target = dest.joinpath(*parts)
    if dest.resolve() not in target.resolve().parents:  # a symlink planted inside dest
        raise InputError(f"{obj}: refusing to copy outside {dest} (a link in the way)")
    return target


def ensure_local(uri: str, settings=None, cache_root: Path | None = None, timeout_s: float = 3600.0,
                 poll_s: float = 2.0) -> Path:
    """A local folder holding the weights under `uri`: the node's copy when its setup sync finished, waiting for
    a sync in progress, or syncing here when none ran (a node not set up by `s2v cluster up`, a manifest's own
    model_dir). Raises ConfigError with the sync's reason when it failed."""
    dest = model_copy_dir(cache_root or node_cache_root(settings), uri)
    deadline = time.monotonic() + timeout_s
    while True:
        st = status(dest, uri)
        if st == "ready":
            return dest
        if st == "failed":
            failed = _read_json(dest / FAILED) or {}
            tries = f" after {failed['attempts']} attempt(s)" if failed.get("attempts") else ""
            raise ConfigError(f"copying the model weights {uri} to this node failed{tries}: "
                              f"{failed.get('error', 'unknown error')}")
        if st == "absent" and sync(uri, dest, settings) is not None:
            return dest
        if time.monotonic() > deadline:
            raise ConfigError(f"the model weights {uri} were still being copied to {dest} after {timeout_s:.0f} s")
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m infra.clusters.weights", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sync", help="copy the weights under URI to DEST and write the READY marker")
    s.add_argument("uri")
    s.add_argument("dest", type=Path)
    a = ap.parse_args(argv)
    from infra.storage.base import env_settings

    try:
        rec = sync(a.uri, a.dest, env_settings())
    except Exception as e:  # noqa: BLE001 — the FAILED marker holds the reason; the log gets it too
        print(f"weights sync failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(rec) if rec else "another process is syncing this folder")
    return 0


if __name__ == "__main__":
    sys.exit(main())
