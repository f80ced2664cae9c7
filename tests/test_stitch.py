"""Stitching with real ffmpeg: stream-copy concat, the source's AAC copied untouched, checks that fail loudly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.errors import RenderError
from pipeline.media import (EncodeParams, concat_list, encode_audio_argv, encode_frames, run_ffmpeg, stitch_argv)
from pipeline.stitch import stitch

FPS = 16


def _clips(tmp: Path, counts: list[int], size: int = 64) -> list[Path]:
    out = []
    for i, n in enumerate(counts):
        frames = np.full((n, size, size, 3), 40 * i % 255, dtype=np.uint8)
        frames[:, :, : (i + 1) * 4] = 255
        p = tmp / f"c{i}.mp4"
        encode_frames(frames, EncodeParams(FPS, size, size), p)
        out.append(p)
    return out


def _packets(path: Path) -> list[bytes]:
    import av

    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(audio=0) if p.size]


@pytest.fixture
def aac_source(tmp_path, assets):
    """4.0 s of speech as AAC in .m4a (what most catalogs ship)."""
    dest = tmp_path / "speech.m4a"
    run_ffmpeg(encode_audio_argv(str(assets["speech4"]), str(dest)))
    return dest


def test_aac_source_is_copied_not_reencoded(tmp_path, aac_source, assets):
    import wave

    with wave.open(str(assets["speech4"])) as w:
        seconds = w.getnframes() / w.getframerate()
    frames = round(seconds * FPS)
    clips = _clips(tmp_path, [40, frames - 40])
    res = stitch(clips, str(aac_source), tmp_path / "out.mp4", fps=FPS, expected_frames=frames,
                 expected_audio_s=seconds, width=64, height=64, copy_audio=True)
    assert res.frames == frames and abs(res.video_s - seconds) <= 1 / FPS
    assert _packets(res.video) == _packets(aac_source)  # the published audio is the source's, bit for bit
    assert res.poster.stat().st_size > 0


def test_a_frame_count_mismatch_fails_the_job_with_a_clear_reason(tmp_path, assets):
    clips = _clips(tmp_path, [80, 10])
    with pytest.raises(RenderError, match="90 frames, planned 64.*more than one frame apart"):
        stitch(clips, str(assets["speech4"]), tmp_path / "bad.mp4", fps=FPS, expected_frames=64,
               expected_audio_s=4.0, width=64, height=64)


def test_argv_builders_are_pure_and_quote_paths():
    a = stitch_argv("list.txt", "a.wav", "o.mp4")
    assert a == stitch_argv("list.txt", "a.wav", "o.mp4")
    assert a[a.index("-c:v") + 1] == "copy" and a[a.index("-c:a") + 1] == "aac" and "+faststart" in a
    assert stitch_argv("l", "a.m4a", "o", copy_audio=True).count("copy") == 2
    assert concat_list(["/x/it's.mp4"]) == "file '/x/it'\\''s.mp4'\n"

