"""A run's units of work as the scheduler sees them: clip chains in queue order, per-job state, the budget check."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.settings import Settings
from orchestrator.workarea.layout import first_missing
from orchestrator.plan.records import JobPlan, ScenePlan, expected_clip_s


@dataclass
class Chain:
    plan: JobPlan
    scene: ScenePlan
    next_done: int = 0  # first clip whose checkpoint marker is not known to exist
    next_submit: int = 0
    fresh: bool = False  # its next call is the first on a newly assigned actor (a warned actor refuses it)
    saved_ahead: set = field(default_factory=set)  # saved clips reported before an earlier one
    failed_on: dict = field(default_factory=dict)  # id(slot) → when its actor raised on this chain

    @property
    def n(self) -> int:
        return len(self.scene.clips)

    @property
    def remaining(self) -> int:
        return self.n - self.next_done

    def mark_saved(self, ci: int) -> list[int]:
        """Clip ci's marker exists; returns the clips the chain now advances over. Reports may come out of order
        (ray.wait hands back whichever result is ready): it advances over contiguous saved clips only, and never
        past one whose marker is not known to exist."""
        if ci < self.next_done:
            return []
        self.saved_ahead.add(ci)
        passed = []
        while self.next_done in self.saved_ahead:
            self.saved_ahead.discard(self.next_done)
            passed.append(self.next_done)
            self.next_done += 1
        return passed


@dataclass
class JobState:
    plan: JobPlan
    scenes_left: int
    attempts: int = 0  # application errors (lost nodes and preemptions never count)
    clips_rendered: int = 0
    gpu_s: float = 0.0
    cost_usd: float = 0.0  # its GPU-seconds at the price of the nodes that rendered them
    infra_retries: int = 0
    preemptions: int = 0
    failed: str | None = None


def queue_chains(plans: list[JobPlan], done: dict[str, dict[int, set[int]]],
                 settings: Settings) -> tuple[dict[str, JobState], list[Chain]]:
    """Job states and every unfinished chain (resuming at its first missing clip), longest first, priority first."""
    jobs, chains = {}, []
    for p in plans:
        d = done.get(p.key, {})
        js = jobs[p.job.id] = JobState(plan=p, scenes_left=0)
        for s in p.scenes:
            k = first_missing(d.get(s.index, set()), len(s.clips))
            if k < len(s.clips):
                chains.append(Chain(p, s, next_done=k, next_submit=k))
                js.scenes_left += 1
    # seconds per clip as the plan has them: learned from measured runs where there are any (orchestrator/estimates)
    chains.sort(key=lambda c: (-c.plan.job.priority, -c.remaining * expected_clip_s(c.plan, settings)))
    return jobs, chains


def over_budget(settings: Settings, ledger, jobs, running: list[Chain], chain: Chain) -> str | None:
    """A reason to start no more chains, or None: spend so far + work already committed + this chain. Spend is the
    cluster's node-hours where every node has a price (orchestrator/costs.py), else GPU-seconds at the GPU price."""
    budget = settings.budget_usd
    if budget is None:
        return None
    per_s = ledger.mean_gpu_price_per_s()
    real = ledger.spent()
    spent = real if real is not None else sum(js.cost_usd for js in jobs)
    # the nodes up now stay billed for their idle timeout once the work ends (projected; 0 unless the cloud's clock)
    tail = ledger.projected_tail() if real is not None else 0.0
    committed = sum(c.remaining * expected_clip_s(c.plan, settings) for c in running) * per_s
    this = chain.remaining * expected_clip_s(chain.plan, settings) * per_s
    if spent + tail + committed + this > budget:
        what = "node-hours" if real is not None else "GPU-seconds"
        idle = f" + idle tail ${tail:.2f} (projected)" if tail else ""
        return (f"budget ${budget:.2f} reached: spent ${spent:.2f} ({what}){idle} + committed ${committed:.2f} + "
                f"next chain ${this:.2f}; no new chains started")
    return None
