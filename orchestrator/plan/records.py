"""The plan's records: a job's scenes, each a chain of clips, frozen, with the key that names its checkpoints."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from core.errors import Problem
from core.settings import Settings
from orchestrator.intake.manifest import JobSpec


class ClipPlan(BaseModel):
    model_config = ConfigDict(frozen=True)
    index: int  # within the chain
    scene_frame_start: int
    frames: int
    job_clip_index: int
    seed: int


class ScenePlan(BaseModel):
    model_config = ConfigDict(frozen=True)
    index: int
    start_frame: int
    frames: int
    clips: tuple[ClipPlan, ...]


class JobPlan(BaseModel):
    """Everything needed to render a job; its key names checkpoints and is stored in the sidecar."""

    model_config = ConfigDict(frozen=True)
    job: JobSpec
    key: str
    backend_version: str
    fps: int
    duration_s: float
    frames: int
    width: int
    height: int
    audio_sha256: str
    image_sha256: str
    pose_sha256: str | None
    scenes: tuple[ScenePlan, ...]
    silences: tuple[tuple[float, float], ...] = ()  # stretches without speech ≥ settings.long_silence_s (report)
    expected_clip_s: float | None = None  # learned GPU-seconds per clip (estimates.py); None = settings default
    expected_clip_source: str = "default"

    @property
    def clips(self) -> int:
        return sum(len(s.clips) for s in self.scenes)


def expected_clip_s(plan: JobPlan, settings: Settings) -> float:
    """GPU-seconds one clip of this plan is expected to take: learned when measured, else the settings default."""
    return plan.expected_clip_s or settings.expected_clip_s(plan.job.backend)


class PlanResult(BaseModel):
    model_config = ConfigDict(frozen=True)
    plans: tuple[JobPlan, ...]
    problems: tuple[Problem, ...]
    failed: tuple[str, ...]  # job ids that could not be planned
