"""What the review page shows of a catalog: every row with its content key, its latest render (the sidecar at
its output, and whether that render shows the row's current content), the plan's figures, quality notes and the
review decisions — re-read when the manifest changes on disk."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field

from core.errors import S2VError
from infra.storage import parse, storage_for
from orchestrator.deliver import quality
from orchestrator.deliver.outputs import is_our_sidecar, output_uris
from orchestrator.intake.content import plan_content_key
from orchestrator.plan.records import JobPlan
from orchestrator.review.store import APPROVED, Decision, ReviewFile, latest_in

MEDIA = {"mp4": "mp4", "jpg": "jpg", "vtt": "vtt", "chapters": "chapters", "transcript": "transcript_html"}


@dataclass
class Entry:
    plan: JobPlan
    content: str
    figures: dict
    sidecar: dict | None  # the published render's, if any
    media: dict[str, str] = field(default_factory=dict)  # kind → URI of the render's files the page may serve

    @property
    def id(self) -> str:
        return self.plan.job.id

    @property
    def render_state(self) -> str:
        """'current', 'older' (a render of earlier content), 'unknown' (a render from before content keys) or
        'none'."""
        if not self.sidecar or "mp4" not in self.media:
            return "none"
        key = self.sidecar.get("content_key")
        return "unknown" if key is None else ("current" if key == self.content else "older")

    def notes(self) -> list[dict]:
        out = quality.notes(self.sidecar) if self.sidecar else []
        if not self.sidecar:  # no render yet: the plan's long silences are still worth a look
            out = quality.notes({"quality": {"long_silences": [list(s) for s in self.plan.silences]}})
        return out


class Catalog:
    """The manifest as reviewed now. Thread-safe: the server answers requests from several threads."""

    def __init__(self, manifest: str, settings, cli_defaults: dict | None, review: ReviewFile):
        self.manifest, self.settings, self.cli_defaults, self.review = manifest, settings, cli_defaults, review
        self.lock = threading.Lock()
        self._stamp = None
        self.entries: dict[str, Entry] = {}
        self.problems: list = []
        self.decisions: list[Decision] = []  # the review file as read by the last refresh: one read per page

    def _manifest_stamp(self):
        u = parse(self.manifest)
        if u.scheme != "file":
            return self._stamp or "remote"  # read once: a remote manifest is reloaded by restarting the page
        st = os.stat(u.key)
        return (st.st_size, st.st_mtime_ns)

    def refresh(self) -> None:
        """Admit and plan again when the manifest changed (a decision is only ever on the content shown)."""
        from orchestrator.intake.admission import admit
        from orchestrator.plan.estimates import estimate
        from orchestrator.plan.planner import plan_jobs

        with self.lock:
            self.decisions = self.review.decisions()
            stamp = self._manifest_stamp()
            if stamp == self._stamp and self.entries:
                for e in self.entries.values():  # renders may have been published since
                    e.sidecar, e.media = self._render(e.plan)
                return
            adm = admit(self.manifest, self.settings, self.cli_defaults)
            planned = plan_jobs(adm.jobs, self.settings) if adm.jobs else None
            plans = planned.plans if planned else ()
            figures = {r["id"]: r for r in estimate(plans, self.settings)["jobs"]}
            self.problems = list(adm.problems) + list(planned.problems if planned else ())
            entries = {}
            for p in plans:
                sidecar, media = self._render(p)
                entries[p.job.id] = Entry(p, plan_content_key(p, self.settings), figures.get(p.job.id, {}), sidecar,
                                          media)
            self.entries, self._stamp = entries, stamp

    def _render(self, plan: JobPlan) -> tuple[dict | None, dict[str, str]]:
        u = output_uris(plan)["json"]
        try:
            meta = json.loads(storage_for(u, self.settings).read_bytes(u))
        except (S2VError, OSError, ValueError):
            return None, {}
        if not is_our_sidecar(meta) or meta.get("id") != plan.job.id:
            return None, {}
        outputs = meta.get("outputs") or {}
        return meta, {kind: outputs[name] for kind, name in MEDIA.items() if outputs.get(name)}

    def decision(self, e: Entry) -> Decision | None:
        return latest_in(self.decisions, e.id, e.content)

    def history(self, job: str) -> list[Decision]:
        return [d for d in self.decisions if d.job == job]

    def counts(self) -> dict[str, int]:
        out = {"approved": 0, "changes requested": 0, "awaiting review": 0}
        for e in self.entries.values():
            d = self.decision(e)
            out["awaiting review" if d is None else ("approved" if d.decision == APPROVED else "changes requested")] += 1
        return out
