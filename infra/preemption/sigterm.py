"""SIGTERM as a preemption notice: the signal itself, or a flag file bound to this boot and this node's start."""

from __future__ import annotations

import logging
import os
import posixpath
import re
import signal
import stat
import tempfile
import threading
import time
from pathlib import Path

from core.errors import ConfigError

from .notice import Notice

log = logging.getLogger("s2v.preemption")

SIGTERM_FLAG_DIR = "~/.local/state/s2v-batch"
FLAG_NAME = "sigterm"
BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
# What may appear in a flag path baked into a shell command: no quoting needed, so nothing can be injected.
_SHELL_SAFE = re.compile(r"(~/)?[A-Za-z0-9_./-]+")


def boot_id() -> str:
    """This kernel boot's id ('' where the kernel has none, as on macOS)."""
    try:
        return Path(BOOT_ID_FILE).read_text().strip()
    except OSError:
        return ""


def node_start_time() -> float:
    """When this Ray node started (its raylet, whose pid Ray gives its workers), else when this process started."""
    import psutil  # a Ray dependency

    for pid in (os.environ.get("RAY_RAYLET_PID"), os.getpid()):
        try:
            return psutil.Process(int(pid)).create_time()
        except (TypeError, ValueError, psutil.Error):
            continue
    return time.time()


def _ray_node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
    except Exception:  # noqa: BLE001
        return "local"


def sigterm_flag_path(settings, node_id: str | None = None) -> Path:
    """This node's SIGTERM flag: `<sigterm_flag_dir>/sigterm`.

    '{node_id}' in the dir expands to `node_id` (default: this Ray node's) so that several local "nodes" on one
    machine get one flag each (tests). A leading '~' is kept: it is the renderer's home on the node, expanded
    where the flag is read or written, never where a command is built (a laptop's home is not a pod's).
    """
    d = getattr(settings, "sigterm_flag_dir", SIGTERM_FLAG_DIR)
    if "{node_id}" in d:
        d = d.replace("{node_id}", node_id or _ray_node_id())
    return Path(d) / FLAG_NAME


def sigterm_trap_command(flag_path) -> str:
    """The shell snippet a pod entrypoint runs first: on TERM, write this boot's id and the time to `flag_path`.

    The directory is created 0700 and the flag written to a temporary file then renamed, so the watcher never
    reads half a flag. POSIX sh, no single quotes: it fits inside the entrypoint's `bash -c '…'`. The umask
    change stays inside subshells, so the rest of the entrypoint keeps its own.
    """
    p = str(flag_path)
    if not _SHELL_SAFE.fullmatch(p) or not (p.startswith("/") or p.startswith("~/")):
        raise ValueError(f"SIGTERM flag path {p!r} must be absolute or start with ~/ and use only A-Z a-z 0-9 _ . / -")
    sh = "$HOME/" + p[2:] if p.startswith("~/") else p
    d, name = posixpath.split(sh)
    tmp = f"{d}/.{name}.$$"
    return (f'(umask 077; mkdir -p "{d}"); '
            f's2v_sigterm() {{ (umask 077; echo "$(cat {BOOT_ID_FILE}) $(date +%s)" > "{tmp}") '
            f'&& mv -f "{tmp}" "{sh}"; }}; trap s2v_sigterm TERM')


def write_sigterm_flag(flag_path) -> Path:
    """In Python, what `sigterm_trap_command` does in the shell (for entrypoints written in Python, and tests)."""
    p = Path(flag_path).expanduser()
    p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.")  # 0600
    with os.fdopen(fd, "w") as f:
        f.write(f"{boot_id()} {int(time.time())}\n")
    os.replace(tmp, p)
    return p


