"""Content identity of a weights folder for the job key: per-file SHA-256, computed once per file version and cached."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CACHE_NAME = "weights-sha256.json"
_LOCK = threading.Lock()
_MEMO: dict[str, str] = {}  # "realpath|size|mtime_ns|inode" -> sha256, for this process


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)  # hashlib releases the GIL on large blocks: shards hash in parallel threads
    return h.hexdigest()


def _load_cache(cache_file: Path | None) -> dict[str, str]:
    if cache_file is None:
        return {}
    try:
        data = json.loads(cache_file.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # a missing or damaged cache only costs a re-hash


def _save_cache(cache_file: Path, entries: dict[str, str]) -> None:
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fresh_paths = {k.rsplit("|", 3)[0] for k in entries}
        # a file's older versions are dropped, so the cache holds one entry per file, not one per edit
        merged = {k: v for k, v in _load_cache(cache_file).items() if k.rsplit("|", 3)[0] not in fresh_paths}
        merged.update(entries)
        with tempfile.NamedTemporaryFile("w", dir=cache_file.parent, delete=False, suffix=".tmp") as tmp:
            json.dump(merged, tmp, indent=0, sort_keys=True)
        os.replace(tmp.name, cache_file)  # atomic: a concurrent planner reads the old or the new cache, never half
    except OSError:
        pass  # a read-only cache folder only costs re-hashing next time


def file_digests(paths: list[Path], cache_dir: Path | None = None, threads: int = 4) -> dict[Path, str]:
    """SHA-256 of each file, from the cache when its path, size, mtime and inode are unchanged (like make and
    rsync: a file rewritten in place with its old size and mtime restored is not noticed)."""
    cache_file = Path(cache_dir) / CACHE_NAME if cache_dir is not None else None
    stamps = {p: _stamp(p) for p in paths}
    with _LOCK:
        if any(s not in _MEMO for s in stamps.values()):
            _MEMO.update({k: v for k, v in _load_cache(cache_file).items() if k in stamps.values()})
        todo = [p for p, s in stamps.items() if s not in _MEMO]
    if todo:
        with ThreadPoolExecutor(max_workers=max(1, min(threads, len(todo)))) as ex:
            fresh = dict(zip((stamps[p] for p in todo), ex.map(_sha256, todo)))
        with _LOCK:
            _MEMO.update(fresh)
            if cache_file is not None:
                _save_cache(cache_file, fresh)
    return {p: _MEMO[s] for p, s in stamps.items()}


def folder_fingerprint(root: Path, files: list[str], cache_dir: Path | None = None) -> str:
    """One hash over the named files of a weights folder: each relative path, size and SHA-256 (the index and
    config JSON included), so two folders of the same name with different weights differ, and any changed file
    changes it. Missing files are named in it too (the render fails on them anyway)."""
    root = Path(root)
    present = [root / f for f in sorted(set(files)) if (root / f).is_file()]
    digests = file_digests(present, cache_dir)
    h = hashlib.sha256()
    for rel in sorted(set(files)):
        p = root / rel
        h.update(f"{rel}\0{p.stat().st_size}\0{digests[p]}\n".encode() if p in digests else f"{rel}\0missing\n".encode())
    return h.hexdigest()[:32]
