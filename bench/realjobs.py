"""Real jobs for the worker benchmarks: speech-like audio, a presenter photo, plans from the real planner."""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test media generator is the one source of speech-like audio

import media


def speech_file(path: Path, seconds: float, seed: int) -> Path:
    """About `seconds` of narration: 3–6 s phrases with 0.4–0.8 s pauses."""
    import numpy as np

    rng = np.random.default_rng(seed)
    segs, t = [], 0.0
    while t < seconds:
        v, p = float(rng.uniform(3, 6)), float(rng.uniform(0.4, 0.8))
        v = min(v, max(0.5, seconds - t))
        segs.append((v, p if t + v + p < seconds else 0.0))
        t += v + p
    pcm, _ = media.speech(segs, seed=seed)
    return media.write_wav(path, pcm)


def plans_for(folder: Path, lengths_s: list[float], settings, *, size: str = "64*64", max_scene_s: float = 60.0,
              image_px: int = 256, backend: str = "faults") -> list:
    from orchestrator.intake.manifest import load_manifest
    from orchestrator.plan.planner import plan_jobs

    image = media.presenter(folder / "presenter.png", size=image_px)
    jobs = [{"id": f"job-{i:03d}", "audio": str(speech_file(folder / f"a{i}.wav", s, seed=i)), "seed": i}
            for i, s in enumerate(lengths_s)]
    m = media.write_manifest(folder / "bench.yaml", jobs, {"image": str(image), "size": size, "backend": backend,
                                                           "max_scene_s": max_scene_s, "output": str(folder / "out")})
    res = plan_jobs(load_manifest(str(m), None, settings).jobs, settings)
    assert not res.failed, res.problems
    return list(res.plans)


def worker_class(settings):
    import ray

    from orchestrator.render.worker import RenderWorker

    return ray.remote(RenderWorker).options(num_gpus=settings.gpus_per_actor, num_cpus=0, max_restarts=0,
                                            max_task_retries=0, max_concurrency=1)


def pool_run(plans, settings, gpus: int, on_clip=None) -> dict:
    """The actor pool: N actors started (and loaded) once, then the real Scheduler over every chain."""
    import ray

    from orchestrator.render.scheduler import Scheduler

    t0 = time.monotonic()
    cls = worker_class(settings)
    actors = [cls.remote(settings, ("faults",)) for _ in range(gpus)]
    sched = Scheduler(settings, settings.work, actors, on_clip=on_clip or (lambda js, r: None))
    sched.add_jobs(plans, {})
    sched.run()
    wall = time.monotonic() - t0
    infos = ray.get([a.info.remote() for a in actors], timeout=60)
    for a in actors:
        ray.kill(a, no_restart=True)
    return {"wall_s": wall, "loads": sum(sum(i["loads"].values()) for i in infos), "events": sched.events,
            "clips": sum(1 for e in sched.events if e[1] == "done")}
