"""This node's spot notices as a render actor uses them: the active interruption and the active early warning,
each gone again once it passes.

Written against the contract of infra/preemption.py: `Notice(source, kind, deadline, reason, seen)`,
`watcher.notice()` (the active interruption, cleared when the node outlives it), `watcher.warning()` (the active
early warning, e.g. an AWS rebalance recommendation), callbacks `on_notice(n)` / `on_clear(n)`. Until a watcher
with that contract is installed, `_Polled` gives the older one (sticky notices, rebalance read as an
interruption) the same meaning by polling its sources itself."""

from __future__ import annotations

import inspect
import logging
import threading
from typing import Callable

log = logging.getLogger("s2v.notices")
INTERRUPTION, WARNING = "interruption", "warning"
_EARLY_WARNING_SOURCES = {"aws-rebalance"}  # the older watcher's name for a rebalance recommendation


def kind_of(notice) -> str:
    kind = getattr(notice, "kind", None)
    if kind:
        return kind
    return WARNING if getattr(notice, "source", "") in _EARLY_WARNING_SOURCES else INTERRUPTION


def for_node(settings, node_id: str):
    """Metadata URLs may name the node ('{node_id}', like sigterm_flag_file): one loopback server then plays
    every node's metadata service in a multi-node test."""
    update = {}
    for name in ("aws_imds_url", "gcp_metadata_url"):
        value = getattr(settings, name, None)
        if isinstance(value, str) and "{node_id}" in value:
            update[name] = value.replace("{node_id}", node_id)
    return settings.model_copy(update=update) if update else settings


class _Polled:
    """The contract over an older watcher: its sources polled here, every answer replacing the last one (so a
    notice that is no longer served clears), rebalance recommendations read as warnings."""

    def __init__(self, old, on_notice: Callable, on_clear: Callable):
        self.sources, self.poll_s = old.sources, old.poll_s
        self.on_notice, self.on_clear = on_notice, on_clear
        self._active: dict[str, object] = {}  # kind → notice
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="s2v-notices", daemon=True)

    def start(self) -> "_Polled":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for s in self.sources:
            if hasattr(s, "close"):
                s.close()

    def notice(self):
        with self._lock:
            return self._active.get(INTERRUPTION)

    def warning(self):
        with self._lock:
            return self._active.get(WARNING)

    def poll_once(self) -> None:
        seen: dict[str, object] = {}
        for src in self.sources:
            try:
                n = src.check()
            except Exception:  # noqa: BLE001 - a metadata blip keeps what was known, it never clears a notice
                return
            if n is not None:
                seen.setdefault(kind_of(n), n)
        with self._lock:
            before, self._active = self._active, seen
        for kind, n in seen.items():
            if kind not in before:
                self.on_notice(n)
        for kind, n in before.items():
            if kind not in seen:
                self.on_clear(n)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            self._stop.wait(self.poll_s)


class NodeNotices:
    """What the actor asks before each clip: is an interruption or an early warning active on this node now?"""

    def __init__(self, settings, node_id: str, on_interruption: Callable | None = None):
        from infra.preemption import watcher_from_settings

        self.on_interruption = on_interruption
        s = for_node(settings, node_id)
        kw = {"on_notice": self._on_notice}
        if "on_clear" in inspect.signature(watcher_from_settings).parameters:
            kw["on_clear"] = self._on_clear
        w = watcher_from_settings(s, **kw)
        if w is not None and not hasattr(w, "warning"):
            w = _Polled(w, self._on_notice, self._on_clear)
        if w is not None:
            w.start()
        self.watcher = w

    def _on_notice(self, n) -> None:
        if kind_of(n) == INTERRUPTION and self.on_interruption is not None:
            self.on_interruption(n)
        log.warning("spot %s on this node (%s): %s", kind_of(n), getattr(n, "source", "?"), getattr(n, "reason", ""))

    def _on_clear(self, n) -> None:
        log.warning("spot %s on this node passed (%s)", kind_of(n), getattr(n, "source", "?"))

    def interruption(self):
        return self.watcher.notice() if self.watcher is not None else None

    def warning(self):
        return self.watcher.warning() if self.watcher is not None else None

    def state(self) -> dict:
        """{"interruption": str | None, "warning": str | None}: the active notices' reasons."""
        i, w = self.interruption(), self.warning()
        return {"interruption": _describe(i), "warning": _describe(w)}

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()


def _describe(n) -> str | None:
    return None if n is None else f"{getattr(n, 'source', '?')}: {getattr(n, 'reason', '')}"
