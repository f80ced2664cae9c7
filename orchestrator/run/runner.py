"""One run of a manifest, as numbered steps: admit, plan, lease, render, publish, report. Every job ends the run in
a terminal status, and an interrupted run still records itself, reports and says how to resume."""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import uuid
from collections import Counter

from core.errors import InterruptedRun, Problem
from core.settings import Settings
from infra.storage import parse
from orchestrator.deliver.outputs import lease_names, output_uris, published_key, replace_problem, report_problem
from orchestrator.deliver.post import post_current
from orchestrator.intake.admission import admit
from orchestrator.intake.manifest import check_run_id
from orchestrator.plan.planner import plan_jobs
from orchestrator.plan.records import JobPlan
from orchestrator.render.events import EventLog
from orchestrator.render.pool import Pool
from orchestrator.render.runtime import Runtime
from orchestrator.render.scheduler import Scheduler
from orchestrator.run.publisher import Publisher, settle
from orchestrator.run.results import JobResult, JobStatus, Progress, RunResult, run_cost
from orchestrator.run.state import RunState
from orchestrator.workarea.layout import WorkArea
from orchestrator.workarea.leases import RunLeases

log = logging.getLogger("s2v.runner")
S = JobStatus


def render(location: str, settings: Settings, *, force: bool = False, cli_defaults: dict | None = None,
           progress: Progress | None = None, run_id: str | None = None, runtime: Runtime | None = None,
           gate=None) -> RunResult:
    """Render every job of a manifest (see Run)."""
    return Run(location, settings, force=force, cli_defaults=cli_defaults, progress=progress, run_id=run_id,
               runtime=runtime, gate=gate).execute()


