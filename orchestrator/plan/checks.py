"""Input checks at plan time: each row's media is decodable and usable (images, pose videos, caption files, the
Whisper model), found before any GPU is paid for; a problem names the row, the field and what to do."""

from __future__ import annotations

import json
import os
import threading
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from core.errors import MediaError, Problem, S2VError
from core.settings import Settings
from orchestrator.intake.inputs import local_path
from orchestrator.intake.manifest import JobSpec
from pipeline import delivery as dv

MIN_IMAGE_SIDE = 64


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
        with budget.hold(_decode_bytes(*key)) if budget else nothing():
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
def nothing():
    yield


def bad(job: JobSpec, field: str | None, reason: str, hint: str | None = None) -> MediaError:
    return MediaError(f"{job.source}: {reason}", [Problem(job.source, field, reason, hint)])


def input_file(job: JobSpec, field: str, settings: Settings) -> Path:
    location = getattr(job, field)
    try:
        path = local_path(location, settings)
    except S2VError as e:
        raise bad(job, field, str(e)) from None
    if not path.is_file():
        raise bad(job, field, f"{location} does not exist", "check the path (relative paths start at the manifest's folder)")
    if path.stat().st_size == 0:
        raise bad(job, field, f"{location} is empty (0 bytes)")
    return path


def pose_file(job: JobSpec, settings: Settings) -> Path:
    """The pose video must hold a decodable video stream; otherwise only the model would notice, mid-render."""
    from pipeline.media import probe

    path = input_file(job, "pose", settings)
    hint = "use an MP4/WebM of the pose sequence"
    try:
        streams = probe(path)
    except MediaError:
        raise bad(job, "pose", f"{job.pose} is not a readable video", hint) from None
    if not any(s.kind == "video" and s.width for s in streams):
        raise bad(job, "pose", f"{job.pose} has no video stream", hint)
    return path


def check_captions(job, audio_s: float, settings: Settings) -> list[Problem]:
    """Problems with a row's captions: the file (encoding, syntax, timing against the audio) or, for auto, the
    Whisper model folder and its languages."""
    where = job.source or job.id
    if job.captions_auto:
        from pipeline.asr import missing_files, whisper_language

        missing = missing_files(settings.asr_model_dir)
        if missing:
            return [Problem(where, "captions", "captions: auto needs a Whisper model folder; missing "
                            + ", ".join(missing), "set S2V_ASR_MODEL_DIR (see docs/delivery.md)")]
        gen = json.loads((Path(settings.asr_model_dir).expanduser() / "generation_config.json").read_text())
        lang = whisper_language(job.caption_language)
        known = (gen.get("lang_to_id") or {}) if gen.get("is_multilingual", True) else {"<|en|>": 0}  # *.en models
        if f"<|{lang}|>" not in known:
            return [Problem(where, "caption_language", f"the Whisper model does not know '{job.caption_language}'",
                            "use a multilingual Whisper model, or give a caption file")]
        return []
    try:
        path = local_path(job.captions, settings)
        data = path.read_bytes()
    except IsADirectoryError:
        return [Problem(where, "captions", f"{job.captions} is a folder, not a caption file")]
    except (OSError, S2VError) as e:
        return [Problem(where, "captions", f"cannot read {job.captions}: {getattr(e, 'strerror', None) or e}",
                        "check the path (relative paths start at the manifest's folder)")]
    try:
        dv.read_cues(data, Path(job.captions).name, audio_s, where)
    except MediaError as e:
        return e.problems
    return []


def check_chapters(job, audio_s: float) -> list[Problem]:
    """Chapters that start at or after the audio's end: they would never show (named, not dropped)."""
    late = [c for c in job.chapters if c.at >= audio_s]
    return [Problem(job.source or job.id, "chapters", f"chapter {c.title!r} starts at {c.at:g} s, at or after the "
                    f"end of the audio ({audio_s:.2f} s)", "give chapter times inside the lesson") for c in late]


def clear_caches() -> None:
    """Forget remembered image checks (tests that rewrite a file within one mtime tick)."""
    for f in (_decode_bytes, _image_size_cached):
        f.cache_clear()
