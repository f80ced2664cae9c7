"""Shared bench helpers: local Ray, the real Scheduler over actors a benchmark made itself, speech-like audio, a
synthetic 1,000-job catalog from the real planner, bounds, list scheduling."""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import platform
import sys
import time
from pathlib import Path

# Ray reads these once, at import: set before anything imports it.
os.environ.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
                   "RAY_AUTH_MODE": "disabled", "RAY_IGNORE_UNHANDLED_ERRORS": "1"})

import numpy as np

from core.settings import Settings
from orchestrator.intake.manifest import JobSpec
from orchestrator.plan.planner import chains_for
from orchestrator.plan.records import JobPlan
from orchestrator.render.events import EventLog
from orchestrator.render.pool import Pool
from orchestrator.render.ray_runtime import RayRuntime
from orchestrator.render.scheduler import Scheduler
from pipeline.audio import AudioAnalysis, cut_points
from pipeline.backends.drills.timed import TimedBackend, clip_seconds

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test media generator is the one source of speech-like audio

import media  # noqa: E402

# Wan 2.2 S2V 14B, one 80-frame clip on one H100 (the settings' default, docs/benchmarks.md section 8): the time
# being scaled
REAL_CLIP_S = Settings.model_fields["seconds_per_clip"].default_factory()["wan-s2v"]


def machine() -> dict:
    mem = 0
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        pass
    return {"cpus": os.cpu_count(), "mem_gib": round(mem / 2**30, 1), "python": sys.version.split()[0],
            "platform": platform.platform(), "gpu": _gpu_name()}


def _gpu_name() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - no torch or a broken driver both mean "no GPU" for the report
        return None


def start_ray(gpus: int, cpus: int = 2) -> bool:
    """A local Ray with `gpus` logical GPUs; True when this call started it (the caller shuts down only what it
    started: a smoke test's shared Ray stays up for the next test)."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(address="local", num_gpus=gpus, num_cpus=cpus, include_dashboard=False,
             _node_ip_address="127.0.0.1", log_to_driver=False, configure_logging=False)
    return True


class GivenActors(RayRuntime):
    """Ray, with the render actors a benchmark started (and loaded) itself before its clock runs: the pool takes
    them in order instead of starting its own, and the cluster's GPUs are those actors."""

    def __init__(self, actors: list):
        super().__init__()
        self.given, self.left = list(actors), list(actors)

    def start_actor(self, settings, backends, resources=None):
        if not self.left:
            raise RuntimeError(f"the benchmark gave {len(self.given)} actor(s) and the pool asked for more")
        return self.left.pop(0)

    def cluster_gpus(self) -> float:
        return float(len(self.given))


def scheduler_over(actors: list, settings, work: str, backends: tuple[str, ...] = (), **callbacks) -> Scheduler:
    """The real Scheduler and a static Pool over the benchmark's own actors (events on the wall clock)."""
    rt = GivenActors(actors)
    pool = Pool(settings, rt, EventLog(rt.now), backends, elastic=False)
    return Scheduler(settings, work, pool, **callbacks)


def speech_file(path: Path, seconds: float, seed: int) -> Path:
    """About `seconds` of narration: 3–6 s phrases with 0.4–0.8 s pauses."""
    rng = np.random.default_rng(seed)
    segs, t = [], 0.0
    while t < seconds:
        v, p = float(rng.uniform(3, 6)), float(rng.uniform(0.4, 0.8))
        v = min(v, max(0.5, seconds - t))
        segs.append((v, p if t + v + p < seconds else 0.0))
        t += v + p
    pcm, _ = media.speech(segs, seed=seed)
    return media.write_wav(path, pcm)


def emit(name: str, result: dict, out: str | None = None) -> dict:
    """Print the result as JSON (and save it) so docs/benchmarks.md quotes numbers, not impressions."""
    doc = {"benchmark": name, "machine": machine(), "when": time.strftime("%Y-%m-%d %H:%M:%S"), **result}
    text = json.dumps(doc, indent=1, default=float)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    return doc


# ---------- synthetic catalog ----------