class SigtermSource:
    """SIGTERM (RunPod gives ~5 s before SIGKILL).

    Docker delivers SIGTERM to the container's PID 1, not to Ray workers, so the pod's entrypoint traps it and
    writes `flag_path` (see `sigterm_trap_command`); a handler is also installed when we run on the main thread
    (a plain driver). A flag counts only when its directory is ours and not group/world-writable, it is a plain
    file of ours, it carries this boot's id, and it is newer than this node's start (`not_before`): a flag left
    from an earlier boot, an earlier pod on the same host, or written by another user never drains a node.
    """

    name = "sigterm"

    def __init__(self, grace_s: float = 5.0, flag_path: str | Path | None = None, install_handler: bool = True,
                 not_before: float | None = None):
        self.grace_s = grace_s
        self.flag_path = Path(flag_path).expanduser() if flag_path is not None else None
        self.not_before = node_start_time() if not_before is None else not_before
        self.boot = boot_id()
        self._flag: tuple[int, Notice] | None = None  # (mtime_ns, notice) of the flag honoured last
        self._ignored: set[int] = set()  # mtimes of flags already refused (logged once each)
        self._received: float | None = None
        self._signal_notice: Notice | None = None
        self._prev = None
        self._installed = False
        self._timer: threading.Timer | None = None
        self._redelivered = False
        if self.flag_path is not None and not self.flag_path.parent.exists():
            try:  # claim the directory before anyone else can: ours, 0700
                self.flag_path.parent.mkdir(mode=0o700, parents=True)
            except OSError as e:
                log.warning("cannot create the SIGTERM flag directory %s: %s", self.flag_path.parent, e)
        if install_handler and threading.current_thread() is threading.main_thread():
            self._prev = signal.signal(signal.SIGTERM, self._on_signal)
            self._installed = True

    def _on_signal(self, signum, frame) -> None:
        if self._redelivered:  # our own second delivery, after the notice had time to be seen
            self._call_prev(signum, frame)
            return
        self._received = time.time()
        # The previous handler (Ray's worker exits via sys.exit) must run on the main thread, where handlers run:
        # re-deliver the signal to ourselves later rather than calling it from a timer thread, where sys.exit
        # would only end that thread and the worker would never exit.
        if self._prev is not signal.SIG_IGN:
            self._timer = threading.Timer(max(self.grace_s - 1.0, 0.0), self._redeliver, (signum,))
            self._timer.daemon = True
            self._timer.start()

    def _redeliver(self, signum) -> None:
        self._redelivered = True
        os.kill(os.getpid(), signum)

    def _call_prev(self, signum, frame) -> None:
        prev = self._prev
        if callable(prev):
            prev(signum, frame)
        elif prev in (signal.SIG_DFL, None):
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._installed:
            signal.signal(signal.SIGTERM, self._prev if self._prev is not None else signal.SIG_DFL)
            self._installed = False

    def check(self) -> list[Notice]:
        out = []
        if self._received is not None:
            if self._signal_notice is None:
                self._signal_notice = Notice(source="sigterm", kind="interruption", seen=time.time(),
                                             deadline=self._received + self.grace_s, reason="SIGTERM received")
            out.append(self._signal_notice)
        flag = self._read_flag()
        if flag is not None:
            out.append(flag)
        return out

    def _refuse(self, what: str, st: os.stat_result, fix: str) -> ConfigError:
        return ConfigError(f"refusing SIGTERM flag {what}: owned by uid {st.st_uid}, mode "
                           f"{stat.S_IMODE(st.st_mode):o}; it must belong to uid {os.geteuid()} (the renderer) and be "
                           f"writable by it alone — {fix}")

    def _read_flag(self) -> Notice | None:
        p = self.flag_path
        if p is None:
            return None
        try:
            st = os.stat(p.parent)
        except FileNotFoundError:
            return None
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise self._refuse(f"directory {p.parent}", st,
                               "remove it (it is recreated 0700) or point sigterm_flag_dir elsewhere")
        try:  # O_NOFOLLOW: a symlink planted as the flag is refused, not followed
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise ConfigError(f"refusing SIGTERM flag {p}: {e} (a symlink or special file?); remove it") from e
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                raise self._refuse(str(p), st, "remove it")
            if self._flag is not None and self._flag[0] == st.st_mtime_ns:
                return self._flag[1]
            if st.st_mtime_ns in self._ignored:
                return None
            words = os.read(fd, 256).decode(errors="replace").split()
        finally:
            os.close(fd)
        written_boot = words[0] if words else ""
        why = None
        if self.boot and written_boot != self.boot:
            why = f"written in another boot ({written_boot or 'no boot id'}; this boot is {self.boot})"
        elif st.st_mtime < self.not_before:
            why = (f"written at {time.ctime(st.st_mtime)}, before this node started "
                   f"({time.ctime(self.not_before)})")
        if why is not None:
            self._ignored.add(st.st_mtime_ns)
            log.warning("ignoring SIGTERM flag %s: %s", p, why)
            return None
        n = Notice(source="sigterm", kind="interruption", deadline=st.st_mtime + self.grace_s, seen=time.time(),
                   reason=f"SIGTERM (flag {p})")
        self._flag = (st.st_mtime_ns, n)
        return n
