"""Policy tests' kit: plans made in code (no media) and a scheduler on the in-process runtime, virtual clock."""

from __future__ import annotations

import hashlib

from core.settings import Settings
from orchestrator.intake.manifest import JobSpec
from orchestrator.plan.records import ClipPlan, JobPlan, ScenePlan
from orchestrator.render.events import EventLog
from orchestrator.render.inprocess import InProcessRuntime
from orchestrator.render.pool import Pool
from orchestrator.render.scheduler import Scheduler
from orchestrator.render.scripted_worker import ScriptedWorker


def plan(job_id: str, *chains: int, priority: int = 0, backend: str = "draft", frames_per_clip: int = 80,
         expected_clip_s: float | None = None) -> JobPlan:
    """A job whose scenes are chains of the given numbers of clips."""
    scenes, start, k = [], 0, 0
    for si, n in enumerate(chains):
        clips = tuple(ClipPlan(index=ci, scene_frame_start=ci * frames_per_clip, frames=frames_per_clip,
                               job_clip_index=k + ci, seed=k + ci) for ci in range(n))
        scenes.append(ScenePlan(index=si, start_frame=start, frames=n * frames_per_clip, clips=clips))
        start, k = start + n * frames_per_clip, k + n
    job = JobSpec(id=job_id, audio=f"/in/{job_id}.wav", image="/in/presenter.png", backend=backend, priority=priority)
    return JobPlan(job=job, key=hashlib.sha256(job_id.encode()).hexdigest()[:24], backend_version="1", fps=16,
                   duration_s=start / 16, frames=start, width=64, height=64, audio_sha256="a", image_sha256="i",
                   pose_sha256=None, scenes=tuple(scenes), expected_clip_s=expected_clip_s)


class Harness:
    """A scheduler over an in-process pool; `failed`, `ready` record the job states it handed back."""

    def __init__(self, settings: Settings, work: str, runtime: InProcessRuntime | None = None, worker=None,
                 elastic: bool | None = None):
        self.worker = worker or ScriptedWorker.configure()
        self.rt = runtime or InProcessRuntime(self.worker)
        self.events = EventLog(self.rt.now)
        self.pool = Pool(settings, self.rt, self.events, ("draft",), elastic=elastic)
        self.ready: list[str] = []
        self.failed: dict[str, str] = {}
        self.sched = Scheduler(settings, work, self.pool, on_job_ready=lambda js: self.ready.append(js.plan.job.id),
                               on_job_failed=lambda js: self.failed.__setitem__(js.plan.job.id, js.failed))

    def run(self, plans: list[JobPlan], done: dict | None = None) -> "Harness":
        self.sched.add_jobs(plans, done or {})
        try:
            self.sched.run()
        finally:
            self.infos = self.pool.close()
        return self

    def kinds(self, *kinds: str) -> list:
        return self.events.of(*kinds)
