"""A temp folder only this user can write, for everything Ray's launcher keeps between calls: it trusts
`$TMPDIR/ray-config-<sha256 of the config>` (a predictable name) as the resolved config — auth, SSH proxy
commands and all — so a cache another local user planted there would run their commands as you. While s2v drives
the launcher, Python's temp folder is ~/.s2v/tmp: created 0700, refused when it is a link, owned by someone else,
or writable by others."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import Iterator

from core.errors import ConfigError

PRIVATE_TMP = "~/.s2v/tmp"


def _private(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{path} must be a folder of your own, not a link; remove it (s2v recreates it)")
    if st.st_uid != os.getuid():
        raise ConfigError(f"{path} belongs to uid {st.st_uid}, not you: s2v keeps the cluster launcher's state "
                          "there and will not trust it; remove it (s2v recreates it)")
    if st.st_mode & 0o022:  # others could have planted a launcher cache or a known-hosts file in it
        raise ConfigError(f"{path} is writable by others (mode {stat.S_IMODE(st.st_mode):o}): s2v keeps the cluster "
                          "launcher's state and the heads' host keys there and will not trust it; remove it (s2v "
                          "recreates it, 0700)")
    if st.st_mode & 0o077:  # readable by others (an older s2v's mkdir): nothing planted, close it
        os.chmod(path, 0o700)


def private_tmp() -> Path:
    """~/.s2v/tmp, checked (and ~/.s2v with it: a folder others may write could have it swapped)."""
    path = Path(os.path.expanduser(PRIVATE_TMP))
    _private(path.parent)
    _private(path)
    return path


@contextlib.contextmanager
def launcher_tmp() -> Iterator[Path]:
    """Python's temp folder is the private one for the block (Ray's config cache and the temporary config files
    it writes land there); restored after."""
    path = private_tmp()
    old = tempfile.tempdir
    tempfile.tempdir = str(path)
    try:
        yield path
    finally:
        tempfile.tempdir = old
