"""Test media made on the fly: speech-like audio with pauses of known length, a presenter photo, manifests."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import yaml

SR = 16000


def voiced(seconds: float, rng: np.random.Generator, sr: int = SR) -> np.ndarray:
    """A vowel-like burst: harmonics of a wandering 110–190 Hz pitch, syllable-rate loudness, a little breath."""
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    f0 = 150 + 35 * np.sin(2 * np.pi * rng.uniform(0.3, 0.8) * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    sig = sum((0.6 / k) * np.sin(k * phase) for k in range(1, 12))
    syll = 0.55 + 0.45 * np.abs(np.sin(2 * np.pi * rng.uniform(3.0, 5.0) * t))
    ramp = np.minimum(1.0, np.minimum(t, t[::-1] if n else t) / 0.02)
    return (0.3 * sig * syll * ramp + 0.003 * rng.standard_normal(n)).astype(np.float32)


def speech(segments: list[tuple[float, float]], seed: int = 0, sr: int = SR) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """segments = [(voiced_s, pause_s), …] → (pcm, true pauses as (start_s, end_s))."""
    rng = np.random.default_rng(seed)
    parts, pauses, t = [], [], 0.0
    for v, p in segments:
        parts.append(voiced(v, rng, sr))
        t += len(parts[-1]) / sr
        if p > 0:
            parts.append((1e-4 * rng.standard_normal(int(round(p * sr)))).astype(np.float32))
            pauses.append((t, t + len(parts[-1]) / sr))
            t += len(parts[-1]) / sr
    return np.concatenate(parts), pauses


def write_wav(path: Path, pcm: np.ndarray, sr: int = SR) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes((np.clip(pcm, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def presenter(path: Path, size: int = 256) -> Path:
    from PIL import Image
    from skimage import data

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(data.astronaut()).resize((size, size)).save(path)
    return path


def write_manifest(path: Path, jobs: list[dict], defaults: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"defaults": defaults or {}, "jobs": jobs}, sort_keys=False))
    return path
