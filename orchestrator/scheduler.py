"""Schedule clip chains on Ray GPU actors: longest first, clip by clip, bounded in flight, faults isolated."""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from orchestrator.checkpoints import WorkArea, first_missing
from orchestrator.planner import JobPlan, ScenePlan, expected_clip_s
from core.errors import ChainBroken, Preempted
from core.settings import Settings

log = logging.getLogger("s2v.scheduler")
WAIT_S = 0.5  # how long one ray.wait may block: progress and the watchdog tick at this rate
RETRY_ELSEWHERE_S = 60.0  # a chain that failed on an actor waits this long for another before going back


@dataclass
class Chain:
    plan: JobPlan
    scene: ScenePlan
    next_done: int = 0  # first clip not yet checkpointed
    next_submit: int = 0
    failed_on: dict = field(default_factory=dict)  # slot id → when its actor raised on this chain

    @property
    def n(self) -> int:
        return len(self.scene.clips)

    @property
    def remaining(self) -> int:
        return self.n - self.next_done


@dataclass
class JobState:
    plan: JobPlan
    scenes_left: int
    attempts: int = 0  # application errors (lost nodes and preemptions never count)
    clips_rendered: int = 0
    clips_redone: int = 0
    gpu_s: float = 0.0
    infra_retries: int = 0
    preemptions: int = 0
    failed: str | None = None
    workers: set = field(default_factory=set)


@dataclass
class Slot:
    """One actor and what it is doing."""

    handle: object
    chain: Chain | None = None
    inflight: list = field(default_factory=list)  # object refs, in submission order
    clip_started: float = 0.0
    healthy: bool = True
    probe: object = None
    failures: dict = field(default_factory=dict)  # job id → application failures on this actor
    watchdog_fired: bool = False
    blocked: bool = False  # taken out of rotation (fails many different jobs)
    avoid_node: str | None = None  # preempted there: usable again once restarted on another node
    retry_at: float = 0.0
    fallback: bool = False  # created on the on-demand fallback node type


