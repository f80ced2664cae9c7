"""Plan: decode each job's audio, find pauses, cut scenes and split them into frame-exact clip chains."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from infra.storage import uri as uris
from core.errors import ConfigError, InputError, MediaError, Problem, S2VError
from orchestrator.intake.manifest import JobSpec
from core.settings import Settings
from pipeline import audio as audio_mod
from pipeline.backends import backend_class, backend_spec
from pipeline.backends.base import clip_frame_counts
from pipeline.media import COLOUR

log = logging.getLogger("s2v.planner")
PLAN_POLICY_VERSION = "2"  # bump when cutting rules change: it changes every job key (2: cuts chosen for least waste)
MIN_IMAGE_SIDE = 64
AUDIO_ANALYSIS_BYTES = audio_mod.CHUNK_S * audio_mod.SR * 4 * 6  # a chunk, its float64 squares and VAD copies


class ClipPlan(BaseModel):
    model_config = ConfigDict(frozen=True)
    index: int  # within the chain
    scene_frame_start: int
    frames: int
    job_clip_index: int
    seed: int


class ScenePlan(BaseModel):
    model_config = ConfigDict(frozen=True)
    index: int
    start_frame: int
    frames: int
    clips: tuple[ClipPlan, ...]


class JobPlan(BaseModel):
    """Everything needed to render a job; its key names checkpoints and is stored in the sidecar."""

    model_config = ConfigDict(frozen=True)
    job: JobSpec
    key: str
    backend_version: str
    fps: int
    duration_s: float
    frames: int
    width: int
    height: int
    audio_sha256: str
    image_sha256: str
    pose_sha256: str | None
    scenes: tuple[ScenePlan, ...]
    silences: tuple[tuple[float, float], ...] = ()  # stretches without speech ≥ settings.long_silence_s (report)
    expected_clip_s: float | None = None  # learned GPU-seconds per clip (estimates.py); None = settings default
    expected_clip_source: str = "default"

    @property
    def clips(self) -> int:
        return sum(len(s.clips) for s in self.scenes)


def expected_clip_s(plan: JobPlan, settings: Settings) -> float:
    """GPU-seconds one clip of this plan is expected to take: learned when measured, else the settings default."""
    return plan.expected_clip_s or settings.expected_clip_s(plan.job.backend)


class PlanResult(BaseModel):
    model_config = ConfigDict(frozen=True)
    plans: tuple[JobPlan, ...]
    problems: tuple[Problem, ...]
    failed: tuple[str, ...]  # job ids that could not be planned


def local_path(location: str, settings: Settings) -> Path:
    """A local file for an input location; remote objects go through the content-addressed cache."""
    u = uris.parse(location)
    if u.scheme == "file":
        return Path(u.key)
    from infra.storage.cache import fetch

    return fetch(str(u), settings)


@lru_cache(maxsize=4096)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    st = os.stat(path)
    return _sha256_cached(str(path), st.st_size, st.st_mtime_ns)


class MemoryBudget:
    """Bytes the planner's threads may hold in decodes at once: a job waits for room instead of every thread
    decoding a large file together. One request larger than the budget runs alone."""

    def __init__(self, limit_bytes: int):
        self.limit, self.used = limit_bytes, 0
        self.cond = threading.Condition()

    @contextmanager
    def hold(self, n: int):
        n = min(n, self.limit)
        with self.cond:
            self.cond.wait_for(lambda: self.used + n <= self.limit)
            self.used += n
        try:
            yield
        finally:
            with self.cond:
                self.used -= n
                self.cond.notify_all()


def image_size(path: Path, where: str, max_pixels: int = 89_478_485, budget: MemoryBudget | None = None
               ) -> tuple[int, int]:
    """Width and height of a fully decodable image of usable size; decoded once per file version."""
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns, max_pixels)
    try:
        with budget.hold(_decode_bytes(*key)) if budget else _nothing():
            return _image_size_cached(*key)
    except MediaError as e:
        raise MediaError(f"{where} {e}") from None


@lru_cache(maxsize=4096)
def _decode_bytes(path: str, size: int, mtime_ns: int, max_pixels: int) -> int:
    """Memory the check below decodes into, from the header alone (0 when unreadable: the check says why)."""
    try:
        (w, h), fmt = _header(path)
        return 0 if w * h > max_pixels else w * h * 4 // (64 if fmt == "JPEG" else 1)
    except Exception:  # noqa: BLE001 - any failure here is reported by _image_size_cached
        return 0


_PIL_GUARD = threading.Lock()


def _header(path: str) -> tuple[tuple[int, int], str]:
    """Size and format from the header alone. Pillow's own bomb guard refuses to even open an image over ~179 MP,
    which would hide its size from the message: it is lifted for this header read only (nothing is decoded)."""
    from PIL import Image

    with _PIL_GUARD:
        guard, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            with Image.open(path) as im:
                return im.size, im.format
        finally:
            Image.MAX_IMAGE_PIXELS = guard


@lru_cache(maxsize=4096)
def _image_size_cached(path: str, size: int, mtime_ns: int, max_pixels: int) -> tuple[int, int]:
    # a catalog names the same presenter photo on thousands of rows: decode it once, not per row
    from PIL import Image, UnidentifiedImageError

    try:
        (w, h), _ = _header(path)
        if w * h > max_pixels:
            raise MediaError(f"is {w}×{h} px ({w * h / 1e6:.0f} MP), more than the limit of "
                             f"{max_pixels / 1e6:.0f} MP (setting max_image_pixels)")
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            # JPEG decodes at 1/8 scale: the whole file is still read (truncation shows), at 1/64 of the memory
            im.draft(im.mode, (max(1, w // 8), max(1, h // 8)))
            im.load()  # verify() reads headers only: a truncated JPEG fails here, not mid-render
    except UnidentifiedImageError:
        raise MediaError("is not an image (no known image format in it)") from None
    except Image.DecompressionBombError as e:  # Pillow's ceiling (2 × its default), when max_image_pixels is above it
        raise MediaError(f"is too large to decode safely ({str(e).split(' could')[0]})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # e.g. "image file is truncated (50 bytes not processed)"
        raise MediaError(f"is not a readable image ({str(e).split(' (')[0] or type(e).__name__})") from None
    if min(w, h) < MIN_IMAGE_SIDE:
        raise MediaError(f"is {w}×{h} px; the presenter image needs at least {MIN_IMAGE_SIDE} px on each side")
    return w, h


@contextmanager
def _nothing():
    yield


def job_key(job: JobSpec, backend_version: str, audio_sha: str, image_sha: str, pose_sha: str | None,
            id_in_pixels: bool = False, weights_id: str | None = None, lora_sha: str | None = None) -> str:
    """Content hash of everything that changes the job's pixels (not output, priority or tags; the id only for
    backends that draw it). The weights enter by content (weights_id), never by folder name; the negative prompt
    as resolved against the backend's default."""
    ident = {
        "id": job.id if id_in_pixels else None,
        "audio": audio_sha, "image": image_sha, "pose": pose_sha,
        "prompt": job.prompt, "negative_prompt": job.negative_prompt, "seed": job.seed, "size": job.size,
        "backend": job.backend, "backend_version": backend_version,
        "policy": [PLAN_POLICY_VERSION, job.max_scene_s, job.min_scene_s, job.min_pause_s],
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
def _cuts(a: audio_mod.AudioAnalysis, max_scene_s: float, min_scene_s: float, spec) -> tuple[int, ...]:
    # rows sharing an audio file and a policy share their cuts: the optimisation runs once, not once per row
    return tuple(audio_mod.cut_points(a, max_scene_s, min_scene_s, spec))


def _bad(job: JobSpec, field: str | None, reason: str, hint: str | None = None) -> MediaError:
    return MediaError(f"{job.source}: {reason}", [Problem(job.source, field, reason, hint)])


def _input_file(job: JobSpec, field: str, settings: Settings) -> Path:
    location = getattr(job, field)
    try:
        path = local_path(location, settings)
    except S2VError as e:
        raise _bad(job, field, str(e)) from None
    if not path.is_file():
        raise _bad(job, field, f"{location} does not exist", "check the path (relative paths start at the manifest's folder)")
    if path.stat().st_size == 0:
        raise _bad(job, field, f"{location} is empty (0 bytes)")
    return path


def _pose_file(job: JobSpec, settings: Settings) -> Path:
    """The pose video must hold a decodable video stream; otherwise only the model would notice, mid-render."""
    from pipeline.media import probe

    path = _input_file(job, "pose", settings)
    hint = "use an MP4/WebM of the pose sequence"
    try:
        streams = probe(path)
    except MediaError:
        raise _bad(job, "pose", f"{job.pose} is not a readable video", hint) from None
    if not any(s.kind == "video" and s.width for s in streams):
        raise _bad(job, "pose", f"{job.pose} has no video stream", hint)
    return path


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
        raise _bad(job, "backend", str(e)) from None
    spec = cls.spec
    if job.negative_prompt is None:  # resolved here, so the key, the sidecar and the actor all see the same text
        job = job.model_copy(update={"negative_prompt": spec.default_negative_prompt})
    if job.lora and not spec.lora:
        raise _bad(job, "lora", f"backend {job.backend} does not apply LoRA weights", "use backend wan-s2v")
    lora_sha = sha256_file(_input_file(job, "lora", settings)) if job.lora else None
    apath = _input_file(job, "audio", settings)
    ipath = _input_file(job, "image", settings)
    try:
        iw, ih = image_size(ipath, job.image, settings.max_image_pixels, budget)
    except MediaError as e:
        hint = ("downscale it (the model renders about 0.4 MP), or raise max_image_pixels"
                if "MP" in str(e) or "too large" in str(e) else "use a JPEG/PNG/WebP photo of the presenter")
        raise _bad(job, "image", str(e), hint) from None
    pose_sha = sha256_file(_pose_file(job, settings)) if job.pose else None
    a_sha, i_sha = sha256_file(apath), sha256_file(ipath)
    try:
        with budget.hold(AUDIO_ANALYSIS_BYTES) if budget else _nothing():
            a = _analysis(str(apath), a_sha, spec.fps, job.min_pause_s, settings.max_duration_s)
    except MediaError as e:
        raise _bad(job, "audio", str(e)) from None
    if a.frames < 1:
        raise _bad(job, "audio", f"{job.audio} is shorter than one video frame")
    if job.captions:  # delivery: a bad caption file (or a missing ASR model) is this row's problem, found now
        from orchestrator.deliver.post import check_captions

        caption_problems = check_captions(job, a.duration_s, settings)
        if caption_problems:
            raise MediaError(f"{job.source}: captions", caption_problems)
    cuts = list(_cuts(a, job.max_scene_s, job.min_scene_s, spec))
    w, h = cls.output_size((iw, ih), job.area)
    return JobPlan(
        job=job, key=job_key(job, spec.version, a_sha, i_sha, pose_sha, spec.id_in_pixels,
                             _weights_id(job, settings, cls, weights_memo), lora_sha),
        backend_version=spec.version, fps=spec.fps,
        duration_s=a.duration_s, frames=a.frames, width=w, height=h, audio_sha256=a_sha, image_sha256=i_sha,
        pose_sha256=pose_sha, scenes=chains_for(a.frames, cuts, spec, job.seed),
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


def waste(plan: JobPlan) -> dict:
    """Frames the GPU renders for this plan and how many of them are thrown away: `trimmed` at scene ends (the
    last clip of a scene is rendered whole), `lead_in` at scene starts (Wan drops 3 frames of each first clip)."""
    spec = backend_spec(plan.job.backend)
    rendered = plan.clips * spec.clip_frames
    lead_in = len(plan.scenes) * (spec.clip_frames - spec.first_clip_frames)
    trimmed = sum(audio_mod.trimmed_frames(s.frames, spec.first_clip_frames, spec.clip_frames) for s in plan.scenes)
    return {"rendered_frames": rendered, "trimmed_frames": trimmed, "lead_in_frames": lead_in,
            "trimmed_share": round(trimmed / rendered, 5) if rendered else 0.0}


def estimate(plans, settings: Settings) -> dict:
    """GPU-seconds and cost per job and in total (learned seconds per clip where measured), frames thrown away,
    and long silences."""
    rows, total_s = [], 0.0
    for p in plans:
        clip_s = expected_clip_s(p, settings)
        s = p.clips * clip_s
        total_s += s
        rows.append({"id": p.job.id, "scenes": len(p.scenes), "clips": p.clips, "frames": p.frames,
                     "duration_s": round(p.duration_s, 3), **waste(p),
                     "clip_s": round(clip_s, 3), "clip_s_source": p.expected_clip_source if p.expected_clip_s else "default",
                     "gpu_s": s, "cost_usd": s / 3600 * settings.price(),
                     "silence_s": round(sum(e - a for a, e in p.silences), 3),
                     "long_silences": [[round(a, 3), round(e, 3)] for a, e in p.silences]})
    tot = {k: sum(r[k] for r in rows) for k in ("scenes", "clips", "frames", "rendered_frames", "trimmed_frames",
                                                "lead_in_frames")}
    return {"jobs": rows, "total": {"jobs": len(rows), **tot,
                                    "trimmed_share": round(tot["trimmed_frames"] / tot["rendered_frames"], 5)
                                    if tot["rendered_frames"] else 0.0,
                                    "gpu_s": total_s, "cost_usd": total_s / 3600 * settings.price(),
                                    "price_per_gpu_hour": settings.price(),
                                    "silence_s": round(sum(r["silence_s"] for r in rows), 3),
                                    "long_silence_s": settings.long_silence_s}}
