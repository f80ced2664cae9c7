"""Stitch a job: concatenate its clips by stream copy, mux the original audio, check durations, make a poster."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.errors import RenderError
from pipeline.media import concat_list, count_video_frames, poster_argv, probe, run_ffmpeg, stitch_argv


@dataclass(frozen=True)
class StitchResult:
    video: Path
    poster: Path
    video_s: float
    audio_s: float
    frames: int
    width: int
    height: int


def stitch(clips: list[Path], audio_src: str, dest: Path, *, fps: int, expected_frames: int,
           expected_audio_s: float, width: int, height: int, audio_bitrate: str = "192k",
           copy_audio: bool = False) -> StitchResult:
    """clips must be in play order and encoded with identical parameters (no re-encode happens here);
    copy_audio when audio_src is already AAC."""
    if not clips:
        raise RenderError("nothing to stitch: the job has no clips")
    lst = dest.with_suffix(".concat.txt")
    lst.write_text(concat_list([str(c) for c in clips]))
    run_ffmpeg(stitch_argv(str(lst), audio_src, str(dest), audio_bitrate, copy_audio), what=f"stitching {dest.name}")
    lst.unlink(missing_ok=True)
    streams = probe(dest)
    v = next((s for s in streams if s.kind == "video"), None)
    a = next((s for s in streams if s.kind == "audio"), None)
    if v is None or a is None:
        raise RenderError(f"{dest.name}: stitched file lacks a {'video' if v is None else 'audio'} stream")
    frames = count_video_frames(dest)
    video_s = frames / fps
    tol = 1.0 / fps
    problems = []
    if frames != expected_frames:
        problems.append(f"{frames} frames, planned {expected_frames}")
    if abs(video_s - expected_audio_s) > tol:
        problems.append(f"video {video_s:.3f}s vs audio {expected_audio_s:.3f}s (more than one frame apart)")
    if abs(a.duration_s - expected_audio_s) > tol + 0.05:  # AAC priming/padding rounds to whole 1024-sample frames
        problems.append(f"muxed audio {a.duration_s:.3f}s vs source {expected_audio_s:.3f}s")
    if (v.width, v.height) != (width, height):
        problems.append(f"frame size {v.width}×{v.height}, planned {width}×{height}")
    if problems:
        raise RenderError(f"{dest.name}: output check failed: " + "; ".join(problems))
    poster = dest.with_suffix(".jpg")
    run_ffmpeg(poster_argv(str(dest), min(video_s / 2, max(0.0, video_s - 0.1)), str(poster)),
               what=f"poster for {dest.name}")
    return StitchResult(dest, poster, video_s, a.duration_s, frames, v.width, v.height)
