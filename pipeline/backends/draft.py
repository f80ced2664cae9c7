"""Draft backend: a deterministic CPU proof render (no torch) for checking timing, cuts and sync before GPUs."""

from __future__ import annotations

import math

import numpy as np

from pipeline.backends.base import Backend, BackendSpec, ClipOutput, ClipRequest, SceneInput


def load_fitted_image(path: str, width: int, height: int) -> np.ndarray:
    """Resize so the image covers width×height, then centre crop (the official Wan preprocessing)."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        scale = max(width / im.width, height / im.height)
        size = (max(width, round(im.width * scale)), max(height, round(im.height * scale)))
        im = im.resize(size, Image.Resampling.LANCZOS)
        left, top = (im.width - width) // 2, (im.height - height) // 2
        return np.asarray(im.crop((left, top, left + width, top + height)))


def frame_levels(audio: np.ndarray, frames: int, fps: int, sample_rate: int) -> np.ndarray:
    """Loudness per video frame in [0, 1] (RMS, scaled by the scene's loud end)."""
    spf = sample_rate // fps
    a = np.zeros(frames * spf, dtype=np.float32)
    n = min(a.size, audio.size)
    a[:n] = audio[:n]
    rms = np.sqrt(np.mean(a.reshape(frames, spf).astype(np.float64) ** 2, axis=1))
    ref = np.percentile(rms, 98) if rms.size else 0.0
    return np.clip(rms / ref, 0.0, 1.0) if ref > 1e-6 else np.zeros_like(rms)


def timecode(frame: int, fps: int) -> str:
    s, f = divmod(frame, fps)
    m, s = divmod(s, 60)
    h, m = divmod(m, 60)
    return f"{h:02d}:{m:02d}:{s:02d}:{f:02d}"


class _Scene:
    def __init__(self, inp: SceneInput, base: np.ndarray, levels: np.ndarray, scenes_hint: str):
        self.inp, self.base, self.levels, self.label = inp, base, levels, scenes_hint


class DraftBackend(Backend):
    """Presenter photo with an audio-driven zoom pulse and level meter, burned-in id, scene/clip and timecode.
    Its tail is the chain's motion state (drift phase, smoothed level): clip k+1 continues clip k exactly."""

    spec = BackendSpec(name="draft", version="1", fps=16, clip_frames=80, first_clip_frames=80, tail_frames=1,
                       size_divisor=16, id_in_pixels=True)

    def load(self, device: str = "cpu") -> None:
        from PIL import ImageFont

        try:
            self.font = ImageFont.load_default(size=14)
        except TypeError:  # Pillow without FreeType
            self.font = ImageFont.load_default()
        self.loaded = True

    def prepare_scene(self, scene: SceneInput) -> _Scene:
        base = load_fitted_image(scene.image_path, scene.width, scene.height)
        total = sum(scene.clip_frames)
        levels = frame_levels(np.asarray(scene.audio), total, self.spec.fps, self.spec.sample_rate)
        return _Scene(scene, base, levels, f"scene {scene.scene_index + 1}")

    def render_clip(self, ctx: _Scene, clip: ClipRequest, tail: np.ndarray | None) -> ClipOutput:
        from PIL import Image, ImageDraw

        inp = ctx.inp
        if clip.frames <= 0:
            raise ValueError("a clip needs at least one frame")
        phase, smooth = (0.0, 0.0) if tail is None else (float(tail[0]), float(tail[1]))
        h, w = ctx.base.shape[:2]
        src = Image.fromarray(ctx.base)
        out = np.empty((clip.frames, h, w, 3), dtype=np.uint8)
        rng = np.random.default_rng(clip.seed)
        drift_speed = 0.03 + 0.02 * rng.random()  # seeded: a different seed gives visibly different motion
        for j in range(clip.frames):
            sf = clip.scene_frame_start + j
            level = float(ctx.levels[sf]) if sf < ctx.levels.size else 0.0
            smooth = 0.6 * smooth + 0.4 * level
            phase += drift_speed
            zoom = 1.06 + 0.08 * smooth  # never 1: the drift needs room inside the photo
            cw, ch = w / zoom, h / zoom
            cx = w / 2 + 0.02 * w * math.sin(phase)
            cy = h / 2 + 0.015 * h * math.cos(phase * 0.7) - 0.02 * h * smooth
            cx = min(max(cx, cw / 2), w - cw / 2)
            cy = min(max(cy, ch / 2), h - ch / 2)
            box = (cx - cw / 2, cy - ch / 2, cx + cw / 2, cy + ch / 2)
            im = src.resize((w, h), Image.Resampling.BILINEAR, box=box)
            d = ImageDraw.Draw(im)
            job_frame = inp.start_frame + sf
            d.rectangle((0, 0, w, 38), fill=(0, 0, 0))
            d.text((6, 2), f"{inp.job_id}", fill=(255, 255, 255), font=self.font)
            d.text((6, 19), f"{ctx.label} clip {clip.index + 1}  {timecode(job_frame, self.spec.fps)}  f{job_frame}",
                   fill=(255, 220, 0), font=self.font)
            bar = int((w - 12) * smooth)
            d.rectangle((6, h - 14, w - 6, h - 6), fill=(30, 30, 30))
            if bar > 0:
                d.rectangle((6, h - 14, 6 + bar, h - 6), fill=(40, 220, 90))
            out[j] = np.asarray(im)
        return ClipOutput(frames=out, tail=np.array([phase, smooth], dtype=np.float64))
