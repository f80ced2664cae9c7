"""Node-local input cache: each remote input object is downloaded once per node, keyed by its content tag."""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
import time
from pathlib import Path

from infra.storage.base import storage_for
from infra.storage.uri import Uri, parse
from core.errors import InputError

# Within one process (a render actor) the same input is asked for once per clip; remembering the answer for a
# while saves even the metadata round trip. Short enough that a re-uploaded input is seen by the next run.
MEMO_TTL_S = 300.0
_memo: dict[tuple[str, str], tuple[float, Path]] = {}
_memo_lock = threading.Lock()


def cache_root(settings) -> Path:
    root = getattr(settings, "cache_dir", None) if settings is not None else None
    return Path(root or Path.home() / ".cache" / "s2v-batch") / "inputs"


def _entry_dir(root: Path, uri: Uri, tag: str | None) -> Path:
    """Content-addressed when the store gives a content tag (same bytes at two URIs share one entry)."""
    ident = f"tag:{tag}" if tag else f"uri:{uri}"
    digest = hashlib.sha256(ident.encode()).hexdigest()
    return root / digest[:2] / digest


def fetch(uri_str: str, settings=None) -> Path:
    """A local path holding the object's bytes; file:// and plain paths are returned in place, never copied."""
    uri = parse(uri_str) if isinstance(uri_str, str) else uri_str
    if uri.scheme == "file":
        path = Path(uri.key)
        if not path.is_file():
            raise InputError(f"{uri}: no such file; check the path (relative paths resolve against the manifest's folder)")
        return path

    root = cache_root(settings)
    memo_key = (str(uri), str(root))
    now = time.monotonic()
    with _memo_lock:
        hit = _memo.get(memo_key)
    if hit and now - hit[0] < MEMO_TTL_S and hit[1].is_file():
        return hit[1]

    storage = storage_for(uri, settings)
    tag_of = getattr(storage, "version_tag", None)
    tag = tag_of(uri) if tag_of else None  # raises InputError/StorageError naming the URI when it is missing
    entry = _entry_dir(root, uri, tag)
    # keep the object's own name: tools that sniff formats by extension (ffmpeg, PIL) still work
    dest = entry / (uri.name or "object")
    if dest.is_file():
        _touch(dest)
    else:
        entry.mkdir(parents=True, exist_ok=True)
        # several actors on one node may ask at once: one downloads, the others wait and reuse
        with open(entry / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if not dest.is_file():
                    storage.download(uri, dest)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    with _memo_lock:
        _memo[memo_key] = (now, dest)
    return dest


def forget() -> None:
    """Drop the in-process memo (tests, or a long-lived actor told that inputs changed)."""
    with _memo_lock:
        _memo.clear()


def _touch(path: Path) -> None:
    """Mark a cache hit: prune goes by last use, and many disks are mounted noatime."""
    try:
        os.utime(path)
    except OSError:
        pass


def prune(settings, older_than_s: float = 7 * 24 * 3600, dry_run: bool = False,
          now: float | None = None) -> list[tuple[Path, int]]:
    """Cache entries not used for older_than_s (`s2v gc --cache`): (path, bytes) of each, removed unless dry_run.
    An entry's folder goes with its last file; a download in progress (a fresh temp file) is left alone."""
    root = cache_root(settings)
    if not root.is_dir():
        return []
    cutoff, found = (now or time.time()) - older_than_s, []
    for path in sorted(root.glob("*/*/*")):
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        if path.name == ".lock" or not path.is_file() or max(st.st_atime, st.st_mtime) >= cutoff:
            continue
        found.append((path, st.st_size))
        if not dry_run:
            path.unlink(missing_ok=True)
            left = [p for p in path.parent.iterdir() if p.name != ".lock"]
            if not left:
                (path.parent / ".lock").unlink(missing_ok=True)
                try:
                    path.parent.rmdir()
                except OSError:
                    pass
    return found
