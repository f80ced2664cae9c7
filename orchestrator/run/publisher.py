"""The run's CPU side, beside the GPUs: a job's audio and speech recognition start with its first clip, its stitch
and publish the moment its last chain is checkpointed, and published jobs whose post step changed are reposted.
Every outcome lands in the job's result and is announced (lease released, webhook, progress, state)."""

from __future__ import annotations

from typing import Callable

from core.errors import TransientError
from core.settings import Settings
from orchestrator.deliver import quality
from orchestrator.deliver.post import deliverables, prepare_captions
from orchestrator.deliver.publish import prepare_audio, stitch_and_publish
from orchestrator.deliver.repost import repost
from orchestrator.plan.records import JobPlan
from orchestrator.render.chains import JobState
from orchestrator.render.runtime import Runtime
from orchestrator.run.results import JobResult, JobStatus

HOUR_S = 3600.0


def job_stats(js: JobState) -> dict:
    """What the sidecar records of how the job was rendered."""
    return {"gpu_s": round(js.gpu_s, 3), "cost_usd": round(js.cost_usd, 6), "clips_rendered": js.clips_rendered,
            "retries": js.attempts + js.infra_retries, "preemptions": js.preemptions, "attempts": js.attempts}


def take(r: JobResult, meta: dict) -> None:
    """What the published sidecar tells the run's report: the deliverables and the quality notes."""
    r.deliverables, r.quality = deliverables(meta), quality.notes(meta)
    r.caption_language = (meta.get("captions") or {}).get("language")


def settle(r: JobResult, js: JobState, status: JobStatus, reason: str | None) -> None:
    """A job's final status, with the figures of its render."""
    r.to(status, reason)
    r.clips_rendered, r.gpu_s = js.clips_rendered, round(js.gpu_s, 3)
    r.retries, r.preemptions = js.attempts + js.infra_retries, js.preemptions
    r.cost_usd = round(js.cost_usd, 6)


class Publisher:
    """`announce(result)` is called once per job that reaches a final status here."""

    def __init__(self, runtime: Runtime, settings: Settings, work: str, results: dict[str, JobResult],
                 announce: Callable[[JobResult], None], shared_keys: set[str], lease: str | None = None):
        self.rt, self.settings, self.work, self.results, self.announce = runtime, settings, work, results, announce
        self.lease = lease  # the run's lease holder: a stitch or repost publishes only while the run holds the job
        # identical rows share a job key and so its checkpoints: the first to publish must not remove them
        self.shared_keys = shared_keys
        # only transient errors are worth a second stitch: a failed check or gate would fail the same way again
        self._stitch = runtime.task(stitch_and_publish, cpus=settings.stitch_cpus, retries=2, retry_on=(TransientError,))
        self._audio = runtime.task(prepare_audio, cpus=settings.stitch_cpus)
        self._asr = runtime.task(prepare_captions, cpus=settings.asr_cpus)
        self.audio_started: dict[str, object] = {}  # job id → ref: its audio encodes while its clips render
        self.asr_started: dict[str, object] = {}  # job id → ref: `captions: auto` transcribes while it renders
        self.stitching: dict[object, JobState] = {}

    # ---------- while the chains render ----------
    def clip_done(self, js: JobState) -> None:
        """A clip of the job is saved: on its first, its audio (and speech recognition) start on a CPU."""
        jid = js.plan.job.id
        if jid not in self.audio_started:
            self.audio_started[jid] = self._audio(js.plan, self.settings, self.work)
            if js.plan.job.captions_auto:
                self.asr_started[jid] = self._asr(js.plan, self.settings, self.work)
        r = self.results[jid]
        r.clips_rendered, r.gpu_s = js.clips_rendered, js.gpu_s

    def job_ready(self, js: JobState) -> None:
        """Every chain of the job is checkpointed: stitch and publish it now, not at the end of the run."""
        jid = js.plan.job.id
        self.results[jid].to(JobStatus.STITCHING)
        # the audio task's ref as an argument: the stitch starts after it, and the driver never waits
        ref = self._stitch(js.plan, self.settings, self.work, job_stats(js), self.audio_started.get(jid),
                           js.plan.key in self.shared_keys, self.asr_started.get(jid), self.lease)
        self.stitching[ref] = js

    def job_failed(self, js: JobState) -> None:
        settle(self.results[js.plan.job.id], js, JobStatus.FAILED, js.failed)
        self.announce(self.results[js.plan.job.id])

    def collect(self, timeout: float) -> None:
        """Take in every stitch that finished within `timeout`."""
        if not self.stitching:
            return
        for ref in self.rt.wait(list(self.stitching), timeout=timeout, every=True):
            js = self.stitching.pop(ref)
            r = self.results[js.plan.job.id]
            try:
                meta = self.rt.get(ref, timeout=60)
                settle(r, js, JobStatus.PUBLISHED, None)
                take(r, meta)
            except Exception as e:  # noqa: BLE001 - one job's stitch failure never stops the run
                settle(r, js, JobStatus.FAILED, f"stitch/publish: {getattr(e, 'cause', None) or e}")
            self.announce(r)

    # ---------- after the chains ----------
    def drain(self, within_s: float = HOUR_S) -> None:
        """Wait for the stitches still running; one that takes longer than an hour fails its job."""
        deadline = self.rt.now() + within_s
        while self.stitching and self.rt.now() < deadline:
            self.collect(1.0)
        for js in self.stitching.values():
            settle(self.results[js.plan.job.id], js, JobStatus.FAILED, "stitch did not finish within an hour")
            self.announce(self.results[js.plan.job.id])
        self.stitching.clear()

    def repost(self, plans: list[JobPlan], within_s: float = HOUR_S) -> None:
        """The post step alone for published jobs whose captions or renditions changed: CPU tasks, no GPU."""
        if not plans:
            return
        task = self.rt.task(repost, cpus=self.settings.stitch_cpus, retries=2, retry_on=(TransientError,))
        pending = {task(p, self.settings, self.work, self.lease): p for p in plans}
        for p in plans:
            self.results[p.job.id].to(JobStatus.POSTING)
        deadline = self.rt.now() + within_s
        while pending and self.rt.now() < deadline:
            for ref in self.rt.wait(list(pending), timeout=5.0):
                r = self.results[pending.pop(ref).job.id]
                try:
                    take(r, self.rt.get(ref, timeout=60))
                    r.to(JobStatus.PUBLISHED)
                except Exception as e:  # noqa: BLE001 - one job's failure never stops the others
                    r.to(JobStatus.FAILED, f"post step: {getattr(e, 'cause', None) or e}")
                self.announce(r)
        for p in pending.values():
            self.results[p.job.id].to(JobStatus.FAILED, "post step did not finish within an hour")
            self.announce(self.results[p.job.id])
