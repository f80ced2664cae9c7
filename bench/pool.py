"""Benchmark 2: the actor pool against one process per job (load, render, exit) — same jobs, backend, GPUs."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.common import emit, start_ray
from bench.realjobs import plans_for, pool_run, worker_class

# 5–30 s of narration: 1–6 clips a job, the short end of a lesson catalog, where a per-job load hurts most
DEFAULT_LENGTHS = [5, 12, 28, 8, 20, 15, 30, 6, 24, 10, 18, 26, 9, 14, 22, 7]


def per_job_run(plans, settings, gpus: int) -> dict:
    """Like looping the official generate.py on each GPU: a fresh process per job loads the model, renders
    the job's clips in order, and exits. Up to `gpus` jobs at once, in manifest order."""
    import ray

    cls = worker_class(settings)
    queue, running = list(plans), {}  # ref of the job's last clip → (actor, plan)
    loads = 0
    t0 = time.monotonic()

    def start(p):
        a = cls.remote(settings, ("faults",))
        last = None
        for s in p.scenes:  # one process renders its job serially, as the official loop does
            for c in s.clips:
                last = a.render_clip.remote(p, s.index, c.index, settings.work)
        running[last] = a

    while queue or running:
        while queue and len(running) < gpus:
            start(queue.pop(0))
            loads += 1
        ready, _ = ray.wait(list(running), num_returns=1, timeout=60)
        for r in ready:
            ray.get(r, timeout=60)
            ray.kill(running.pop(r), no_restart=True)  # exit: the model goes with the process
    return {"wall_s": time.monotonic() - t0, "loads": loads}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.pool", description=__doc__)
    ap.add_argument("--gpus", type=int, default=4)
    ap.add_argument("--clip-s", type=float, default=0.5, help="backend seconds per clip (a sleep)")
    ap.add_argument("--load-s", type=float, default=1.0, help="model load seconds per process (a sleep)")
    ap.add_argument("--lengths", default=",".join(map(str, DEFAULT_LENGTHS)), help="seconds of audio per job")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    import ray

    from core.settings import Settings

    lengths = [float(x) for x in a.lengths.split(",")]
    with tempfile.TemporaryDirectory(prefix="s2v-bench-pool-") as tmp:
        settings = Settings(gpus=a.gpus, work=str(Path(tmp, "work")), cache_dir=Path(tmp, "cache"),
                            faults=[{"action": "slow", "seconds": a.clip_s, "load_s": a.load_s}],
                            faults_dir=str(Path(tmp, "faults")), seconds_per_clip={"faults": a.clip_s})
        plans = plans_for(Path(tmp), lengths, settings)
        start_ray(a.gpus)
        try:
            pool = pool_run(plans, settings, a.gpus)
            pool.pop("events")
            # a fresh work area: the per-job run must not find the pool's checkpoints
            per_job = per_job_run(plans, settings.model_copy(update={"work": str(Path(tmp, "work2"))}), a.gpus)
        finally:
            ray.shutdown()
    clips = sum(p.clips for p in plans)
    # the real cost of a clip (backend + encode + checkpoint), from the pool, whose actors load once each
    clip_eff = (pool["wall_s"] - a.load_s) * a.gpus / clips
    # what a per-job process costs beyond its clips: start-up + imports + load, measured
    per_job_fixed = (per_job["wall_s"] * a.gpus - clips * clip_eff) / len(plans)
    res = {"gpus": a.gpus, "jobs": len(plans), "clips": clips, "clip_s": a.clip_s, "load_s": a.load_s,
           "pool": {**pool, "clips_per_s": clips / pool["wall_s"]},
           "per_job_process": {**per_job, "clips_per_s": clips / per_job["wall_s"]},
           "throughput_ratio": per_job["wall_s"] / pool["wall_s"],
           "clip_effective_s": clip_eff, "per_job_fixed_s": per_job_fixed, "mean_clips_per_job": clips / len(plans),
           # ratio ≈ (fixed + n·c) / (n·c) for jobs of n clips: 5× needs jobs of at most this many clips
           "clips_per_job_for_5x": per_job_fixed / (4 * clip_eff)}
    return emit("pool", res, a.out)


if __name__ == "__main__":
    main()
