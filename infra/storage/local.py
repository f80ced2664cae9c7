"""Local filesystem storage (paths and file://): atomic writes by temp file + fsync + rename, with the files'
permission bits from `storage_file_mode`, and lock-protected conditional writes for leases."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
from pathlib import Path
from typing import Iterator

from infra.storage.base import ObjectInfo, Storage, file_mode, fill_atomically
from infra.storage.uri import Uri
from core.errors import StorageError


class LocalStorage(Storage):
    scheme = "file"

    def read_bytes(self, uri: Uri) -> bytes:
        try:
            return Path(uri.key).read_bytes()
        except FileNotFoundError:
            raise StorageError(f"{uri}: no such file") from None
        except OSError as e:
            raise StorageError(f"{uri}: cannot read ({e.strerror})") from None

    def download(self, uri: Uri, dest: Path) -> Path:
        self._atomic(dest, lambda tmp: shutil.copyfile(uri.key, tmp))
        return dest

    def exists(self, uri: Uri) -> bool:
        return Path(uri.key).is_file()

    def list(self, prefix: Uri) -> Iterator[Uri]:
        root = Path(prefix.key)
        if not root.is_dir():
            return
        for dirpath, _, files in os.walk(root):
            for f in sorted(files):
                if not f.startswith(".tmp-"):
                    yield Uri("file", "", str(Path(dirpath) / f))

    def list_info(self, prefix: Uri) -> Iterator[ObjectInfo]:
        root = Path(prefix.key)
        if not root.is_dir():
            return
        for dirpath, _, files in os.walk(root):
            for f in sorted(files):
                p = Path(dirpath) / f
                try:
                    st = p.stat()
                except FileNotFoundError:  # removed while we walked
                    continue
                yield ObjectInfo(Uri("file", "", str(p)), st.st_size, st.st_mtime)

    def write_bytes(self, uri: Uri, data: bytes) -> None:
        self._atomic(Path(uri.key), lambda tmp: Path(tmp).write_bytes(data))

    def upload(self, src: Path, uri: Uri) -> None:
        if Path(src).resolve() == Path(uri.key).resolve():
            return
        self._atomic(Path(uri.key), lambda tmp: shutil.copyfile(src, tmp))

    def check_writable(self, prefix: Uri) -> None:
        """Files could be created under prefix — checked without creating anything (`validate` and `plan` leave
        no folder behind): the nearest existing ancestor must be a folder this process may write and enter."""
        probe = Path(prefix.key)
        while not (probe.exists() or probe.is_symlink()) and probe.parent != probe:
            probe = probe.parent
        if not probe.is_dir():
            raise StorageError(f"{probe} is a file, not a folder; choose another output folder")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise StorageError(f"{probe}: no permission to create files there; check the folder's owner and mode")

    def delete(self, uri: Uri) -> None:
        try:
            Path(uri.key).unlink()
        except FileNotFoundError:
            pass

    # -- conditional writes (leases) ------------------------------------------------------------------------
    # Every conditional operation holds a flock on the object's folder: the check and the write are one step for
    # every s2v process on this machine (and across NFS clients, where flock is emulated with POSIX locks).

    @contextlib.contextmanager
    def _folder_lock(self, path: Path, exclusive: bool):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    @staticmethod
    def _version(path: Path, data: bytes) -> str:
        """Inode + mtime + content digest: a rename-replaced file never keeps the token of the one it replaced."""
        st = path.stat()
        return f"{st.st_ino}-{st.st_mtime_ns}-{hashlib.sha256(data).hexdigest()[:16]}"

    def create_exclusive(self, uri: Uri, data: bytes) -> str | None:
        path = Path(uri.key)
        try:
            with self._folder_lock(path, exclusive=True):
                try:
                    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, file_mode(self.settings))
                except FileExistsError:
                    return None
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                return self._version(path, data)
        except OSError as e:
            raise StorageError(f"{uri}: cannot create ({e.strerror}); check the folder is writable") from None

    def read_versioned(self, uri: Uri) -> tuple[bytes, str] | None:
        path = Path(uri.key)
        if not path.parent.is_dir():
            return None
        with self._folder_lock(path, exclusive=False):
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                return None
            return data, self._version(path, data)

    def replace_if(self, uri: Uri, data: bytes, version: str) -> str | None:
        path = Path(uri.key)
        with self._folder_lock(path, exclusive=True):
            try:
                now = self._version(path, path.read_bytes())
            except FileNotFoundError:
                return None
            if now != version:
                return None
            self._atomic(path, lambda tmp: Path(tmp).write_bytes(data))
            return self._version(path, data)

    def _atomic(self, dest: Path, fill) -> None:
        """Temp file in the destination folder, fsync, rename over the final name; OS errors name the path."""
        try:
            fill_atomically(dest, fill, fsync=True, mode=file_mode(self.settings))
        except FileNotFoundError as e:
            raise StorageError(f"{e.filename}: no such file") from None
        except OSError as e:
            raise StorageError(f"{dest}: cannot write there ({e.strerror}); check the folder exists and is "
                               "writable") from None