class Scheduler:
    """Drives actors until every chain is checkpointed or its job has failed.

    on_clip(job_state, result) after each clip; on_job_ready(job_state) when a job's scenes are all done
    (the caller stitches it); on_job_failed(job_state)."""

    def __init__(self, settings: Settings, work: str, actors: list, *,
                 on_clip: Callable = lambda js, r: None, on_job_ready: Callable = lambda js: None,
                 on_job_failed: Callable = lambda js: None, on_tick: Callable = lambda: None,
                 make_fallback_actor: Callable[[], object] | None = None):
        self.settings, self.work = settings, work
        # an actor is usable once its first ping answers, i.e. after __init__ loaded the model: start-up and
        # model load never count against the watchdog's per-clip clock
        self.slots = [Slot(a, healthy=False, probe=a.ping.remote()) for a in actors]
        self.on_clip, self.on_job_ready, self.on_job_failed, self.on_tick = on_clip, on_job_ready, on_job_failed, on_tick
        self.make_fallback_actor = make_fallback_actor
        self.preempt_times: list[float] = []
        self.fallback_active = False
        self.stop_reason: str | None = None
        self.jobs: dict[str, JobState] = {}
        self.plan_refs: dict[tuple[str, str], list] = {}
        self.queue: deque[Chain] = deque()
        self.events: list[tuple] = []  # (t, kind, job, scene, clip) for tests and the report
        self.stopped_starting = False

    # ---------- setup ----------
    def add_jobs(self, plans: list[JobPlan], done: dict[str, dict[int, set[int]]]) -> None:
        """Queue every unfinished chain, longest first (priority first); finished jobs go straight to stitching."""
        chains = []
        for p in plans:
            d = done.get(p.key, {})
            js = JobState(plan=p, scenes_left=0)
            self.jobs[p.job.id] = js
            for s in p.scenes:
                k = first_missing(d.get(s.index, set()), len(s.clips))
                if k < len(s.clips):
                    chains.append(Chain(p, s, next_done=k, next_submit=k))
                    js.scenes_left += 1
        chains.sort(key=lambda c: (-c.plan.job.priority, -c.remaining * expected_clip_s(c.plan, self.settings)))
        self.queue.extend(chains)

    # ---------- main loop ----------
    def run(self) -> None:
        import ray

        for js in list(self.jobs.values()):
            if js.scenes_left == 0:
                self.on_job_ready(js)
        last_healthy = time.monotonic()
        while self.queue or any(s.chain or s.inflight for s in self.slots):
            if any(s.healthy for s in self.slots):
                last_healthy = time.monotonic()
            elif time.monotonic() - last_healthy > self.settings.no_worker_timeout_s:
                self._fail_queued(f"no GPU worker came back within {self.settings.no_worker_timeout_s:.0f}s")
                break
            self._assign()
            refs = [r for s in self.slots for r in s.inflight] + [s.probe for s in self.slots if s.probe is not None]
            if not refs:
                if self.queue and all(s.blocked for s in self.slots):
                    self._fail_queued("no healthy worker left (all taken out of rotation)")
                    break
                if not self.queue or self.stopped_starting:
                    break
                # work is queued but nothing is in flight (actors restarting, or a chain waiting for another
                # actor than the one that failed it): wait a tick, never spin
                time.sleep(WAIT_S)
                self._probe_all()
                self.on_tick()
                continue
            ready, _ = ray.wait(refs, num_returns=1, timeout=WAIT_S)
            for ref in ready:
                self._handle(ref)
            self._probe_all()
            self._watchdog()
            self.on_tick()

    def _assign(self) -> None:
        for slot in self.slots:
            if (self.fallback_active and slot.avoid_node and slot.chain is None and not slot.inflight
                    and self.make_fallback_actor is not None):
                self._replace_with_fallback(slot)  # its node is going away: an on-demand actor takes its place
            if not slot.healthy or slot.blocked:
                continue
            if slot.chain is None and self.queue and not self.stopped_starting:
                if self.fallback_active and not slot.fallback and self.make_fallback_actor is not None:
                    self._replace_with_fallback(slot)
                    continue
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
                slot.chain = chain
                chain.next_submit = chain.next_done
                slot.clip_started = time.monotonic()
                slot.watchdog_fired = False
            chain = slot.chain
            while chain and chain.next_submit < chain.n and len(slot.inflight) < self.settings.clips_in_flight_per_actor:
                ref = slot.handle.render_clip.remote(self._plan_handle(chain.plan), chain.scene.index,
                                                     chain.next_submit, self.work)
                slot.inflight.append(ref)
                self.events.append((time.monotonic(), "submit", chain.plan.job.id, chain.scene.index, chain.next_submit))
                chain.next_submit += 1

    def _next_chain(self, slot: Slot) -> Chain | None:
        """The first live chain this slot has not failed. One it failed goes to another actor first (even one
        still starting); it comes back here only when no other actor exists or none took it within a minute.
        Chains of failed jobs are dropped as they come up (rebuilding the queue per start is quadratic)."""
        me, now = id(slot), time.monotonic()
        others = any(not s.blocked and id(s) != me for s in self.slots)
        skipped: list[Chain] = []
        found = None
        while self.queue:
            c = self.queue.popleft()
            if self.jobs[c.plan.job.id].failed is not None:
                continue
            if me not in c.failed_on or not others or now - c.failed_on[me] > RETRY_ELSEWHERE_S:
                found = c
                break
            skipped.append(c)
        self.queue.extendleft(reversed(skipped))  # keep their places at the front
        return found

    def _plan_handle(self, plan: JobPlan) -> list:
        """[ObjectRef] of the plan, put once: nested in a list so Ray passes the ref and the actor caches the plan
        (a 20-minute job's plan pickled into every clip call cost ~2 ms per call on each side)."""
        import ray

        k = (plan.key, plan.job.id)
        if k not in self.plan_refs:
            self.plan_refs[k] = [ray.put(plan)]
        return self.plan_refs[k]

    def _slot_of(self, ref):
        for s in self.slots:
            if ref in s.inflight or ref is s.probe:
                return s
        return None

    # ---------- outcomes ----------
    def _handle(self, ref) -> None:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        slot = self._slot_of(ref)
        if slot is None:
            return
        if ref is slot.probe:
            slot.probe = None
            try:
                answer = ray.get(ref, timeout=10)
            except (RayActorError, GetTimeoutError):
                slot.retry_at = time.monotonic() + 1.0
                return
            if slot.avoid_node and isinstance(answer, dict) and answer.get("node") == slot.avoid_node:
                slot.retry_at = time.monotonic() + 2.0  # still on the node under notice
                return
            slot.healthy, slot.avoid_node = True, None
            return
        chain = slot.chain
        try:
            res = ray.get(ref, timeout=60)
        except RayActorError as e:  # the actor (or its node) died: infrastructure, not the job's fault
            self._lost_actor(slot, chain, watchdog=slot.watchdog_fired, err=e)
            return
        except RayTaskError as e:
            self._app_error(slot, chain, e)
            return
        except GetTimeoutError:
            return
        slot.inflight.remove(ref)
        js = self.jobs[chain.plan.job.id]
        js.clips_rendered += 1
        js.gpu_s += res["render_s"]
        js.workers.add(res["node"])
        chain.next_done = res["clip"] + 1
        slot.clip_started = time.monotonic()
        self.events.append((time.monotonic(), "done", chain.plan.job.id, res["scene"], res["clip"]))
        self.on_clip(js, res)
        if chain.next_done >= chain.n and not slot.inflight:
            slot.chain = None
            js.scenes_left -= 1
            if js.scenes_left == 0 and js.failed is None:
                self.on_job_ready(js)

    def _requeue(self, slot: Slot, chain: Chain | None) -> None:
        for r in slot.inflight:
            try:
                import ray

                ray.cancel(r)
            except Exception:  # noqa: BLE001 - cancelling a finished or lost ref is harmless
                pass
        slot.inflight.clear()
        slot.chain = None
        if chain is not None and self.jobs[chain.plan.job.id].failed is None:
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

    def _lost_actor(self, slot: Slot, chain: Chain | None, watchdog: bool, err) -> None:
        if chain is not None:
            js = self.jobs[chain.plan.job.id]
            js.infra_retries += 1
            if getattr(err, "preempted", False):
                js.preemptions += 1
                self._preempted()
            self.events.append((time.monotonic(), "lost", chain.plan.job.id, chain.scene.index, chain.next_done))
            if watchdog:
                self._count_failure(js, f"clip {chain.next_done} of scene {chain.scene.index} ran past the watchdog limit")
        self._requeue(slot, chain)
        slot.healthy = False
        slot.probe = slot.handle.ping.remote()

    def _app_error(self, slot: Slot, chain: Chain, e) -> None:
        cause = e.cause if getattr(e, "cause", None) is not None else e
        js = self.jobs[chain.plan.job.id]
        if isinstance(cause, ChainBroken):
            self._requeue(slot, chain)
            return
        if isinstance(cause, Preempted):
            js.preemptions += 1
            self.events.append((time.monotonic(), "preempted", chain.plan.job.id, chain.scene.index, chain.next_done))
            self._requeue(slot, chain)
            slot.healthy = False  # a node under notice takes no new chain
            slot.avoid_node = cause.node or None
            slot.probe = slot.handle.info.remote()
            self._preempted()
            return
        reason = f"{type(cause).__name__}: {cause}"
        self.events.append((time.monotonic(), "error", chain.plan.job.id, chain.scene.index, chain.next_done))
        slot.failures[js.plan.job.id] = slot.failures.get(js.plan.job.id, 0) + 1
        chain.failed_on[id(slot)] = time.monotonic()
        self._requeue(slot, chain)
        self._count_failure(js, reason)
        if len(slot.failures) >= self.settings.blocklist_after_jobs:  # it fails many different jobs: a bad worker
            log.warning("taking an actor out of rotation after failures in jobs %s", sorted(slot.failures))
            slot.blocked = True

    def _fail_queued(self, reason: str) -> None:
        for js in {c.plan.job.id: self.jobs[c.plan.job.id] for c in self.queue}.values():
            if js.failed is None:
                js.failed = reason
                self.on_job_failed(js)
        self.queue.clear()

    def _count_failure(self, js: JobState, reason: str) -> None:
        js.attempts += 1
        if js.attempts >= self.settings.max_attempts and js.failed is None:
            js.failed = f"failed after {js.attempts} attempts: {reason}"
            self.queue = deque(c for c in self.queue if c.plan.job.id != js.plan.job.id)
            for s in self.slots:
                if s.chain is not None and s.chain.plan.job.id == js.plan.job.id:
                    self._requeue(s, None)
            self.on_job_failed(js)

    def _watchdog(self) -> None:
        import ray

        now = time.monotonic()
        for slot in self.slots:
            if not slot.inflight or slot.watchdog_fired or slot.chain is None:
                continue
            limit = max(self.settings.clip_timeout_min_s,
                        self.settings.clip_timeout_factor * expected_clip_s(slot.chain.plan, self.settings))
            if now - slot.clip_started > limit:
                log.warning("watchdog: %s clip %d ran %.0fs (limit %.0fs); restarting its actor",
                            slot.chain.plan.job.id, slot.chain.next_done, now - slot.clip_started, limit)
                slot.watchdog_fired = True
                ray.kill(slot.handle, no_restart=False)

    def _probe_all(self) -> None:
        now = time.monotonic()
        for s in self.slots:
            if not s.healthy and not s.blocked and s.probe is None and now >= s.retry_at:
                s.probe = s.handle.info.remote() if s.avoid_node else s.handle.ping.remote()

    # ---------- preemption fallback and budget ----------
    def _preempted(self) -> None:
        now = time.monotonic()
        window = self.settings.fallback_window_min * 60
        self.preempt_times = [t for t in self.preempt_times if now - t <= window] + [now]
        if (not self.fallback_active and self.make_fallback_actor is not None
                and len(self.preempt_times) >= self.settings.fallback_after_preemptions):
            log.warning("%d preemptions in %.0f min: new work goes to the on-demand node type",
                        len(self.preempt_times), self.settings.fallback_window_min)
            self.fallback_active = True

    def _replace_with_fallback(self, slot: Slot) -> None:
        import ray

        try:
            ray.kill(slot.handle, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
        slot.handle = self.make_fallback_actor()
        slot.fallback, slot.healthy, slot.avoid_node = True, False, None
        slot.probe = slot.handle.ping.remote()

    def _over_budget(self, chain: Chain) -> str | None:
        """A reason to start no more chains, or None: spend so far + work already committed + this chain."""
        budget = self.settings.budget_usd
        if budget is None:
            return None
        per_s = self.settings.price() / 3600
        exp = lambda p: expected_clip_s(p, self.settings)  # noqa: E731 - learned per plan (estimates.py)
        spent = sum(js.gpu_s for js in self.jobs.values()) * per_s
        running = sum(s.chain.remaining * exp(s.chain.plan) for s in self.slots if s.chain) * per_s
        this = chain.remaining * exp(chain.plan) * per_s
        if spent + running + this > budget:
            return (f"budget ${budget:.2f} reached: spent ${spent:.2f} + committed ${running:.2f} + next chain "
                    f"${this:.2f}; no new chains started")
        return None
