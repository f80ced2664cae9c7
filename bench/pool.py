"""Benchmark 2: what the actor pool buys — (a) one long lecture's latency on N GPUs against one process rendering
it alone, (b) a catalog's makespan against one process per job — at real ratios of load time to clip time."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.common import emit, start_ray
from bench.common import media, speech_file

# Real figures the scaled runs keep the ratios of (estimates, see docs/benchmarks.md section 2):
REAL = {"clip_40_steps_s": 360.0,  # Wan 2.2 S2V 14B, 832×480, 40 steps with CFG, one H100 (FLOP count)
        "clip_4_steps_s": 20.0,  # the same with a 4-step distillation LoRA, guidance 1 (one pass per step)
        "job_fixed_s": 120.0}  # a fresh process per job: start, imports, CUDA init, ~45 GB of weights read
# lesson lengths (s) of the catalog: a real e-learning mix, most 2–8 minutes, a few long ones
CATALOG_S = [120, 300, 180, 480, 240, 600, 150, 360, 210, 900, 270, 420, 135, 330, 195, 720]


def _actors(settings, n: int, kind: str) -> list:
    """n started actors: "real" = the RenderWorker with the timed backend (real encode and checkpoint per clip),
    "sleep" = bench.sleepers.SleepWorker (the same clip sleeps, no CPU work: the orchestration alone)."""
    import ray

    cls = _worker_class(kind)
    actors = [cls.remote(settings, ("timed",)) if kind == "real" else cls.remote(settings.seconds_per_clip["timed"])
              for _ in range(n)]
    ray.get([a.ping.remote() for a in actors], timeout=300)  # process start-up: not part of any figure
    return actors


def _worker_class(kind: str):
    import ray

    from bench.sleepers import SleepWorker
    from orchestrator.render.worker import RenderWorker

    class LoadingWorker(RenderWorker if kind == "real" else SleepWorker):
        """The actor, plus `load()`: it holds the GPU for the scaled fixed cost of a fresh process (start, imports,
        weights) without starting one — a Ray process start on this box is seconds, unscaled, and would drown
        the scaled figures."""

        def load(self, seconds: float) -> None:
            time.sleep(seconds)
            self.fresh_loads = getattr(self, "fresh_loads", 0) + 1

        def fresh(self) -> int:
            return getattr(self, "fresh_loads", 0)

    return ray.remote(LoadingWorker).options(num_gpus=1, num_cpus=0, max_restarts=0, max_task_retries=0,
                                             max_concurrency=1)


def plan_catalog(folder: Path, lengths_s: list[float], settings, size: str = "64*64") -> list:
    """Real plans (real audio, VAD, cuts) for the timed backend; lengths repeat audio files, seeds differ."""
    from orchestrator.intake.manifest import load_manifest
    from orchestrator.plan.planner import plan_jobs

    folder.mkdir(parents=True, exist_ok=True)
    image = media.presenter(folder / "presenter.png", size=128)
    files: dict[float, Path] = {}
    for s in lengths_s:
        if s not in files:
            files[s] = speech_file(folder / f"a{len(files)}.wav", s, seed=len(files))
    jobs = [{"id": f"job-{i:03d}", "audio": str(files[s]), "seed": i} for i, s in enumerate(lengths_s)]
    m = media.write_manifest(folder / f"bench-{len(jobs)}.yaml", jobs, {
        "image": str(image), "size": size, "backend": "timed", "output": str(folder / "out")})
    manifest = load_manifest(str(m), None, settings)
    res = plan_jobs(manifest.jobs, settings)
    assert not manifest.problems and not res.failed, (manifest.problems, res.problems)
    return list(res.plans)


def pool_run(plans, settings, gpus: int, load_s: float, kind: str = "real") -> dict:
    """N actors load once, in parallel, then the real Scheduler spreads every chain over them."""
    import ray

    from bench.common import scheduler_over

    actors = _actors(settings, gpus, kind)
    t0 = time.monotonic()
    for a in actors:
        a.load.remote(load_s)
    sched = scheduler_over(actors, settings, settings.work)
    sched.add_jobs(plans, {})
    sched.run()
    wall = time.monotonic() - t0
    loads = sum(ray.get([a.fresh.remote() for a in actors], timeout=60))
    for a in actors:
        ray.kill(a, no_restart=True)
    return {"wall_s": wall, "loads": loads, "clips": len(sched.events.of("done"))}


def per_job_run(plans, settings, gpus: int, load_s: float, kind: str = "real") -> dict:
    """Like looping the official generate.py on each GPU: per job, a fresh load, then the job's clips in order on
    that one GPU; up to `gpus` jobs at once, in manifest order. One job on one GPU = "rendering it alone"."""
    import ray

    actors = _actors(settings, gpus, kind)
    queue, running, loads, clips = list(plans), {}, 0, 0  # ref of a job's last clip → actor
    t0 = time.monotonic()
    while queue or running:
        for a in [a for a in actors if a not in running.values()]:
            if not queue:
                break
            p = queue.pop(0)
            a.load.remote(load_s)
            loads += 1
            last = None
            for s in p.scenes:  # one process renders its job serially, as the official loop does
                for c in s.clips:
                    last = a.render_clip.remote(p, s.index, c.index, settings.work)
                    clips += 1
            running[last] = a
        ready, _ = ray.wait(list(running), num_returns=1, timeout=60)
        for r in ready:
            ray.get(r, timeout=60)
            running.pop(r)
    wall = time.monotonic() - t0
    for a in actors:
        ray.kill(a, no_restart=True)
    return {"wall_s": wall, "loads": loads, "clips": clips}


def _bound(plans, gpus: int, other_gpus: int, clip_s: float, load_s: float) -> dict:
    """Zero-overhead makespans at the scaled times (clip_s × the job's ±25 % factor), for reference."""
    from bench.common import list_schedule
    from pipeline.backends.drills.timed import clip_seconds

    chains = sorted((len(s.clips) * clip_seconds(p.job.id, clip_s) for p in plans for s in p.scenes), reverse=True)
    jobs = [load_s + p.clips * clip_seconds(p.job.id, clip_s) for p in plans]
    return {"pool_s": load_s + list_schedule(chains, gpus), "other_s": list_schedule(jobs, other_gpus),
            "pool_lower_bound_s": load_s + max(sum(chains) / gpus, chains[0])}


def scenario(name: str, plans, settings, gpus: int, clip_s: float, real_clip_s: float, tmp: Path, alone: bool,
             kind: str = "real"):
    """One scaled scenario: real clip `real_clip_s` → clip_s, the fixed cost scaled by the same factor."""
    scale = clip_s / real_clip_s
    load_s = REAL["job_fixed_s"] * scale
    s = settings.model_copy(update={"seconds_per_clip": {"timed": clip_s}})
    pool = pool_run(plans, s.model_copy(update={"work": str(tmp / f"{name}-pool")}), gpus, load_s, kind)
    # a fresh work area: the per-job run must not find the pool's checkpoints
    other = per_job_run(plans, s.model_copy(update={"work": str(tmp / f"{name}-other")}), 1 if alone else gpus,
                        load_s, kind)
    clips = sum(p.clips for p in plans)
    return {"real_clip_s": real_clip_s, "clip_s_scaled": clip_s, "scale": scale,
            "job_fixed_s_real": REAL["job_fixed_s"], "job_fixed_s_scaled": load_s,
            "fixed_over_clip": REAL["job_fixed_s"] / real_clip_s, "jobs": len(plans), "clips": clips,
            "chains": sum(len(p.scenes) for p in plans), "longest_chain": max(len(sc.clips) for p in plans for sc in p.scenes),
            "pool": pool, ("one_process_alone" if alone else "one_process_per_job"): other,
            "speedup": other["wall_s"] / pool["wall_s"],
            "zero_overhead": _bound(plans, gpus, 1 if alone else gpus, clip_s, load_s),
            "real_makespan_h": {"pool": pool["wall_s"] / scale / 3600, "other": other["wall_s"] / scale / 3600}}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.pool", description=__doc__)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--clip-s", type=float, default=0.25, help="scaled seconds per clip (each scenario's real "
                    "clip time maps to this; the fixed cost per job is scaled by the same factor)")
    ap.add_argument("--lecture-min", type=float, default=30.0, help="minutes of the one long lecture (a)")
    ap.add_argument("--lengths", default=",".join(map(str, CATALOG_S)), help="seconds of audio per catalog job (b)")
    ap.add_argument("--steps", default="40,4", help="which clip kinds to run: 40 and/or 4")
    ap.add_argument("--actors", default="real", choices=["real", "sleep"],
                    help="real: RenderWorker + timed backend (encode, checkpoint); sleep: the orchestration alone")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    import ray

    from core.settings import Settings

    kinds = {"40": REAL["clip_40_steps_s"], "4": REAL["clip_4_steps_s"]}
    res: dict = {"gpus": a.gpus, "actors": a.actors, "real": REAL, "lecture": {}, "catalog": {}}
    with tempfile.TemporaryDirectory(prefix="s2v-bench-pool-") as t:
        tmp = Path(t)
        settings = Settings(gpus=a.gpus, work=str(tmp / "work"), cache_dir=tmp / "cache")
        lecture = plan_catalog(tmp / "lecture", [a.lecture_min * 60], settings)
        catalog = plan_catalog(tmp / "catalog", [float(x) for x in a.lengths.split(",")], settings)
        started = start_ray(a.gpus)
        try:
            for k in a.steps.split(","):
                res["lecture"][f"{k}_steps"] = scenario(f"lecture{k}", lecture, settings, a.gpus, a.clip_s,
                                                         kinds[k], tmp, alone=True, kind=a.actors)
                res["catalog"][f"{k}_steps"] = scenario(f"catalog{k}", catalog, settings, a.gpus, a.clip_s,
                                                         kinds[k], tmp, alone=False, kind=a.actors)
        finally:
            if started:
                ray.shutdown()
    return emit("pool", res, a.out)


if __name__ == "__main__":
    main()
