"""One run of a manifest: load → plan → skip published → schedule chains → stitch + publish per job → report."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections import Counter

from pydantic import BaseModel

from orchestrator.workarea.layout import WorkArea
from core.errors import InterruptedRun, Problem, S2VError, TransientError, exit_code_for
from orchestrator.workarea.leases import RunLeases
from orchestrator.intake.manifest import check_run_id, load_manifest
from orchestrator.plan.planner import JobPlan, plan_jobs
from orchestrator.render.pool import Pool
from orchestrator.deliver.post import captions_task, deliverables, post_current
from orchestrator.deliver.publish import output_uris, prepare_audio, published_key, replace_problem, stitch_and_publish
from orchestrator.render.session import ray_session
from orchestrator.deliver.repost import run_reposts
from orchestrator.render.scheduler import JobState, Scheduler
from core.settings import Settings

log = logging.getLogger("s2v.runner")


class JobResult(BaseModel):
    id: str
    status: str  # published | skipped | failed | invalid
    reason: str | None = None
    output: str | None = None
    key: str | None = None
    scenes: int = 0
    clips: int = 0
    clips_rendered: int = 0
    retries: int = 0
    preemptions: int = 0
    gpu_s: float = 0.0
    cost_usd: float = 0.0
    duration_s: float = 0.0
    deliverables: dict[str, str] = {}  # delivery: captions, renditions, HLS published by the post step


class RunResult(BaseModel):
    run_id: str
    manifest: str
    jobs: dict[str, JobResult]
    problems: list[Problem] = []
    actors: list[dict] = []
    events: list[tuple] = []
    wall_s: float = 0.0
    cost: dict = {}  # orchestrator/costs.py summary: node-hours and their cost on a cluster, else the source
    capacity: dict = {}  # the pool: target, peak workers, on-demand fallback and why

    @property
    def exit_code(self) -> int:
        st = [j.status for j in self.jobs.values()]
        if "invalid" in st or self.problems:  # a header or defaults problem is bad input even when no row shows it
            return 2
        return 1 if "failed" in st else 0


class Progress:
    """What the runner tells the user while it works; the CLI passes a rich implementation."""

    def start(self, jobs: int, clips: int) -> None: ...
    def clip(self, job_id: str) -> None: ...
    def job(self, job_id: str, status: str) -> None: ...
    def stop(self) -> None: ...


def render(location: str, settings: Settings, *, force: bool = False, cli_defaults: dict | None = None,
           progress: Progress | None = None, run_id: str | None = None) -> RunResult:
    t_start = time.monotonic()
    progress = progress or Progress()
    run_id = check_run_id(run_id) if run_id else time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    manifest = load_manifest(location, cli_defaults, settings)
    results: dict[str, JobResult] = {}
    problems = list(manifest.problems)
    valid_ids = {j.id for j in manifest.jobs}
    for label, where in zip(manifest.bad_rows, manifest.bad_sources):
        # an empty or duplicate id must neither take a valid job's entry nor be lost: key it by its row then
        key = label if label and label not in valid_ids and label not in results else f"{label or '(no id)'} @ {where}"
        reason = "; ".join(str(p) for p in manifest.problems if p.where == where)
        results[key] = JobResult(id=key, status="invalid", reason=reason or "invalid row (see problems)")
    jobs = list(manifest.jobs)
    if jobs:
        from infra.storage.checks import check_inputs

        bad_sources: dict[str, list[Problem]] = {}
        for p in check_inputs(jobs, settings):
            bad_sources.setdefault(p.where, []).append(p)
        problems += [p for ps in bad_sources.values() for p in ps]
        for j in [j for j in jobs if j.source in bad_sources]:
            results[j.id] = JobResult(id=j.id, status="invalid", reason="; ".join(map(str, bad_sources[j.source])))
        jobs = [j for j in jobs if j.source not in bad_sources]
    planned = plan_jobs(jobs, settings)
    problems += list(planned.problems)
    source_of = {j.id: j.source for j in jobs}
    for jid in planned.failed:
        reason = "; ".join(str(p) for p in planned.problems if p.where == source_of[jid])
        results[jid] = JobResult(id=jid, status="invalid", reason=reason)
    work = WorkArea.at(settings.work, settings)
    todo: list[JobPlan] = []
    repost: list[JobPlan] = []  # published, but captions or renditions changed: the post step alone reruns
    for p in planned.plans:
        base = JobResult(id=p.job.id, status="pending", key=p.key, scenes=len(p.scenes), clips=p.clips,
                         duration_s=p.duration_s, output=str(output_uris(p)["mp4"]))
        if not force and published_key(p, settings) == p.key:
            if post_current(p, settings):
                base.status = "skipped"
            else:
                repost.append(p)  # published and current, but its captions or renditions changed
        elif refused := replace_problem(p, settings, settings.work):  # never replace what s2v did not publish
            base.status, base.reason = "failed", refused
        else:
            todo.append(p)
        results[p.job.id] = base
    state = _State(work, run_id, location, results)
    state.write(force=True)
    # leases (orchestrator/leases.py): a job another run is rendering is waited for or skipped, never rendered twice
    leases = RunLeases(work, run_id, settings)
    todo = leases.take(todo, results, published=None if force else lambda p: published_key(p, settings) == p.key)
    state.write(force=True)
    from orchestrator.deliver.webhook import Webhook

    hook = Webhook.from_settings(settings)  # events for published and failed jobs (invalid rows send none)
    for r in [r for r in results.values() if r.status == "failed"] if hook else []:  # refused before rendering
        hook.job(r.model_dump(), run_id)
    actors_info: list[dict] = []
    events: list[tuple] = []
    cost: dict = {}
    capacity: dict = {}
    # Ctrl-C (SIGINT) while rendering: the run still records itself, writes its report and sends run.finished,
    # then says how to resume. A second Ctrl-C during this cleanup stops at once.
    interrupted = False
    how = "rerun without --force to resume" if force else "rerun the same command to resume"
    try:
        if todo or repost:
            notify = lambda r: (leases.done(r.id), hook.job(r.model_dump(), run_id) if hook else None)  # noqa: E731
            done = {} if force else {p.key: work.done_clips(p.key) for p in todo}
            progress.start(len(todo) + len(repost),
                           sum(p.clips - sum(len(v) for v in done.get(p.key, {}).values()) for p in todo))
            with ray_session(settings):
                if todo:
                    actors_info, events, cost, capacity = _schedule(todo, done, settings, work, results, state,
                                                                    progress, notify)
                run_reposts(repost, settings, str(work.root), results, notify, progress)
    except KeyboardInterrupt:
        interrupted = True
        log.warning("interrupted: recording the run and writing its report (Ctrl-C again to stop at once)")
        for r in results.values():
            if r.status in ("pending", "stitching"):
                r.status, r.reason = "interrupted", f"the run was interrupted; {how}"
    finally:
        progress.stop()
        leases.close()  # whatever happened: never leave another run waiting for a lease we no longer use
        # learned estimates: this run's seconds per clip feed the next plan and budget (orchestrator/estimates.py)
        from orchestrator.plan import estimates

        estimates.record_run(settings, todo, results, run_id)
    state.finish("interrupted" if interrupted else "finished")
    result = RunResult(run_id=run_id, manifest=location, jobs=results, problems=problems, actors=actors_info,
                       events=events, wall_s=time.monotonic() - t_start, cost=cost, capacity=capacity)
    reports: list[str] = []
    if interrupted:  # the CLI never sees this result: the report is written here, before the webhook's wait
        from orchestrator.run.report import write_reports

        reports = write_reports(result, settings)
    if hook:
        counts = {st: sum(1 for r in results.values() if r.status == st)
                  for st in ("published", "skipped", "failed", "invalid", "interrupted")}
        hook.run_finished({"run_id": run_id, "manifest": location, "status": "interrupted" if interrupted else
                           "finished", **counts, "gpu_s": round(sum(r.gpu_s for r in results.values()), 3),
                           "cost_usd": round(run_cost(results, cost), 6)})
        hook.close(timeout_s=settings.interrupt_webhook_wait_s if interrupted else 30)
    if interrupted:
        raise InterruptedRun(f"interrupted: run {run_id} stopped; every finished clip is checkpointed: {how}"
                             + (f". Report: {reports[0]}" if reports else ""))
    return result


def run_cost(results: dict, cost: dict) -> float:
    """The run's spend: node-hours on a cluster (when every node had a price), else the jobs' GPU-seconds."""
    if cost.get("source") == "node-hours" and cost.get("priced"):
        return float(cost["cost_usd"])
    return sum(r.cost_usd for r in results.values())


def _schedule(todo, done, settings: Settings, work: WorkArea, results, state, progress, notify):
    import ray

    # only transient errors are worth a second stitch: a failed check or gate would fail the same way again
    stitch_task = ray.remote(stitch_and_publish).options(num_cpus=settings.stitch_cpus, max_retries=2,
                                                       retry_exceptions=[TransientError])
    backends = tuple(sorted({p.job.backend for p in todo}))
    pool = Pool(settings, backends)
    audio_task = ray.remote(prepare_audio).options(num_cpus=settings.stitch_cpus)
    audio_started: dict = {}  # job id → ref: the job's audio encodes while its clips render
    # identical rows share a job key and so its checkpoints: the first to publish must not remove them
    shared_keys = {k for k, n in Counter(p.key for p in todo).items() if n > 1}
    asr_task = captions_task(settings)
    asr_started: dict = {}  # job id → ref: `captions: auto` transcribes on a CPU while its clips render
    stitching: dict = {}  # ref → JobState

    def stats(js: JobState) -> dict:
        return {"gpu_s": round(js.gpu_s, 3), "cost_usd": round(js.cost_usd, 6),
                "clips_rendered": js.clips_rendered, "retries": js.attempts + js.infra_retries,
                "preemptions": js.preemptions, "attempts": js.attempts}

    def on_clip(js: JobState, res: dict) -> None:
        if js.plan.job.id not in audio_started:
            audio_started[js.plan.job.id] = audio_task.remote(js.plan, settings, str(work.root))
            if js.plan.job.captions_auto:
                asr_started[js.plan.job.id] = asr_task.remote(js.plan, settings, str(work.root))
        r = results[js.plan.job.id]
        r.clips_rendered, r.gpu_s = js.clips_rendered, js.gpu_s
        progress.clip(js.plan.job.id)
        state.write()

    def on_ready(js: JobState) -> None:
        results[js.plan.job.id].status = "stitching"
        # the audio task's ref as an argument: Ray starts the stitch after it, the driver never waits
        audio_ref = audio_started.get(js.plan.job.id)
        asr_ref = asr_started.get(js.plan.job.id)
        stitching[stitch_task.remote(js.plan, settings, str(work.root), stats(js), audio_ref,
                                     js.plan.key in shared_keys, asr_ref)] = js

    def on_failed(js: JobState) -> None:
        _finish(results[js.plan.job.id], js, "failed", js.failed)
        notify(results[js.plan.job.id])
        progress.job(js.plan.job.id, "failed")
        state.write(force=True)

    def collect(timeout: float) -> None:
        if not stitching:
            return
        ready, _ = ray.wait(list(stitching), num_returns=len(stitching), timeout=timeout)
        for ref in ready:
            js = stitching.pop(ref)
            try:
                meta = ray.get(ref, timeout=60)
                _finish(results[js.plan.job.id], js, "published", None)
                results[js.plan.job.id].deliverables = deliverables(meta)
            except Exception as e:  # noqa: BLE001 - one job's stitch failure never stops the run
                cause = getattr(e, "cause", None) or e
                _finish(results[js.plan.job.id], js, "failed", f"stitch/publish: {cause}")
            notify(results[js.plan.job.id])
            progress.job(js.plan.job.id, results[js.plan.job.id].status)
            state.write(force=True)

    sched = Scheduler(settings, str(work.root), pool, on_clip=on_clip, on_job_ready=on_ready,
                      on_job_failed=on_failed, on_tick=lambda: collect(0))
    sched.add_jobs(todo, done)
    try:
        sched.run()
    finally:
        # the actors go and the autoscaler request is dropped before stitching ends: the GPUs can scale down
        infos = pool.close()
    deadline = time.monotonic() + 3600
    while stitching and time.monotonic() < deadline:
        collect(1.0)
    for ref, js in stitching.items():
        _finish(results[js.plan.job.id], js, "failed", "stitch did not finish within an hour")
    for js in sched.jobs.values():
        r = results[js.plan.job.id]
        if r.status in ("pending", "stitching"):
            _finish(r, js, "failed", js.failed or sched.stop_reason or "not rendered (run stopped before this job)")
    pool.ledger.finish()  # head and stitching time count too
    capacity = {"target": pool.target, "target_source": pool.target_source, "elastic": pool.elastic,
                "peak_workers": pool.peak_workers, "actors_started": len(pool.slots),
                "ondemand": pool.ondemand_reason, "notices": pool.preemptions}
    return infos, sched.events, pool.ledger.summary(), capacity


def _finish(r: JobResult, js: JobState, status: str, reason: str | None) -> None:
    r.status, r.reason = status, reason
    r.clips_rendered, r.gpu_s = js.clips_rendered, round(js.gpu_s, 3)
    r.retries, r.preemptions = js.attempts + js.infra_retries, js.preemptions
    r.cost_usd = round(js.cost_usd, 6)


class _State:
    """Run state in the work area, throttled, so `s2v status` works from anywhere, even after a crash."""

    def __init__(self, work: WorkArea, run_id: str, manifest: str, results: dict[str, JobResult]):
        self.work, self.run_id, self.manifest, self.results = work, run_id, manifest, results
        self.last = 0.0
        self.started = time.time()
        self.announced = False  # runs/LATEST names this run once, at its start: never flipped back later

    def _doc(self, status: str) -> dict:
        return {"run_id": self.run_id, "manifest": self.manifest, "status": status, "started": self.started,
                "updated": time.time(), "host": socket.gethostname(), "pid": os.getpid(),
                "jobs": {k: v.model_dump() for k, v in self.results.items()}}

    def write(self, force: bool = False) -> None:
        if force or time.monotonic() - self.last > 2.0:
            try:
                self.work.write_state(self.run_id, self._doc("running"), latest=not self.announced)
                self.announced = True
            except S2VError as e:
                log.warning("could not write run state: %s (exit code %d)", e, exit_code_for(e))
            self.last = time.monotonic()

    def finish(self, status: str = "finished") -> None:
        self.work.write_state(self.run_id, self._doc(status), latest=not self.announced)
