"""The storage interface every backend (local, S3, GCS) implements, plus the lazy registry by scheme."""

from __future__ import annotations

import importlib
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from infra.storage.uri import Uri, parse

# scheme → "module:Class"; imported on first use so boto3/google libs stay off the light path
REGISTRY: dict[str, str] = {
    "file": "infra.storage.local:LocalStorage",
    "s3": "infra.storage.s3:S3Storage",
    "gs": "infra.storage.gcs:GCSStorage",
}


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object as a listing sees it (for `s2v gc`: what is old, and how big)."""

    uri: Uri
    size: int  # bytes
    mtime: float  # last modified, seconds since the epoch


class Storage(ABC):
    """Object-store semantics over one scheme. Keys are Uri objects of that scheme."""

    scheme: str = ""

    def __init__(self, settings=None):
        self.settings = settings

    # reads
    @abstractmethod
    def read_bytes(self, uri: Uri) -> bytes: ...

    @abstractmethod
    def download(self, uri: Uri, dest: Path) -> Path:
        """Copy the object to a local file (atomically: dest is complete or absent)."""

    @abstractmethod
    def exists(self, uri: Uri) -> bool: ...

    @abstractmethod
    def list(self, prefix: Uri) -> Iterator[Uri]:
        """Every object under prefix (recursive)."""

    def list_info(self, prefix: Uri) -> Iterator[ObjectInfo]:
        """Every object under prefix with its size and age, temp objects included (they are what gc looks for)."""
        raise NotImplementedError(f"{type(self).__name__} cannot list object details")

    # writes
    @abstractmethod
    def write_bytes(self, uri: Uri, data: bytes) -> None:
        """Write an object atomically: readers see the old state or the whole new object."""

    @abstractmethod
    def upload(self, src: Path, uri: Uri) -> None:
        """Upload a local file atomically (the final key never holds a partial object)."""

    @abstractmethod
    def delete(self, uri: Uri) -> None:
        """Delete an object; deleting a missing one is not an error."""

    def publish(self, files: list[tuple[Path, Uri]]) -> None:
        """Publish a job's files in order, each atomically; callers pass the sidecar last."""
        for src, dest in files:
            self.upload(src, dest)

    def share_url(self, uri: Uri, expires_s: int = 7 * 24 * 3600) -> str:
        """A URL a person can open (presigned/signed for clouds)."""
        return str(uri)

    def check_writable(self, prefix: Uri) -> None:
        """Raise StorageError/InputError if objects cannot be created under prefix."""
        probe = prefix.join(".s2v-write-probe")
        self.write_bytes(probe, b"ok")
        self.delete(probe)


def fill_atomically(dest: Path, fill, prefix: str = ".tmp-", fsync: bool = False) -> None:
    """Have fill(tmp_path) write a temp file beside dest, then rename it over dest: dest is whole or absent."""
    import os
    import tempfile

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=dest.parent)
    os.close(fd)
    try:
        fill(tmp)
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def env_settings():
    """Settings from S2V_* env vars, for callers that have none (a manifest read by URI)."""
    from core.settings import Settings

    try:
        return Settings()
    except Exception:  # noqa: BLE001 — a broken S2V_* env var must not hide the storage error the caller asked for
        return None


def as_uri(u: Uri | str) -> Uri:
    return u if isinstance(u, Uri) else parse(u)


# Storage-relevant settings only: two Settings that agree on these share one instance (boto3/GCS clients are
# expensive to build), and a changed endpoint or credentials file never reuses a stale client.
_STORAGE_FIELD_PREFIXES = ("s3_", "gcs_", "storage_")
_MAX_INSTANCES = 16
_instances: OrderedDict[tuple, Storage] = OrderedDict()
_lock = threading.Lock()


def _fingerprint(settings) -> tuple:
    if settings is None:
        return ()
    names = getattr(type(settings), "model_fields", {})
    return tuple((n, repr(getattr(settings, n))) for n in sorted(names) if n.startswith(_STORAGE_FIELD_PREFIXES))


def storage_for(location: str | Uri, settings=None) -> Storage:
    """The storage backend for a location's scheme: one instance per scheme and storage configuration, kept in
    a small LRU keyed by the settings' storage values (never by object identity, which Python reuses)."""
    u = location if isinstance(location, Uri) else parse(location)
    key = (u.scheme, _fingerprint(settings))
    with _lock:
        st = _instances.get(key)
        if st is not None:
            _instances.move_to_end(key)
            return st
    mod, _, cls = REGISTRY[u.scheme].partition(":")
    st = getattr(importlib.import_module(mod), cls)(settings)
    with _lock:
        st = _instances.setdefault(key, st)
        while len(_instances) > _MAX_INSTANCES:
            _instances.popitem(last=False)
    return st
