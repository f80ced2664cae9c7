"""This node's spot notices as a render actor uses them: the active interruption and the active early warning,
each gone again once it passes (infra/preemption: `watcher.notice()`, `watcher.warning()`, `on_notice`,
`on_clear`)."""

from __future__ import annotations

import logging

log = logging.getLogger("s2v.notices")


def for_node(settings, node_id: str):
    """Metadata URLs may name the node ('{node_id}', like sigterm_flag_dir): one loopback server then plays every
    node's metadata service in a multi-node test."""
    update = {}
    for name in ("aws_imds_url", "gcp_metadata_url"):
        value = getattr(settings, name, None)
        if isinstance(value, str) and "{node_id}" in value:
            update[name] = value.replace("{node_id}", node_id)
    return settings.model_copy(update=update) if update else settings


class NodeNotices:
    """What the actor asks before each clip: is an interruption or an early warning active on this node now?"""

    def __init__(self, settings, node_id: str, drain: bool = True):
        from infra.preemption import watcher_from_settings

        # drain=True: the watcher drains this Ray node for an interruption (never for a warning), so Ray places
        # nothing new here; the chain resumes elsewhere from its checkpoints
        w = watcher_from_settings(for_node(settings, node_id), on_notice=self._on_notice, on_clear=self._on_clear,
                                  drain=drain)
        if w is not None:
            w.start()
        self.watcher = w

    @staticmethod
    def _on_notice(n) -> None:
        log.warning("spot %s on this node (%s): %s", n.kind, n.source, n.reason)

    @staticmethod
    def _on_clear(n) -> None:
        log.warning("spot %s on this node passed (%s)", n.kind, n.source)

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
