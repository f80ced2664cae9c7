"""The storage interface every backend (local, S3, GCS) implements, plus the lazy registry by scheme."""

from __future__ import annotations

import importlib
import mimetypes
import os
import posixpath
import re
import secrets
import threading
import time
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


# Temp naming contract, the same on every storage: `<same dir>/.tmp-<12 hex>-<final name>.partial`. The `.tmp-`
# prefix keeps list() from showing it; the `.partial` suffix never matches the final suffix, so a bucket
# notification filtered on `.mp4` or `.json` never fires for an object still being written.
TEMP_PREFIX = ".tmp-"
TEMP_SUFFIX = ".partial"
# Current names, the S3 temp keys of earlier versions (`.tmp-<12 hex>-<name>`) and write probes: ours anywhere.
# tempfile.mkstemp names of earlier local writes (`.tmp-` + 8 chars) are ours only where s2v alone writes (inside a
# work area's own folders): anywhere else `.tmp-settings` is as likely a user's.
_TEMP_RE = re.compile(r"\.tmp-(?:[0-9a-f]{12}-.+|write-probe-[0-9a-z]+)\Z", re.S)
_LEGACY_TEMP_RE = re.compile(r"\.tmp-[a-z0-9_]{8}\Z")


def temp_name(final_name: str) -> str:
    """A fresh temp name for `final_name`, in the contract's form."""
    return f"{TEMP_PREFIX}{secrets.token_hex(6)}-{final_name}{TEMP_SUFFIX}"


def is_temp_name(name: str, legacy: bool = False) -> bool:
    """True for a file or object name (or a whole key/path) that s2v wrote as a temp and may clean up; with
    legacy, the 8-character names of earlier versions too (only where nothing but s2v writes)."""
    base = posixpath.basename(str(name))
    return bool(_TEMP_RE.match(base) or (legacy and _LEGACY_TEMP_RE.match(base)))


def is_stale_temp(name: str, modified: float, older_than_s: float, now: float | None = None,
                  legacy: bool = False) -> bool:
    """A temp left behind (a killed upload, a crashed process): a temp name whose last write, by the store's own
    timestamp (`modified`, epoch seconds), is older than older_than_s. Live writers rewrite or finish well within
    any sensible threshold; an unknown timestamp must be passed as "now" (never old)."""
    return is_temp_name(name, legacy) and (time.time() if now is None else now) - modified > older_than_s


# Types a browser or CDN needs to show a file instead of downloading it; text types carry their charset.
_TYPES = {
    "mp4": "video/mp4", "m4a": "audio/mp4", "wav": "audio/wav", "jpg": "image/jpeg", "jpeg": "image/jpeg",
    "png": "image/png", "json": "application/json", "html": "text/html; charset=utf-8",
    "txt": "text/plain; charset=utf-8", "csv": "text/csv; charset=utf-8", "yaml": "application/yaml",
    "yml": "application/yaml", "npy": "application/octet-stream",
    # delivery (docs/delivery.md): captions and HLS playlists/segments, so players and CDNs take them as such
    "vtt": "text/vtt; charset=utf-8", "srt": "application/x-subrip", "m3u8": "application/vnd.apple.mpegurl",
    "m4s": "video/iso.segment", "ts": "video/mp2t",
}


def content_type_for(name: str) -> str:
    """The Content-Type for a final name, from its extension (`.partial` temps take their final name's)."""
    base = posixpath.basename(str(name))
    if base.endswith(TEMP_SUFFIX) and base.startswith(TEMP_PREFIX):
        base = base[len(TEMP_PREFIX) + 13:-len(TEMP_SUFFIX)]
    ext = base.rsplit(".", 1)[-1].lower() if "." in base else ""
    if ext in _TYPES:
        return _TYPES[ext]
    guessed = mimetypes.guess_type(base)[0] or "application/octet-stream"
    return guessed + ("; charset=utf-8" if guessed.startswith("text/") else "")


class Storage(ABC):
    """Object-store semantics over one scheme. Keys are Uri objects of that scheme.

    Retries live here, not with the callers: every operation of a network storage (S3, GCS) runs under the
    "storage" policy of core.retry and raises only once it gives up (a StorageError or InputError that names the
    URI); a local filesystem has nothing transient to retry. Callers never wrap a storage call in a retry of their
    own, which multiplied the attempts (8 × 8 against a failing endpoint) and was forgotten at some call sites."""

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

    # conditional writes, for leases: each returns the new version token, or None when the condition failed
    @abstractmethod
    def create_exclusive(self, uri: Uri, data: bytes) -> str | None:
        """Create a small object only if nothing exists under that name (atomic against other creators)."""

    @abstractmethod
    def read_versioned(self, uri: Uri) -> tuple[bytes, str] | None:
        """(content, version token) of a small object, or None when it does not exist."""

    @abstractmethod
    def replace_if(self, uri: Uri, data: bytes, version: str) -> str | None:
        """Replace a small object only if it still has `version` (compare-and-swap)."""

    def publish(self, files: list[tuple[Path, Uri]]) -> None:
        """Publish a job's files in order, each atomically; callers pass the sidecar last."""
        for src, dest in files:
            self.upload(src, dest)

    def share_url(self, uri: Uri, expires_s: int = 7 * 24 * 3600) -> str:
        """A URL a person can open (presigned/signed for clouds)."""
        return str(uri)

    def check_writable(self, prefix: Uri) -> None:
        """Raise StorageError/InputError if objects cannot be created under prefix."""
        probe = prefix.join(temp_name("write-probe"))
        self.write_bytes(probe, b"ok")
        self.delete(probe)


def fill_atomically(dest: Path, fill, *, fsync: bool = False, mode: int | None = None) -> None:
    """Have fill(tmp_path) write a temp file beside dest, then rename it over dest: dest is whole or absent.

    mode: the permission bits dest gets (None leaves the temp file's private 0600). Set on the temp before the
    rename, so the final name never appears with other bits than these."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = str(dest.parent / temp_name(dest.name))
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            break
        except FileExistsError:  # 48 random bits collided: draw again
            continue
    try:
        fill(tmp)
        if mode is not None:
            os.chmod(tmp, mode)  # fill may have replaced the file (boto3 downloads rename their own temp onto it)
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


_umask_lock = threading.Lock()


def process_umask() -> int:
    """This process's umask, read without changing it (os.umask would, briefly, for every thread)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:  # no /proc (macOS): the set-and-restore dance, serialised at least within our own threads
        old = os.umask(0o022)
        os.umask(old)
    return old


def file_mode(settings) -> int:
    """Permission bits for published files: `storage_file_mode` "umask" (0666 & ~umask, i.e. what any other
    program creating the file would give it: 0644 under umask 022) or an octal string such as "0640"."""
    value = str(getattr(settings, "storage_file_mode", None) or "umask") if settings is not None else "umask"
    if value == "umask":
        return 0o666 & ~process_umask()
    return int(value.removeprefix("0o"), 8)


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
