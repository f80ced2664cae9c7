"""What a run produces: each job's status (an enum with its terminal states), per-job and per-run results, the
progress hooks the CLI implements, and the run's spend."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict

from core.errors import Problem
from orchestrator.render.events import Event


class JobStatus(str, Enum):
    """Where a job is in its run. A run never ends with a job in a non-terminal state: Ctrl-C turns each one
    into INTERRUPTED, and the final sweep fails whatever is left with the reason."""

    PENDING = "pending"  # planned; its chains wait for (or hold) a GPU
    STITCHING = "stitching"  # every clip is checkpointed; stitch, post step and publish run
    POSTING = "posting"  # published before; only its post step (captions, renditions) runs again
    PUBLISHED = "published"
    SKIPPED = "skipped"  # already published with this key, or another run holds its lease
    FAILED = "failed"
    INVALID = "invalid"  # a bad row: never planned
    INTERRUPTED = "interrupted"  # the run was stopped (Ctrl-C); a rerun resumes it
    AWAITING_REVIEW = "awaiting-review"  # render --approved-only: its current content is not approved

    def __str__(self) -> str:  # format() and f-strings give the value, on every Python
        return self.value

    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.PUBLISHED, JobStatus.SKIPPED, JobStatus.FAILED, JobStatus.INVALID,
                      JobStatus.INTERRUPTED, JobStatus.AWAITING_REVIEW})


class JobResult(BaseModel):
    model_config = ConfigDict(validate_assignment=True)  # a status set from a plain string becomes a JobStatus

    id: str
    status: JobStatus
    reason: str | None = None
    output: str | None = None
    key: str | None = None
    source: str | None = None  # the row it came from (file:line), for messages that name it
    row_id: str | None = None  # an invalid row's own id as written (its `id` above may be "label @ row")
    scenes: int = 0
    clips: int = 0
    clips_rendered: int = 0
    retries: int = 0
    preemptions: int = 0
    gpu_s: float = 0.0
    cost_usd: float = 0.0
    duration_s: float = 0.0
    deliverables: dict[str, str] = {}  # delivery: captions, renditions, HLS published by the post step
    quality: list[dict] = []  # the sidecar's quality notes, worst first (orchestrator/deliver/quality.py)
    caption_language: str | None = None  # the captions' BCP-47 tag, for the report's player

    def to(self, status: JobStatus, reason: str | None = None) -> None:
        self.status, self.reason = status, reason


class RunResult(BaseModel):
    run_id: str
    manifest: str
    jobs: dict[str, JobResult]
    problems: list[Problem] = []
    actors: list[dict] = []
    events: list[Event] = []
    wall_s: float = 0.0
    cost: dict = {}  # orchestrator/render/costs.py summary: node-hours and their cost on a cluster, else the source
    capacity: dict = {}  # the pool: target, peak workers, on-demand fallback and why

    @property
    def exit_code(self) -> int:
        st = [j.status for j in self.jobs.values()]
        if JobStatus.INVALID in st or self.problems:  # a header or defaults problem is bad input even when no row shows it
            return 2
        return 1 if JobStatus.FAILED in st else 0

    def ids_by_source(self) -> dict[str, str]:
        """Row place (file:line) → the id that row gave, for every job or bad row that has both."""
        return {r.source: r.row_id if r.status is JobStatus.INVALID else r.id
                for r in self.jobs.values() if r.source and (r.row_id or r.status is not JobStatus.INVALID)}


class Progress:
    """What the runner tells the user while it works; the CLI passes a rich implementation."""

    def start(self, jobs: int, clips: int) -> None: ...
    def clip(self, job_id: str) -> None: ...
    def job(self, job_id: str, status: str) -> None: ...
    def stop(self) -> None: ...


def run_cost(results: dict, cost: dict) -> float:
    """The run's spend: node-hours on a cluster (when every node had a price), else the jobs' GPU-seconds."""
    if cost.get("source") == "node-hours" and cost.get("priced"):
        return float(cost["cost_usd"])
    return sum(r.cost_usd for r in results.values())
