"""Sleep-based Ray actors that speak the RenderWorker protocol, and a driver for the real Scheduler over them."""

from __future__ import annotations

import os
import random
import threading
import time

from bench.common import chain_times, lower_bound, simulate
from orchestrator.render.worker import _LRU, resolve_plan
from pipeline.backends.drills.timed import clip_seconds


class SleepWorker:
    """Like RenderWorker for the scheduler, minus the work: sleeps the job's scaled clip time.
    Render starts go to a per-process log so a benchmark can count clips redone after a kill."""

    def __init__(self, base_s: float, starts_dir: str | None = None, load_s: float = 0.0):
        self.base_s, self.clips = base_s, 0
        self.plans = _LRU(64)
        self.log = open(  # noqa: SIM115 - held for the actor's life; line-buffered so a kill loses nothing
            os.path.join(starts_dir, f"{os.getpid()}.log"), "a", buffering=1) if starts_dir else None
        time.sleep(load_s)  # a restart pays the (scaled) model load again

    def ping(self) -> bool:
        return True

    def info(self) -> dict:
        return {"pid": os.getpid(), "clips": self.clips, "loads": {"timed": 1}}

    def notices(self) -> dict:
        return {"node": "bench", "interruption": None, "warning": None}

    def release(self) -> list:
        return []

    def render_clip(self, plan, si: int, ci: int, work: str, **_) -> dict:
        t0 = time.monotonic()
        plan = resolve_plan(plan, self.plans)  # the same plan hand-off as the real actor
        if self.log is not None:
            self.log.write(f"{plan.job.id} {si} {ci}\n")
        d = clip_seconds(plan.job.id, self.base_s)
        time.sleep(d)
        self.clips += 1
        return {"job": plan.job.id, "scene": si, "clip": ci, "frames": plan.scenes[si].clips[ci].frames,
                "render_s": d, "total_s": time.monotonic() - t0, "node": "bench", "pid": os.getpid()}

    def render_job(self, job_id: str, clips: int) -> float:
        """The naive order's unit: a whole job, its clips back to back on this one GPU."""
        d = clips * clip_seconds(job_id, self.base_s)
        time.sleep(d)
        self.clips += clips
        return d


def make_sleepers(n: int, base_s: float, starts_dir: str | None = None, load_s: float = 0.0) -> list:
    import ray

    cls = ray.remote(SleepWorker).options(num_gpus=1, num_cpus=0, max_restarts=-1, max_task_retries=0,
                                          max_concurrency=1)
    actors = [cls.remote(base_s, starts_dir, load_s) for _ in range(n)]
    ray.get([a.ping.remote() for a in actors], timeout=120)  # start-up is not part of any makespan
    return actors


def run_chains(plans, base_s: float, gpus: int, settings, *, kill_every_s: float = 0.0, seed: int = 0,
               starts_dir: str | None = None, load_s: float = 0.0) -> dict:
    """The real Scheduler, longest chain first, over sleep actors; optionally killing a random actor every
    kill_every_s seconds of wall time (Ray restarts it; the scheduler re-queues its chain)."""
    import ray

    from bench.common import scheduler_over

    actors = make_sleepers(gpus, base_s, starts_dir, load_s)
    sched = scheduler_over(actors, settings, "file:///nonexistent-bench-work")
    sched.add_jobs(list(plans), {})
    kills: list[float] = []
    stop = threading.Event()

    def killer():
        rnd = random.Random(seed)
        while not stop.wait(kill_every_s):
            ray.kill(rnd.choice(actors), no_restart=False)
            kills.append(time.monotonic())

    t0 = time.monotonic()
    th = threading.Thread(target=killer, daemon=True) if kill_every_s > 0 else None
    if th:
        th.start()
    sched.run()
    makespan = time.monotonic() - t0
    stop.set()
    failed = [j for j, s in sched.jobs.items() if s.failed]
    done = len(sched.events.of("done"))
    out = {"makespan_s": makespan, "clips_done": done, "failed_jobs": len(failed), "kills": len(kills),
           "lost_events": len(sched.events.of("lost")),
           "infra_retries": sum(s.infra_retries for s in sched.jobs.values())}
    _kill_and_wait(actors)
    return out


def _kill_and_wait(actors: list) -> None:
    """Kill for good and wait until each is gone: one still restarting would open its log in a folder the
    caller is about to remove."""
    import ray

    for a in actors:
        ray.kill(a, no_restart=True)
    for a in actors:
        try:
            ray.get(a.ping.remote(), timeout=30)
        except Exception:  # noqa: BLE001 - dead: what we waited for
            pass


def run_fifo(plans, base_s: float, gpus: int) -> dict:
    """Naive order: whole jobs, manifest order, each to the next free GPU (one call per job)."""
    import ray

    actors = make_sleepers(gpus, base_s)
    queue = list(plans)
    busy: dict = {}
    t0 = time.monotonic()
    while queue or busy:
        for a in actors:
            if queue and a not in busy.values():
                p = queue.pop(0)
                busy[a.render_job.remote(p.job.id, p.clips)] = a
        ready, _ = ray.wait(list(busy), num_returns=1, timeout=5)
        for r in ready:
            ray.get(r, timeout=60)
            busy.pop(r)
    makespan = time.monotonic() - t0
    for a in actors:
        ray.kill(a, no_restart=True)
    return {"makespan_s": makespan}


def efficiency_report(plans, base_s: float, gpus: int, measured: dict) -> dict:
    """Efficiency = lower bound ÷ makespan (1.0 is perfect), for every measured and simulated order."""
    lb = lower_bound(plans, base_s, gpus)
    sim = simulate(plans, base_s, gpus)
    rep = {"bound": lb, "clip_s_scaled": base_s, "chains": len(chain_times(plans, base_s))}
    for k, v in measured.items():
        rep[k] = {**v, "efficiency": lb["bound_s"] / v["makespan_s"]}
    rep["simulated_zero_overhead"] = {k: {"makespan_s": v, "efficiency": lb["bound_s"] / v} for k, v in sim.items()}
    return rep
