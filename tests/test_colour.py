"""Colour of what we publish: BT.709 limited-range conversion and tags in clips, the stitched MP4 and the poster."""

from __future__ import annotations

import numpy as np
import pytest

import media
from pipeline.media import EncodeParams, encode_frames
from pipeline.stitch import stitch

W, H, FPS = 128, 64, 16
PATCHES = [(0, 255, 0), (255, 0, 0), (0, 0, 255), (200, 120, 40), (40, 160, 220), (235, 235, 235), (20, 20, 20)]
PW = 16  # patch width: BT.601 and BT.709 disagree by up to 28 code values on saturated colours like pure green
BT709 = 1  # AVCOL_PRI_BT709 == AVCOL_TRC_BT709 == AVCOL_SPC_BT709 == 1 in FFmpeg's enums
TV_RANGE = 1  # AVCOL_RANGE_MPEG (limited)


def _frames(n: int = 8) -> np.ndarray:
    img = np.zeros((H, W, 3), np.uint8)
    for i, c in enumerate(PATCHES):
        img[:, i * PW:(i + 1) * PW] = c
    return np.stack([img] * n)


def _bt709_limited(rgb) -> tuple[float, float, float]:
    r, g, b = (x / 255 for x in rgb)
    y = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return 16 + 219 * y, 128 + 224 * (b - y) / 1.8556, 128 + 224 * (r - y) / 1.5748


def _colour_tags(path) -> tuple[int, int, int, int]:
    import av

    with av.open(str(path)) as box:
        cc = box.streams.video[0].codec_context
        return cc.color_primaries, cc.color_trc, cc.colorspace, cc.color_range


def _first_frame(path):
    import av

    with av.open(str(path)) as box:
        return next(box.decode(video=0))


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("colour")
    out = []
    for i in range(2):
        encode_frames(_frames(), EncodeParams(FPS, W, H), d / f"clip{i}.mp4")
        out.append(d / f"clip{i}.mp4")
    return out


def test_clip_is_tagged_bt709_limited_and_its_planes_hold_bt709_values(clips):
    assert _colour_tags(clips[0]) == (BT709, BT709, BT709, TV_RANGE)
    # Read the planes themselves, not a decoder's RGB, so the check does not depend on how a player converts.
    yuv = _first_frame(clips[0]).to_ndarray(format="yuv420p")
    y, u, v = yuv[:H], yuv[H:H + H // 4].reshape(H // 2, W // 2), yuv[H + H // 4:].reshape(H // 2, W // 2)
    for i, rgb in enumerate(PATCHES):
        want = _bt709_limited(rgb)
        got = (y[H // 4: 3 * H // 4, i * PW + 4:(i + 1) * PW - 4].mean(),
               u[H // 8: 3 * H // 8, i * PW // 2 + 2:(i + 1) * PW // 2 - 2].mean(),
               v[H // 8: 3 * H // 8, i * PW // 2 + 2:(i + 1) * PW // 2 - 2].mean())
        assert np.allclose(got, want, atol=2.0), (rgb, got, want)


def test_same_frames_encode_to_the_same_bytes(clips):
    assert clips[0].read_bytes() == clips[1].read_bytes()


def test_stitched_mp4_keeps_the_tags_and_the_poster_keeps_the_colours(clips, tmp_path):
    pcm, _ = media.speech([(1.0, 0)], seed=1)
    wav = media.write_wav(tmp_path / "a.wav", pcm)
    res = stitch(clips, str(wav), tmp_path / "job.mp4", fps=FPS, expected_frames=16, expected_audio_s=len(pcm) / media.SR,
                 width=W, height=H)
    assert _colour_tags(res.video) == (BT709, BT709, BT709, TV_RANGE)  # stream copy carries VUI and colr atom
    # The poster is a full-range JPEG: decoding the BT.709 video with the wrong matrix would skew these by ~30.
    from PIL import Image

    poster = np.asarray(Image.open(res.poster).convert("RGB"), dtype=float)
    for i, rgb in enumerate(PATCHES):
        got = poster[H // 4: 3 * H // 4, i * PW + 4:(i + 1) * PW - 4].reshape(-1, 3).mean(axis=0)
        assert np.abs(got - rgb).max() <= 8, (rgb, got)
