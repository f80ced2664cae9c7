"""Timed backend for benchmarks: sleeps a per-job clip time (no CPU) and returns tiny flat frames."""

from __future__ import annotations

import hashlib
import time

import numpy as np

from pipeline.backends.base import Backend, BackendSpec, ClipOutput, ClipRequest

BASE_CLIP_S = 0.05  # default sleep per clip when settings.seconds_per_clip has no "timed" entry
SPREAD = (0.75, 1.25)  # clip time varies per job (sizes, steps and hardware differ across a real catalog)


def clip_factor(job_id: str) -> float:
    """A job's clip-time multiplier, drawn deterministically from its id so the bench and backend agree."""
    u = int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:8], "big") / 2**64
    return SPREAD[0] + (SPREAD[1] - SPREAD[0]) * u


def clip_seconds(job_id: str, base_s: float) -> float:
    return base_s * clip_factor(job_id)


class TimedBackend(Backend):
    """Costs wall time, not CPU: what a GPU render looks like to the orchestrator."""

    spec = BackendSpec(name="timed", version="1", fps=16, clip_frames=80, first_clip_frames=80, tail_frames=1,
                       size_divisor=16)

    def load(self, device: str = "cpu") -> None:
        per = getattr(self.settings, "seconds_per_clip", None) or {}
        self.base_s = float(per.get("timed", BASE_CLIP_S))
        self.loaded = True

    def render_clip(self, ctx, clip: ClipRequest, tail: np.ndarray | None) -> ClipOutput:
        time.sleep(clip_seconds(ctx.job_id, self.base_s))
        # a flat grey per clip: cheap to make and to encode, still a valid frame-exact clip
        level = (clip.job_clip_index * 37) % 200 + 28
        frames = np.full((clip.frames, ctx.height, ctx.width, 3), level, dtype=np.uint8)
        return ClipOutput(frames=frames, tail=np.array([float(clip.index)], dtype=np.float64))