def synthetic_analysis(duration_s: float, rng: np.random.Generator, fps: int = 16) -> AudioAnalysis:
    """Speech-like pause structure without audio: 2–15 s of speech, then a 0.15–1.5 s pause (short ones fall
    under min_pause_s and do not count, as in real narration)."""
    frames = round(duration_s * fps)
    pauses, t = [], 0.0
    while True:
        t += rng.uniform(2.0, 15.0)
        p = rng.uniform(0.15, 1.5)
        if t + p >= duration_s:
            break
        if p >= 0.3:
            pauses.append((t, t + p))
        t += p
    energy = rng.uniform(0.01, 0.3, size=frames)
    return AudioAnalysis(duration_s, int(duration_s * 16000), fps, frames, tuple(pauses), energy)


def catalog(n_jobs: int = 1000, seed: int = 7, min_s: float = 30.0, max_s: float = 1200.0,
            max_scene_s: float = 60.0) -> list[JobPlan]:
    """n_jobs plans through the real cut_points + chains_for. Lengths are log-uniform over [min_s, max_s]:
    many short lessons, a long tail of long ones, as in e-learning catalogs."""
    spec = TimedBackend.spec
    rng = np.random.default_rng(seed)
    plans = []
    for i in range(n_jobs):
        dur = float(np.exp(rng.uniform(np.log(min_s), np.log(max_s))))
        a = synthetic_analysis(dur, rng, spec.fps)
        job = JobSpec(id=f"job-{i:04d}", audio=f"file:///bench/a{i}.wav", image="file:///bench/p.png",
                      backend="timed", seed=i, size="64*64", max_scene_s=max_scene_s)
        cuts = cut_points(a, job.max_scene_s, job.min_scene_s, spec)
        key = hashlib.sha256(f"{job.id}/{seed}".encode()).hexdigest()[:24]
        plans.append(JobPlan(job=job, key=key, backend_version=spec.version, fps=spec.fps, duration_s=dur,
                             frames=a.frames, width=64, height=64, audio_sha256="0" * 64, image_sha256="0" * 64,
                             pose_sha256=None, scenes=chains_for(a.frames, cuts, spec, job.seed)))
    return plans


def chain_times(plans: list[JobPlan], base_s: float) -> list[tuple[str, int, float]]:
    """(job id, scene index, seconds) per chain."""
    return [(p.job.id, s.index, len(s.clips) * clip_seconds(p.job.id, base_s)) for p in plans for s in p.scenes]


def lower_bound(plans: list[JobPlan], base_s: float, gpus: int) -> dict:
    ch = chain_times(plans, base_s)
    total = sum(t for _, _, t in ch)
    longest = max(t for _, _, t in ch)
    return {"total_clip_s": total, "longest_chain_s": longest, "bound_s": max(total / gpus, longest)}


def list_schedule(durations: list[float], gpus: int) -> float:
    """Makespan of greedy list scheduling (each item to the first free GPU, in the given order)."""
    free = [0.0] * gpus
    heapq.heapify(free)
    for d in durations:
        heapq.heappush(free, heapq.heappop(free) + d)
    return max(free)


def simulate(plans: list[JobPlan], base_s: float, gpus: int) -> dict:
    """Zero-overhead makespans of both policies: what the orders alone are worth, apart from dispatch costs."""
    ch = chain_times(plans, base_s)
    by_len = {(j, s): n for p in plans for s_ in p.scenes for j, s, n in [(p.job.id, s_.index, len(s_.clips))]}
    # the Scheduler sorts by remaining clips × expected seconds of the backend (one figure per backend)
    longest_first = [t for j, s, t in sorted(ch, key=lambda c: -by_len[(c[0], c[1])])]
    fifo_jobs = [sum(len(s.clips) for s in p.scenes) * clip_seconds(p.job.id, base_s) for p in plans]
    return {"chains_longest_first_s": list_schedule(longest_first, gpus), "fifo_whole_jobs_s": list_schedule(fifo_jobs, gpus)}


def catalog_stats(plans: list[JobPlan]) -> dict:
    durs = [p.duration_s for p in plans]
    return {"jobs": len(plans), "scenes": sum(len(p.scenes) for p in plans), "clips": sum(p.clips for p in plans),
            "audio_h": round(sum(durs) / 3600, 2), "min_s": round(min(durs), 1), "max_s": round(max(durs), 1),
            "median_s": round(float(np.median(durs)), 1)}
