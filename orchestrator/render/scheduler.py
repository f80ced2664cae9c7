"""Schedule clip chains on the pool's actors: longest first, clip by clip, bounded in flight, faults isolated."""

from __future__ import annotations

import logging
from collections import deque
from typing import Callable

from core.errors import ChainBroken, CudaUnavailable, Preempted, Warned
from core.settings import Settings
from orchestrator.plan.records import JobPlan, expected_clip_s
from orchestrator.render.chains import Chain, JobState, over_budget, queue_chains
from orchestrator.render.pool import Pool
from orchestrator.render.runtime import ActorLost, CallFailed, NotReady
from orchestrator.render.slots import Slot, SlotState
from orchestrator.workarea.layout import WorkArea, first_missing

log = logging.getLogger("s2v.scheduler")
WAIT_S = 0.5  # how long one ray.wait may block: progress and the watchdog tick at this rate
RETRY_ELSEWHERE_S = 60.0  # a chain that failed on an actor waits this long for another before going back
S = SlotState


class Scheduler:
    """Drives the pool's actors until every chain is checkpointed or its job has failed.

    on_clip(job_state, result) after each clip; on_job_ready(job_state) when a job's scenes are all done
    (the caller stitches it); on_job_failed(job_state); on_tick() once per turn of the loop. Every Ray call goes
    through the pool's runtime; what happens goes to the pool's event log."""

    def __init__(self, settings: Settings, work: str, pool: Pool, *,
                 on_clip: Callable = lambda js, r: None, on_job_ready: Callable = lambda js: None,
                 on_job_failed: Callable = lambda js: None, on_tick: Callable = lambda: None):
        self.settings, self.work, self.pool = settings, work, pool
        self.rt, self.events = pool.rt, pool.events
        self.on_clip, self.on_job_ready, self.on_job_failed, self.on_tick = on_clip, on_job_ready, on_job_failed, on_tick
        self.stop_reason: str | None = None
        self.jobs: dict[str, JobState] = {}
        self.chains: dict[tuple[str, int], Chain] = {}
        self.plan_refs: dict[tuple[str, str], object] = {}
        self.queue: deque[Chain] = deque()
        self.background: list = []  # fire-and-forget calls (release), drained so their errors never echo
        self.stopped_starting = False

    @property
    def slots(self) -> list[Slot]:
        return self.pool.slots

    # ---------- setup ----------
    def add_jobs(self, plans: list[JobPlan], done: dict[str, dict[int, set[int]]]) -> None:
        """Queue every unfinished chain, longest first (priority first); finished jobs go straight to stitching."""
        jobs, chains = queue_chains(plans, done, self.settings)
        self.jobs.update(jobs)
        self.chains.update({(c.plan.job.id, c.scene.index): c for c in chains})
        self.queue.extend(chains)

    def _chains_left(self) -> int:
        """Chains that could run at once now (running ones, plus queued ones unless the run stopped starting),
        counted up to the pool's target: the pool sizes itself by min(target, this), and counting the whole
        queue on every turn of the loop made a 1,000-job catalog's dispatch cost grow with its length."""
        n = sum(1 for s in self.slots if s.chain is not None)
        if self.stopped_starting:
            return n
        cap = max(1, self.pool.target)
        for c in self.queue:
            if n >= cap:
                break
            if self.jobs[c.plan.job.id].failed is None:
                n += 1
        return n

    def _work_left(self) -> bool:
        return any(s.chain is not None or s.inflight for s in self.slots) or (
            bool(self.queue) and not self.stopped_starting)

    # ---------- main loop ----------
    def run(self) -> None:
        for js in list(self.jobs.values()):
            if js.scenes_left == 0:
                self.on_job_ready(js)
        self.pool.start(self._chains_left())
        last_worker = self.rt.now()
        while self._work_left():
            self.pool.tick(self._chains_left())
            if self.pool.workers():
                last_worker = self.rt.now()
            elif self.rt.now() - last_worker > self.settings.no_worker_timeout_s:
                self._fail_queued(f"no GPU worker came back within {self.settings.no_worker_timeout_s:.0f}s")
                break
            if self.queue and not any(s.in_rotation for s in self.slots):
                self._fail_queued(self._out_of_rotation())
                break
            self._assign()
            refs = [r for s in self.slots for r in s.inflight] + [s.probe for s in self.slots if s.probe is not None]
            refs += self.background
            if not refs:
                # work is queued but nothing is in flight (a chain waiting for another actor than the one that
                # failed it, probes not due yet): wait a tick, never spin
                self.rt.pause(WAIT_S)
            else:
                for ref in self.rt.wait(refs, timeout=WAIT_S):
                    self._handle(ref)
            self.pool.probe_all()
            self._watchdog()
            self.on_tick()

    def _out_of_rotation(self) -> str:
        broken = [s.reason for s in self.slots if s.state is S.BROKEN and s.reason]
        if broken:
            return f"no GPU worker could start: {broken[0]}"
        return "no healthy worker left (all taken out of rotation)"

    def _assign(self) -> None:
        for slot in self.slots:
            if slot.takes_chains and self.queue and not self.stopped_starting:
                chain = self._next_chain(slot)
                if chain is None:
                    continue
                over = self._over_budget(chain)
                if over:
                    self.queue.appendleft(chain)
                    self.stopped_starting = True
                    self.stop_reason = over
                    log.warning("%s", over)
                    break
                slot.assign(chain)
                chain.next_submit, chain.fresh = chain.next_done, True
                self.events.add("assign", job=chain.plan.job.id, scene=chain.scene.index, slot=self.slots.index(slot))
            self._submit(slot)

    def _submit(self, slot: Slot) -> None:
        chain = slot.chain
        if chain is None or slot.state not in (S.BUSY, S.WARNED):
            return
        while chain.next_submit < chain.n and len(slot.inflight) < self.settings.clips_in_flight_per_actor:
            ci = chain.next_submit
            # more: clip ci+1 follows on this actor, so ci's checkpoint may be written while it renders
            ref = self.rt.call(slot.handle, "render_clip", self._plan_handle(chain.plan), chain.scene.index, ci,
                               self.work, more=ci + 1 < chain.n, starts_chain=chain.fresh)
            chain.fresh = False
            slot.inflight.append(ref)
            self.events.add("submit", job=chain.plan.job.id, scene=chain.scene.index, clip=ci)
            chain.next_submit += 1

    def _next_chain(self, slot: Slot) -> Chain | None:
        """The first live chain this slot has not failed. One it failed goes to another actor first (even one
        still starting); it comes back here when every other actor failed it too, or none took it within a minute.
        Chains of failed jobs are dropped as they come up (rebuilding the queue per start is quadratic)."""
        me, now = id(slot), self.rt.now()
        skipped: list[Chain] = []
        found = None
        while self.queue:
            c = self.queue.popleft()
            if self.jobs[c.plan.job.id].failed is not None:
                continue
            if (me not in c.failed_on or now - c.failed_on[me] > RETRY_ELSEWHERE_S
                    or not any(s.in_rotation and s is not slot and id(s) not in c.failed_on for s in self.slots)):
                found = c
                break
            skipped.append(c)
        self.queue.extendleft(reversed(skipped))  # keep their places at the front
        return found

    def _plan_handle(self, plan: JobPlan):
        """The plan, shared once through the runtime: every clip call carries a handle, never the plan itself."""
        k = (plan.key, plan.job.id)
        if k not in self.plan_refs:
            self.plan_refs[k] = self.rt.share(plan)
        return self.plan_refs[k]

    # ---------- outcomes ----------
    def _handle(self, ref) -> None:
        if ref in self.background:
            self.background.remove(ref)
            try:
                self.rt.get(ref, timeout=1)
            except Exception:  # noqa: BLE001 - a release to an actor that died meanwhile: nothing to do
                pass
            return
        slot = next((s for s in self.slots if ref in s.inflight or ref is s.probe), None)
        if slot is None:
            return
        if ref is slot.probe:
            self.pool.probed(slot, ref)
            return
        chain = slot.chain
        try:
            res = self.rt.get(ref, timeout=60)
        except ActorLost as e:  # the actor (or its node) died: infrastructure, not the job's fault
            self._lost(slot, chain, e)
            return
        except CallFailed as e:
            self._app_error(slot, chain, e.cause)
            return
        except NotReady:
            return
        slot.inflight.remove(ref)
        js = self.jobs[chain.plan.job.id]
        js.clips_rendered += 1
        js.gpu_s += res["render_s"]
        js.cost_usd += res["render_s"] * self.pool.ledger.gpu_price_per_s(res.get("node"))
        slot.node = res["node"]
        slot.clip_started = self.rt.now()
        # a chain advances on checkpointed clips only (a result without "saved" was checkpointed before returning)
        for job_id, si, ci in res.get("saved", [[res["job"], res["scene"], res["clip"]]]):
            self._saved(job_id, si, ci)
        self.on_clip(js, res)
        if res.get("warning") and slot.state is S.BUSY:
            self.pool.warned(slot, "early spot warning: finishes this chain, starts no new one")
        elif not res.get("warning") and slot.state is S.WARNED:
            slot.to(S.BUSY)
            self.pool.note("cleared", "early warning passed", slot)
        if chain.next_done >= chain.n and not slot.inflight:
            slot.release()
            js.scenes_left -= 1
            if js.scenes_left == 0 and js.failed is None:
                self.on_job_ready(js)

    def _saved(self, job_id: str, si: int, ci: int) -> None:
        chain = self.chains.get((job_id, si))
        for k in chain.mark_saved(ci) if chain is not None else ():
            self.events.add("done", job=job_id, scene=si, clip=k)

    def _requeue(self, slot: Slot, chain: Chain | None) -> None:
        for r in slot.inflight:
            self.rt.cancel(r)
        slot.release()
        if chain is None or self.jobs[chain.plan.job.id].failed is not None:
            return
        # the checkpoints are the truth: a success may still sit unread behind the failure that got here first
        try:
            done = WorkArea.at(self.work, self.settings).done_clips(chain.plan.key).get(chain.scene.index, set())
            chain.next_done = max(chain.next_done, first_missing(done, chain.n))
        except Exception as e:  # noqa: BLE001 - an unreadable listing only costs a re-render
            log.warning("could not list checkpoints of %s: %s", chain.plan.job.id, e)
        if chain.next_done >= chain.n:  # everything is checkpointed after all
            js = self.jobs[chain.plan.job.id]
            js.scenes_left -= 1
            if js.scenes_left == 0:
                self.on_job_ready(js)
            return
        chain.next_submit = chain.next_done
        self.queue.appendleft(chain)  # resume first: it is already partly paid for

    def _lost(self, slot: Slot, chain: Chain | None, err: ActorLost) -> None:
        if chain is not None:
            js = self.jobs[chain.plan.job.id]
            js.infra_retries += 1
            if err.preempted:
                js.preemptions += 1
                self.pool.preempted()
            self.events.add("lost", job=chain.plan.job.id, scene=chain.scene.index, clip=chain.next_done)
        self._requeue(slot, chain)
        if slot.state is S.DRAINING:
            self.pool.retire(slot, "died under notice")
            return
        slot.to(S.LOST)
        slot.probe = self.rt.call(slot.handle, "ping")

    def _app_error(self, slot: Slot, chain: Chain, cause: BaseException) -> None:
        js = self.jobs[chain.plan.job.id]
        if isinstance(cause, ChainBroken):
            self._requeue(slot, chain)
            return
        if isinstance(cause, Warned):  # nothing was rendered: the chain goes elsewhere, the actor waits
            self._requeue(slot, chain)
            if slot.state is S.IDLE:
                self.pool.warned(slot, str(cause))
            return
        if isinstance(cause, Preempted):
            js.preemptions += 1
            self.events.add("preempted", job=chain.plan.job.id, scene=chain.scene.index, clip=chain.next_done)
            self._requeue(slot, chain)
            slot.node = cause.node or slot.node
            if slot.state in (S.IDLE, S.WARNED):
                self.pool.draining(slot, str(cause))
            return
        if isinstance(cause, CudaUnavailable):
            self._requeue(slot, chain)
            self.pool.broken(slot, cause)
            return
        reason = f"{type(cause).__name__}: {cause}"
        self.events.add("error", job=chain.plan.job.id, scene=chain.scene.index, clip=chain.next_done,
                        slot=self.slots.index(slot), detail=reason)
        slot.failures[js.plan.job.id] = slot.failures.get(js.plan.job.id, 0) + 1
        chain.failed_on[id(slot)] = self.rt.now()
        self._requeue(slot, chain)
        self._count_failure(js, reason)
        if len(slot.failures) >= self.settings.blocklist_after_jobs and slot.state in (S.IDLE, S.WARNED):
            log.warning("taking an actor out of rotation after failures in jobs %s", sorted(slot.failures))
            slot.to(S.BLOCKED, f"failed clips of jobs {sorted(slot.failures)}")
            self.pool.note("blocked", slot.reason, slot)

    def _fail_queued(self, reason: str) -> None:
        for js in {c.plan.job.id: self.jobs[c.plan.job.id] for c in self.queue}.values():
            if js.failed is None:
                js.failed = reason
                self.on_job_failed(js)
        self.queue.clear()

    def _count_failure(self, js: JobState, reason: str) -> None:
        js.attempts += 1
        if js.attempts >= self.settings.max_attempts and js.failed is None:
            self.abandon(js.plan.job.id, f"failed after {js.attempts} attempts: {reason}")

    def abandon(self, job_id: str, reason: str) -> None:
        """Stop working on a job (failed, or its lease lost to another run): its chains leave the queue and the
        actors, whose clips in flight still land their checkpoints."""
        js = self.jobs.get(job_id)
        if js is None or js.failed is not None or js.scenes_left == 0:
            return  # unknown, failed already, or stitching (the stitch checks its leases before it publishes)
        js.failed = reason
        self.queue = deque(c for c in self.queue if c.plan.job.id != job_id)
        for s in self.slots:
            if s.chain is not None and s.chain.plan.job.id == job_id:
                if s.state in (S.BUSY, S.WARNED):
                    self.background.append(self.rt.call(s.handle, "release"))  # lands its checkpoint, frees the tail
                self._requeue(s, None)
        self.on_job_failed(js)

    def _watchdog(self) -> None:
        now = self.rt.now()
        for slot in self.slots:
            if not slot.inflight or slot.chain is None or slot.state not in (S.BUSY, S.WARNED):
                continue
            chain = slot.chain
            limit = max(self.settings.clip_timeout_min_s,
                        self.settings.clip_timeout_factor * expected_clip_s(chain.plan, self.settings))
            if now - slot.clip_started <= limit:
                continue
            log.warning("watchdog: %s clip %d ran %.0fs (limit %.0fs); restarting its actor",
                        chain.plan.job.id, chain.next_done, now - slot.clip_started, limit)
            self.rt.kill(slot.handle, restart=True)
            js = self.jobs[chain.plan.job.id]
            js.infra_retries += 1
            self.events.add("lost", job=chain.plan.job.id, scene=chain.scene.index, clip=chain.next_done,
                            detail="watchdog")
            self._requeue(slot, chain)
            slot.to(S.LOST, "watchdog")
            slot.probe = self.rt.call(slot.handle, "ping")
            self._count_failure(js, f"clip {chain.next_done} of scene {chain.scene.index} ran past the watchdog limit")

    def _over_budget(self, chain: Chain) -> str | None:
        running = [s.chain for s in self.slots if s.chain is not None]
        return over_budget(self.settings, self.pool.ledger, self.jobs.values(), running, chain)
