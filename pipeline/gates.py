"""Quality gates before publish: no black or frozen stretch longer than the settings allow."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.errors import RenderError

BLACK_LUMA = 16.0  # mean luma (0-255) at or below this is black
FROZEN_DIFF = 0.25  # mean absolute luma change per frame at or below this is frozen


def longest_runs(video: Path) -> tuple[int, int, int]:
    """(frames, longest black run, longest frozen run), measured on a small grey copy of each frame."""
    import av

    black = frozen = best_black = best_frozen = n = 0
    prev = None
    with av.open(str(video)) as c:
        for frame in c.decode(video=0):
            g = frame.reformat(width=64, height=36, format="gray").to_ndarray().astype(np.float32)
            n += 1
            black = black + 1 if g.mean() <= BLACK_LUMA else 0
            frozen = frozen + 1 if prev is not None and np.abs(g - prev).mean() <= FROZEN_DIFF else 0
            best_black, best_frozen = max(best_black, black), max(best_frozen, frozen + (1 if frozen else 0))
            prev = g
    return n, best_black, best_frozen


def check_gates(video: Path, plan, settings) -> dict:
    """Raise RenderError naming the failed gate; a gate set to 0 is off. Measured on every job either way (one
    decode at 64×36): the longest black and frozen stretches, in seconds, are the sidecar's quality notes."""
    _, black, frozen = longest_runs(video)
    fps = plan.fps
    if settings.max_black_s > 0 and black / fps > settings.max_black_s:
        raise RenderError(f"{plan.job.id}: quality gate: {black / fps:.2f}s of black frames "
                          f"(limit {settings.max_black_s}s)")
    if settings.max_frozen_s > 0 and frozen / fps > settings.max_frozen_s:
        raise RenderError(f"{plan.job.id}: quality gate: a frozen stretch of {frozen / fps:.2f}s "
                          f"(limit {settings.max_frozen_s}s)")
    return {"longest_black_s": round(black / fps, 3), "longest_frozen_s": round(frozen / fps, 3),
            "max_black_s": settings.max_black_s, "max_frozen_s": settings.max_frozen_s}