class Run:
    """runtime: where the chains render; None is Ray (the embedded local instance, or the cluster settings name).
    gate: plan → None to render it, or why it waits (`--approved-only`: orchestrator/review/store.py)."""

    def __init__(self, location: str, settings: Settings, *, force: bool = False, cli_defaults: dict | None = None,
                 progress: Progress | None = None, run_id: str | None = None, runtime: Runtime | None = None,
                 gate=None):
        self.t0 = time.monotonic()
        self.location, self.settings, self.force, self.cli_defaults = location, settings, force, cli_defaults
        self.progress = progress or Progress()
        self.run_id = check_run_id(run_id) if run_id else time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        self.rt = runtime
        self.gate = gate
        self.work = WorkArea.at(settings.work, settings)
        self.results: dict[str, JobResult] = {}
        self.problems: list[Problem] = []
        self.todo: list[JobPlan] = []  # to render
        self.reposts: list[JobPlan] = []  # published, but captions or renditions changed: the post step alone
        self.state = RunState(self.work, self.run_id, location, self.results)
        self.leases = RunLeases(self.work, self.run_id, settings, names=lease_names)
        self.hook = None
        self.publisher: Publisher | None = None
        self.actors: list[dict] = []
        self.events: list = []
        self.cost: dict = {}
        self.capacity: dict = {}
        self.done: dict[str, dict[int, set[int]]] = {}  # job key → scene → clips checkpointed already
        self.interrupted = False

    def execute(self) -> RunResult:
        jobs = self.admit()  # 1. the manifest's rows, checked; bad ones are results already
        self.plan(jobs)  # 2. scenes and chains per job; what is published already is skipped or reposted
        self.lease()  # 3. the job keys this run renders, so that no other run renders them at once
        try:
            with self.session():
                self.render()  # 4. chains on the GPUs; each job is stitched the moment its last chain is saved
                self.publish()  # 5. the stitches still running, then the reposts
        except KeyboardInterrupt:
            self.interrupt()
        finally:
            self.release()
        return self.report()  # 6. state, report, webhook: the run's account of itself

    # ---------- 1. admit ----------
    def admit(self) -> list:
        adm = admit(self.location, self.settings, self.cli_defaults)
        self.problems += adm.problems
        valid = {j.id for j in adm.jobs}
        for b in adm.bad:
            # an empty or duplicate id must neither take a valid job's entry nor be lost: key it by its row then
            label = b.label
            key = label if label and label not in valid and label not in self.results else \
                f"{label or '(no id)'} @ {b.where}"
            self.results[key] = JobResult(id=key, status=S.INVALID, reason=b.reason(), source=b.where, row_id=b.id)
        return list(adm.jobs)

    # ---------- 2. plan ----------
    def plan(self, jobs: list) -> None:
        planned = plan_jobs(jobs, self.settings)
        self.problems += planned.problems
        where = {j.id: j.where for j in jobs}
        reports = functools.cache(lambda folder: report_problem(parse(folder), self.settings))  # once per folder
        for jid in planned.failed:
            reason = "; ".join(str(p) for p in planned.problems if p.where == where[jid])
            self.results[jid] = JobResult(id=jid, status=S.INVALID, reason=reason, source=where[jid], row_id=jid)
        for p in planned.plans:
            r = self.results[p.job.id] = JobResult(
                id=p.job.id, status=S.PENDING, key=p.key, scenes=len(p.scenes), clips=p.clips,
                duration_s=p.duration_s, output=str(output_uris(p)["mp4"]), source=p.job.where)
            current = not self.force and published_key(p, self.settings) == p.key
            if current and post_current(p, self.settings):
                r.to(S.SKIPPED)
            elif self.gate and (waits := self.gate(p)):
                r.to(S.AWAITING_REVIEW, waits)  # not rendered: its content is not approved (exit 0)
            elif refused := replace_problem(p, self.settings, self.settings.work) or reports(p.job.output):
                r.to(S.FAILED, refused)  # never replace what s2v did not publish
            else:
                (self.reposts if current else self.todo).append(p)
        self.state.write(force=True)

    # ---------- 3. lease ----------
    def lease(self) -> None:
        """A job another run is rendering (or reposting, or rendering another version of to the same output) is
        waited for or skipped (docs/storage.md), never rendered twice."""
        reposts = {p.job.id for p in self.reposts}

        def published(p: JobPlan) -> bool:  # by the run that held a lease before us
            return published_key(p, self.settings) == p.key and (p.job.id not in reposts or post_current(p, self.settings))

        keep, away = self.leases.take(self.todo + self.reposts, published=None if self.force else published)
        self.todo = [p for p in keep if p.job.id not in reposts]
        self.reposts = [p for p in keep if p.job.id in reposts]
        for jid, (status, reason) in away.items():
            self.results[jid].to(JobStatus(status), reason)
        self.state.write(force=True)
        from orchestrator.deliver.webhook import Webhook

        self.hook = Webhook.from_settings(self.settings)  # events for published and failed jobs (invalid rows send none)
        for r in [r for r in self.results.values() if r.status is S.FAILED] if self.hook else []:  # refused already
            self.hook.job(r.model_dump(mode="json"), self.run_id)

    # ---------- 4. render ----------
    @contextlib.contextmanager
    def session(self):
        """Ray (or the given runtime) while there is anything to render or repost; the progress display too."""
        if not (self.todo or self.reposts):
            yield
            return
        self.done = {} if self.force else {p.key: self.work.done_clips(p.key) for p in self.todo}
        left = sum(p.clips - sum(len(v) for v in self.done.get(p.key, {}).values()) for p in self.todo)
        self.progress.start(len(self.todo) + len(self.reposts), left)
        with contextlib.ExitStack() as stack:
            if self.rt is None:
                from orchestrator.render.ray_runtime import RayRuntime
                from orchestrator.render.session import ray_session

                stack.enter_context(ray_session(self.settings))
                self.rt = RayRuntime()
            shared = {k for k, n in Counter(p.key for p in self.todo).items() if n > 1}
            self.publisher = Publisher(self.rt, self.settings, str(self.work.root), self.results, self.announce,
                                       shared, self.leases.holder)
            yield

    def render(self) -> None:
        if not self.todo:
            return
        events = EventLog(self.rt.now)
        pool = Pool(self.settings, self.rt, events, tuple(sorted({p.job.backend for p in self.todo})))
        pub = self.publisher
        sched = Scheduler(self.settings, str(self.work.root), pool, on_clip=self._clip, on_job_ready=pub.job_ready,
                          on_job_failed=pub.job_failed, on_tick=self._tick)
        sched.add_jobs(self.todo, self.done)
        self.sched, self.pool, self.events = sched, pool, events.items
        try:
            sched.run()
        finally:
            # the actors go and the autoscaler request is dropped before stitching ends: the GPUs can scale down
            self.actors = pool.close()

    def _tick(self) -> None:
        self.publisher.collect(0)
        for jid, why in self.leases.lost_jobs().items():  # another run took over: it renders the job now
            log.warning("%s: %s", jid, why)
            self.sched.abandon(jid, why)

    def _clip(self, js, res: dict) -> None:
        self.publisher.clip_done(js)
        self.progress.clip(js.plan.job.id)
        self.state.write()

    # ---------- 5. publish ----------
    def publish(self) -> None:
        if self.publisher is None:  # nothing to render or repost
            return
        if self.todo:
            self.publisher.drain()
            for js in self.sched.jobs.values():  # whatever the scheduler never got to
                r = self.results[js.plan.job.id]
                if not r.status.is_terminal():
                    settle(r, js, S.FAILED,
                           js.failed or self.sched.stop_reason or "not rendered (run stopped before this job)")
            self.pool.ledger.finish()  # the head's and the stitching's time count too
            self.cost, self.capacity = self.pool.ledger.summary(), self.pool.capacity()
        self.publisher.repost(self.reposts)

    def announce(self, r: JobResult) -> None:
        """A job reached its final status: its lease goes, its webhook event, progress and state follow."""
        self.leases.done(r.id)
        if self.hook:
            self.hook.job(r.model_dump(mode="json"), self.run_id)
        self.progress.job(r.id, r.status.value)
        self.state.write(force=True)

    # ---------- when it stops ----------
    def how_to_resume(self) -> str:
        return "rerun without --force to resume" if self.force else "rerun the same command to resume"

    def interrupt(self) -> None:
        """Ctrl-C (SIGINT): every job not final yet is interrupted; the run still records and reports itself and
        sends run.finished. A second Ctrl-C during this stops at once."""
        self.interrupted = True
        log.warning("interrupted: recording the run and writing its report (Ctrl-C again to stop at once)")
        for r in self.results.values():
            if not r.status.is_terminal():
                r.to(S.INTERRUPTED, f"the run was interrupted; {self.how_to_resume()}")

    def release(self) -> None:
        self.progress.stop()
        self.leases.close()  # whatever happened: never leave another run waiting for a lease we no longer use
        for r in self.results.values():  # nothing leaves the run without a final status
            if not r.status.is_terminal():
                r.to(S.FAILED, r.reason or "the run ended before this job did")
        # learned estimates: this run's seconds per clip feed the next plan and budget (orchestrator/plan/estimates.py)
        from orchestrator.plan import estimates

        estimates.record_run(self.settings, self.todo, self.results, self.run_id)

    # ---------- 6. report ----------
    def report(self) -> RunResult:
        self.state.finish("interrupted" if self.interrupted else "finished")
        result = RunResult(run_id=self.run_id, manifest=self.location, jobs=self.results, problems=self.problems,
                           actors=self.actors, events=self.events, wall_s=time.monotonic() - self.t0,
                           cost=self.cost, capacity=self.capacity)
        written: list[str] = []
        if self.interrupted:  # the CLI never sees this result: the report is written here, before the webhook's wait
            from orchestrator.run.report import write_reports

            written = write_reports(result, self.settings).written
        if self.hook:
            counts = {s.value: sum(1 for r in self.results.values() if r.status is s)
                      for s in (S.PUBLISHED, S.SKIPPED, S.FAILED, S.INVALID, S.INTERRUPTED)}
            self.hook.run_finished({
                "run_id": self.run_id, "manifest": self.location,
                "status": "interrupted" if self.interrupted else "finished", **counts,
                "gpu_s": round(sum(r.gpu_s for r in self.results.values()), 3),
                "cost_usd": round(run_cost(self.results, self.cost), 6)})
            self.hook.close(timeout_s=self.settings.interrupt_webhook_wait_s if self.interrupted else 30)
        if self.interrupted:
            raise InterruptedRun(f"interrupted: run {self.run_id} stopped; every finished clip is checkpointed: "
                                 f"{self.how_to_resume()}" + (f". Report: {written[0]}" if written else ""))
        return result
