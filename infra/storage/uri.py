"""URI parsing and joining: plain paths, file://, s3://, gs:// — no I/O but resolving local paths (cached)."""

from __future__ import annotations

import os
import posixpath
from functools import lru_cache
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from core.errors import InputError

SCHEMES = ("file", "s3", "gs")


@dataclass(frozen=True)
class Uri:
    scheme: str  # "file", "s3" or "gs"
    bucket: str  # "" for file
    key: str  # absolute path for file, object key otherwise

    def __str__(self) -> str:
        if self.scheme == "file":
            return self.key
        return f"{self.scheme}://{self.bucket}/{self.key}"

    @property
    def name(self) -> str:
        return posixpath.basename(self.key.rstrip("/"))

    def join(self, *parts: str) -> "Uri":
        key = self.key
        for p in parts:
            key = posixpath.join(key, p) if key else p
        return Uri(self.scheme, self.bucket, key)

    def parent(self) -> "Uri":
        return Uri(self.scheme, self.bucket, posixpath.dirname(self.key.rstrip("/")))


def parse(value: str, base: str | None = None) -> Uri:
    """Parse a location; relative paths resolve against `base` (a folder path or URI)."""
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"empty location {value!r}")
    value = value.strip()
    if "://" in value:
        u = urlparse(value)
        scheme = u.scheme.lower()
        if scheme not in SCHEMES:
            raise InputError(f"unsupported URI scheme '{scheme}' in {value!r}; use a path, file://, s3:// or gs://")
        if scheme == "file":
            return Uri("file", "", _real(unquote(u.path), ""))
        if not u.netloc:
            raise InputError(f"URI {value!r} has no bucket; expected {scheme}://BUCKET/KEY")
        key = u.path.lstrip("/")
        if ".." in key.split("/"):
            raise InputError(f"URI {value!r} contains '..'")
        return Uri(scheme, u.netloc, key)
    if base is not None and not Path(value).expanduser().is_absolute():
        b = parse(base)
        if b.scheme != "file":
            key = posixpath.normpath(posixpath.join(b.key, value))
            # '..' may move between folders of the bucket, never above its root (normpath would keep a
            # literal '../x' key, which S3 and GCS store as is)
            if key == ".." or key.startswith("../"):
                raise InputError(f"{value!r} climbs above the root of bucket {b.scheme}://{b.bucket}/ "
                                 f"(relative to {b}); write a path inside the bucket or a full URI")
            return Uri(b.scheme, b.bucket, "" if key == "." else key)
        return Uri("file", "", _real(str(Path(b.key) / value), ""))
    path = os.path.expanduser(value)  # before the cache: HOME may change within a process
    return Uri("file", "", _real(path, "" if os.path.isabs(path) else os.getcwd()))


@lru_cache(maxsize=16384)
def _real(path: str, cwd: str) -> str:
    """The resolved form of a local path (cwd is part of the key for relative ones). Cached: a 10,000-row catalog
    names the same few files tens of thousands of times, and each resolve is a syscall per path component."""
    return str(Path(path).resolve())


def clear_cache() -> None:
    """Forget resolved paths (a test that moves a symlink, or a long-lived process told that paths changed)."""
    _real.cache_clear()


def folder_of(location: str) -> str:
    """The folder a manifest lives in, as a URI string, for resolving relative paths."""
    u = parse(location)
    return str(u.parent())
