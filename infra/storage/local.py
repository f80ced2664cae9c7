"""Local filesystem storage (paths and file://): atomic writes by temp file + fsync + rename."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator

from infra.storage.base import Storage, fill_atomically
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

    @staticmethod
    def _atomic(dest: Path, fill) -> None:
        """Temp file in the destination folder, fsync, rename over the final name; OS errors name the path."""
        try:
            fill_atomically(dest, fill, ".tmp-", fsync=True)
        except FileNotFoundError as e:
            raise StorageError(f"{e.filename}: no such file") from None
        except OSError as e:
            raise StorageError(f"{dest}: cannot write there ({e.strerror}); check the folder exists and is "
                               "writable") from None
