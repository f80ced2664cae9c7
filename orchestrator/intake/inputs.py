"""A job's input files on this machine: a location as a local path (remote objects through the node's cache) and
the content digest that keys everything derived from it."""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

from infra.storage import uri as uris

_BLOCK = 1 << 20


def local_path(location: str, settings) -> Path:
    """A local file for an input location; remote objects go through the content-addressed cache."""
    u = uris.parse(location)
    if u.scheme == "file":
        return Path(u.key)
    from infra.storage.cache import fetch

    return fetch(str(u), settings)


@lru_cache(maxsize=4096)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: Path | str) -> str:
    """The file's SHA-256, read once per file version (path, size, mtime): a catalog names the same presenter
    photo on thousands of rows, and staging, planning and the post step all ask."""
    st = os.stat(path)
    return _sha256_cached(str(path), st.st_size, st.st_mtime_ns)


def clear_caches() -> None:
    """Forget every remembered digest (tests that rewrite a file within one mtime tick)."""
    _sha256_cached.cache_clear()
