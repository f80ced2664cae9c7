"""Audio: decode to 16 kHz mono, find pauses with WebRTC VAD, choose frame-exact scene cut points inside pauses."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from core.errors import MediaError
from pipeline.media import decode_audio_argv, run_ffmpeg

SR = 16000
VAD_FRAME_MS = 30
SILENT_PEAK = 1e-4  # below this the file carries no signal at all


def decode(src: str, sample_rate: int = SR, max_duration_s: float | None = None) -> np.ndarray:
    """Decode any ffmpeg-readable audio to float32 mono; bad files raise MediaError naming the file."""
    try:
        raw = run_ffmpeg(decode_audio_argv(src, sample_rate), what=f"decoding audio {src}", media_error=True)
    except MediaError as e:
        raise _decode_failure(src, str(e)) from None
    pcm = np.frombuffer(raw, dtype="<f4").astype(np.float32, copy=False)
    if pcm.size == 0:
        raise MediaError(f"{src}: the audio has no samples (empty or not audio)")
    if not np.isfinite(pcm).all():
        raise MediaError(f"{src}: the audio contains NaN or infinite samples")
    if max_duration_s is not None and pcm.size / sample_rate > max_duration_s:
        raise MediaError(f"{src}: {pcm.size / sample_rate:.0f}s of audio exceeds the limit of {max_duration_s:.0f}s",)
    return pcm


def _decode_failure(src: str, err: str) -> MediaError:
    """ffmpeg's stderr is several lines of internal context names and addresses: say what it means instead."""
    if "matches no streams" in err:
        return MediaError(f"{src}: has no audio stream (a video without sound, or an image?)")
    lines = [re.sub(r"^(decoding audio .*?: )?(\[[^\]]*\]\s*)+", "", ln).strip() for ln in err.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("Error opening input file")]
    detail = next((ln.split(": ", 1)[-1] for ln in lines if ln.startswith("Error opening input:")),
                  lines[-1] if lines else "ffmpeg failed")
    return MediaError(f"{src}: not a readable audio file ({detail[:200]})")


@dataclass(frozen=True)
class AudioAnalysis:
    duration_s: float
    samples: int
    fps: int
    frames: int  # round(duration × fps): the frame-exact total every plan must match
    pauses: tuple[tuple[float, float], ...]  # (start_s, end_s), each ≥ min_pause_s
    frame_energy: np.ndarray  # RMS per video frame, for the quietest-frame fallback


def speech_flags(pcm: np.ndarray, sample_rate: int = SR, aggressiveness: int = 2) -> np.ndarray:
    """One bool per 30 ms: speech or not. Energy-gated so faint noise never counts as speech."""
    import webrtcvad

    n = sample_rate * VAD_FRAME_MS // 1000
    count = pcm.size // n
    if count == 0:
        return np.zeros(0, dtype=bool)
    frames = pcm[: count * n].reshape(count, n)
    rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
    loud = rms > max(rms.max() * 10 ** (-40 / 20), 1e-4)  # within 40 dB of the loudest frame
    pcm16 = (np.clip(frames, -1, 1) * 32767).astype("<i2")
    vad = webrtcvad.Vad(aggressiveness)
    flags = np.fromiter((vad.is_speech(f.tobytes(), sample_rate) for f in pcm16), dtype=bool, count=count)
    return flags & loud


def find_pauses(flags: np.ndarray, min_pause_s: float, duration_s: float) -> list[tuple[float, float]]:
    """Runs of non-speech at least min_pause_s long, in seconds."""
    step = VAD_FRAME_MS / 1000
    out = []
    padded = np.concatenate([[True], flags, [True]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    for a, b in zip(edges[::2], edges[1::2]):
        start, end = a * step, min(b * step, duration_s)
        if end - start >= min_pause_s:
            out.append((float(start), float(end)))
    return out


def analyse(pcm: np.ndarray, fps: int, min_pause_s: float, sample_rate: int = SR) -> AudioAnalysis:
    duration = pcm.size / sample_rate
    frames = int(round(duration * fps))
    pauses = find_pauses(speech_flags(pcm, sample_rate), min_pause_s, duration)
    spf = sample_rate / fps
    idx = (np.arange(frames + 1) * spf).round().astype(np.int64).clip(0, pcm.size)
    sq = np.concatenate([[0.0], np.cumsum(pcm.astype(np.float64) ** 2)])
    lens = np.maximum(idx[1:] - idx[:-1], 1)
    energy = np.sqrt((sq[idx[1:]] - sq[idx[:-1]]) / lens)
    return AudioAnalysis(duration, pcm.size, fps, frames, tuple(pauses), energy)


def cut_points(a: AudioAnalysis, max_scene_s: float, min_scene_s: float) -> list[int]:
    """Frame indices where scenes start (excluding 0). Each cut sits mid-pause when a pause is in range,
    else at the quietest frame of the window. Scenes stay within [min, max] wherever the length allows."""
    fps, total = a.fps, a.frames
    max_f = max(1, int(max_scene_s * fps))
    min_f = max(1, int(np.ceil(min_scene_s * fps)))
    cuts: list[int] = []
    start = 0
    pauses = a.pauses
    while total - start > max_f:
        lo = start + min_f
        hi = min(start + max_f, total - min_f)
        if hi < lo:  # the remainder cannot honour min_scene_s: a plain max-length scene
            lo = hi = start + max_f
        best = None
        for ps, pe in reversed(pauses):  # latest pause in range → fewest, longest scenes
            f_lo = max(lo, int(np.ceil(ps * fps)))
            f_hi = min(hi, int(np.floor(pe * fps)))
            if f_lo <= f_hi:
                mid = int(round((ps + pe) / 2 * fps))
                best = min(max(mid, f_lo), f_hi)
                break
        if best is None:
            window = a.frame_energy[lo : hi + 1]
            best = lo + int(len(window) - 1 - np.argmin(window[::-1]))  # quietest, latest on ties
        cuts.append(best)
        start = best
    return cuts
