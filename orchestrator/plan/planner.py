"""Plan: decode each job's audio, find pauses, cut scenes and split them into frame-exact clip chains."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

from core.errors import ConfigError, InputError, MediaError, Problem
from core.settings import Settings
from infra.storage import uri as uris
from orchestrator.intake.inputs import sha256_file
from orchestrator.intake.manifest import JobSpec
from orchestrator.plan.checks import (MemoryBudget, bad, check_captions, check_chapters, image_size, input_file,
                                      nothing, pose_file)
from orchestrator.plan.records import ClipPlan, JobPlan, PlanResult, ScenePlan
from pipeline import audio as audio_mod
from pipeline.backends import backend_class
from pipeline.backends.base import clip_frame_counts
from pipeline.media import COLOUR

log = logging.getLogger("s2v.planner")
# The cut rule (pipeline.audio.CUT_RULE) is part of every job key. 2: cuts chosen for least waste. 3: cuts in a pause
# where rule 2 cut in speech (before long pauses; in short remainders). Only jobs whose cuts differ from rule 2 carry
# 3: the rest keep their keys, so a catalog is not re-rendered for a change that does not touch it.
PLAN_POLICY_VERSION = str(audio_mod.CUT_RULE)
AUDIO_ANALYSIS_BYTES = audio_mod.CHUNK_S * audio_mod.SR * 4 * 6  # a chunk, its float64 squares and VAD copies


def job_key(job: JobSpec, backend_version: str, audio_sha: str, image_sha: str, pose_sha: str | None,
            id_in_pixels: bool = False, weights_id: str | None = None, lora_sha: str | None = None,
            policy: str = PLAN_POLICY_VERSION) -> str:
    """Content hash of everything that changes the job's pixels (not output, priority or tags; the id only for
    backends that draw it). The weights enter by content (weights_id), never by folder name; the negative prompt
    as resolved against the backend's default."""
    ident = {
        "id": job.id if id_in_pixels else None,
        "audio": audio_sha, "image": image_sha, "pose": pose_sha,
        "prompt": job.prompt, "negative_prompt": job.negative_prompt, "seed": job.seed, "size": job.size,
        "backend": job.backend, "backend_version": backend_version,
        "policy": [policy, job.max_scene_s, job.min_scene_s, job.min_pause_s],
        "sampling": [job.steps, job.guidance, job.shift], "model": weights_id,
        "lora": [lora_sha, job.lora_scale] if lora_sha else None, "colour": COLOUR,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


def chains_for(total_frames: int, cuts: list[int], spec, seed: int) -> tuple[ScenePlan, ...]:
    bounds = [0, *cuts, total_frames]
    scenes = []
    job_clip = 0
    for si, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        clips, off = [], 0
        for ci, n in enumerate(clip_frame_counts(b - a, spec)):
            clips.append(ClipPlan(index=ci, scene_frame_start=off, frames=n, job_clip_index=job_clip,
                                  seed=(seed + job_clip) % 2**31))
            off += n
            job_clip += 1
        scenes.append(ScenePlan(index=si, start_frame=a, frames=b - a, clips=tuple(clips)))
    return tuple(scenes)


@lru_cache(maxsize=1024)
def _analysis(audio_path: str, audio_sha: str, fps: int, min_pause_s: float, max_duration_s: float):
    a = audio_mod.analyse_file(audio_path, fps, min_pause_s, max_duration_s=max_duration_s)
    if a.peak < audio_mod.SILENT_PEAK:
        raise MediaError(f"{audio_path}: the audio is silent; nothing to lip-sync")
    return a


@lru_cache(maxsize=4096)
def _cuts(a: audio_mod.AudioAnalysis, max_scene_s: float, min_scene_s: float, spec) -> tuple[tuple[int, ...], str]:
    """(cuts, the policy version they follow). Rows sharing an audio file and a policy share their cuts: the
    optimisation runs once, not once per row."""
    differs: list = []
    cuts = tuple(audio_mod.cut_points(a, max_scene_s, min_scene_s, spec, differs=differs))
    if not differs:  # rule 3 took no step of its own: rule 2 gives these cuts too
        return cuts, "2"
    before = tuple(audio_mod.cut_points(a, max_scene_s, min_scene_s, spec, rule=2))
    return cuts, PLAN_POLICY_VERSION if cuts != before else "2"


def _weights_id(job: JobSpec, settings: Settings, cls, memo: dict | None = None) -> str | None:
    """The weights folder's content fingerprint (file digests cached per file version; `memo` keeps one answer per
    folder for a whole plan_jobs call, so 10,000 rows stat the folder once). A folder this machine cannot see (a
    remote URI, a path that exists only on the GPU nodes) is identified by its location instead."""
    from pipeline.backends.weights_id import folder_fingerprint

    location = job.model_dir or settings.model_dir
    if not cls.spec.weights or not location:
        return None
    if memo is not None and (cls.spec.name, location) in memo:
        return memo[(cls.spec.name, location)]
    u = uris.parse(location)
    if u.scheme == "file" and Path(u.key).is_dir():
        root = Path(u.key)
        out = folder_fingerprint(root, cls.weights_files(root), settings.cache_dir)
    else:
        out = f"location:{u}"
    if memo is not None:
        memo[(cls.spec.name, location)] = out
    return out


def plan_job(job: JobSpec, settings: Settings, weights_memo: dict | None = None,
             budget: MemoryBudget | None = None) -> JobPlan:
    """Plan one job; raises MediaError whose Problem names the row and field on bad input."""
    try:
        cls = backend_class(job.backend)
    except InputError as e:
        raise bad(job, "backend", str(e)) from None
    spec = cls.spec
    if job.negative_prompt is None:  # resolved here, so the key, the sidecar and the actor all see the same text
        job = job.model_copy(update={"negative_prompt": spec.default_negative_prompt})
    if job.lora and not spec.lora:
        raise bad(job, "lora", f"backend {job.backend} does not apply LoRA weights", "use backend wan-s2v")
    lora_sha = sha256_file(input_file(job, "lora", settings)) if job.lora else None
    apath = input_file(job, "audio", settings)
    ipath = input_file(job, "image", settings)
    try:
        iw, ih = image_size(ipath, job.image, settings.max_image_pixels, budget)
    except MediaError as e:
        hint = ("downscale it (the model renders about 0.4 MP), or raise max_image_pixels"
                if "MP" in str(e) or "too large" in str(e) else "use a JPEG/PNG/WebP photo of the presenter")
        raise bad(job, "image", str(e), hint) from None
    pose_sha = sha256_file(pose_file(job, settings)) if job.pose else None
    a_sha, i_sha = sha256_file(apath), sha256_file(ipath)
    try:
        with budget.hold(AUDIO_ANALYSIS_BYTES) if budget else nothing():
            a = _analysis(str(apath), a_sha, spec.fps, job.min_pause_s, settings.max_duration_s)
    except MediaError as e:
        raise bad(job, "audio", str(e)) from None
    if a.frames < 1:
        raise bad(job, "audio", f"{job.audio} is shorter than one video frame")
    if job.captions:  # delivery: a bad caption file (or a missing ASR model) is this row's problem, found now
        caption_problems = check_captions(job, a.duration_s, settings)
        if caption_problems:
            raise MediaError(f"{job.source}: captions", caption_problems)
    if late := check_chapters(job, a.duration_s):
        raise MediaError(f"{job.source}: chapters", late)
    cuts, policy = _cuts(a, job.max_scene_s, job.min_scene_s, spec)
    w, h = cls.output_size((iw, ih), job.area)
    return JobPlan(
        job=job, key=job_key(job, spec.version, a_sha, i_sha, pose_sha, spec.id_in_pixels,
                             _weights_id(job, settings, cls, weights_memo), lora_sha, policy),
        backend_version=spec.version, fps=spec.fps,
        duration_s=a.duration_s, frames=a.frames, width=w, height=h, audio_sha256=a_sha, image_sha256=i_sha,
        pose_sha256=pose_sha, scenes=chains_for(a.frames, list(cuts), spec, job.seed),
        silences=audio_mod.long_silences(a, settings.long_silence_s),
    )


def plan_jobs(jobs: tuple[JobSpec, ...] | list[JobSpec], settings: Settings, workers: int | None = None) -> PlanResult:
    """Plan every job (ffmpeg decodes run in threads, within settings.plan_memory_mb); a bad job is reported, the
    others are planned — whatever goes wrong with one job, even an error nobody foresaw."""
    from orchestrator.plan import estimates

    plans: dict[str, JobPlan] = {}
    problems: list[Problem] = []
    failed: list[str] = []
    budget = MemoryBudget(settings.plan_memory_mb << 20)
    table = estimates.load(settings)

    for name in sorted({j.backend for j in jobs}):  # settings problems are the run's, not each job's
        try:
            why = backend_class(name).check_settings(settings)
        except InputError:
            continue  # an unknown backend is reported per job below
        if why:
            raise ConfigError(f"backend {name}: {why}")

    weights_memo: dict = {}

    def one(job: JobSpec):
        try:
            p = plan_job(job, settings, weights_memo, budget)
            e = table.for_plan(p, settings)
            return job, p.model_copy(update={"expected_clip_s": e.seconds, "expected_clip_source": e.source}), None
        except InputError as e:
            return job, None, e
        except Exception as e:  # noqa: BLE001 - one job's surprise is that row's problem, never the run's crash
            log.exception("planning %s failed unexpectedly", job.id)
            reason = f"could not be planned: {type(e).__name__}: {str(e)[:300]}"
            return job, None, MediaError(reason, [Problem(job.source, None, reason,
                                                          "check this row's input files; if they are fine, report "
                                                          "this as a bug with the file that triggers it")])

    with ThreadPoolExecutor(max_workers=workers or max(2, os.cpu_count() or 2)) as ex:
        for job, plan, err in ex.map(one, jobs):
            if plan is not None:
                plans[job.id] = plan
            else:
                failed.append(job.id)
                problems.extend(err.problems or [Problem(job.source, None, str(err))])
    ordered = tuple(plans[j.id] for j in jobs if j.id in plans)
    return PlanResult(plans=ordered, problems=tuple(problems), failed=tuple(failed))


def clear_caches() -> None:
    """Forget every answer the planner remembers across calls (analyses, cuts, image checks, digests): tests that
    rewrite an input within one mtime tick, or a long-lived process told that inputs changed."""
    from orchestrator.intake import inputs
    from orchestrator.plan import checks

    _analysis.cache_clear()
    _cuts.cache_clear()
    checks.clear_caches()
    inputs.clear_caches()
