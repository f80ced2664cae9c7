"""Review decisions, kept beside the manifest in an append-only JSON-lines file (who, when, which job and content,
approve or request changes, the note): it survives reruns, can be committed with the catalog, and is the audit
trail. The latest decision for a row's current content is the one that counts."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from core.errors import InputError
from infra.storage import parse

APPROVED, CHANGES = "approved", "changes requested"
DECISIONS = (APPROVED, CHANGES)
MAX_NOTE = 4000


@dataclass(frozen=True)
class Decision:
    job: str
    content: str  # the row's content key when it was decided
    decision: str
    reviewer: str
    note: str
    at: str  # UTC, ISO 8601
    row: str = ""  # where the row was (file:line) at the time


def latest_in(decisions: list[Decision], job: str, content: str) -> Decision | None:
    """The last decision on this job for this content (a decision on other content does not count)."""
    return next((d for d in reversed(decisions) if d.job == job and d.content == content), None)


def review_file_for(manifest: str, given: str | None = None) -> Path:
    """The review file: `given`, else beside a local manifest (`catalog.yaml` → `catalog.review.jsonl`)."""
    if given:
        return Path(given).expanduser()
    u = parse(manifest)
    if u.scheme != "file":
        raise InputError(f"{manifest} is not a local file: give the review file with --review-file PATH")
    p = Path(u.key)
    return p.with_name(p.stem + ".review.jsonl")


class ReviewFile:
    def __init__(self, path: Path):
        self.path = Path(path)

    def decisions(self) -> list[Decision]:
        """Every decision in the order made; a line that is not one is named (the file is hand-editable)."""
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read the review file {self.path}: {e}") from None
        out = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                out.append(Decision(**json.loads(line)))
            except (ValueError, TypeError) as e:
                raise InputError(f"{self.path}:{n}: not a review decision ({e}); fix or remove that line") from None
        return out

    def add(self, job: str, content: str, decision: str, reviewer: str, note: str, row: str = "") -> Decision:
        """Append one decision (one write of one line with O_APPEND, then fsync: no torn or lost line)."""
        reviewer, note = " ".join(reviewer.split()), note.strip()
        if decision not in DECISIONS:
            raise InputError(f"decision {decision!r} is not one of: {', '.join(DECISIONS)}")
        if not reviewer:
            raise InputError("a decision needs the reviewer's name")
        if decision == CHANGES and not note:
            raise InputError("requesting changes needs a note saying what to change")
        if len(note) > MAX_NOTE:
            raise InputError(f"the note is {len(note)} characters; at most {MAX_NOTE}")
        d = Decision(job, content, decision, reviewer[:200], note,
                     time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), row)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(asdict(d), ensure_ascii=False) + "\n").encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        return d


def gate(review: ReviewFile, settings):
    """For `render --approved-only`: a plan (or a job, before planning) → None when its current content is
    approved, else why it waits."""
    from orchestrator.intake.content import content_key, plan_content_key

    decisions = review.decisions()  # read once per run

    def why_not(item) -> str | None:
        planned = hasattr(item, "audio_sha256")
        key = plan_content_key(item, settings) if planned else content_key(item, settings)
        jid = item.job.id if planned else item.id
        d = latest_in(decisions, jid, key)
        if d is None:
            earlier = any(x.job == jid for x in decisions)
            return ("awaiting review: the row changed since its last review" if earlier
                    else "awaiting review: not reviewed yet") + f" (s2v review; {review.path})"
        if d.decision != APPROVED:
            return f"awaiting review: changes requested by {d.reviewer} at {d.at}: {d.note}"
        return None

    return why_not
