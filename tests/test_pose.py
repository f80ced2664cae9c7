"""Pose videos for wan-s2v: the scene's frames only (seek), scaled as decoded, a blank pose after the video ends."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.backends.wan_pose import PoseReader, clip_pose_frames

SRC_FPS, SIDE, BITS = 25, 128, 8


def write_pose(path, frames: int, gop: int = SRC_FPS):
    """A pose video whose frame i shows i in binary as 8 black/white stripes (survives lossy coding)."""
    import av

    with av.open(str(path), "w") as box:
        st = box.add_stream("mpeg4", rate=SRC_FPS)
        st.width = st.height = SIDE
        st.pix_fmt = "yuv420p"
        st.codec_context.gop_size = gop
        for i in range(frames):
            img = np.zeros((SIDE, SIDE, 3), np.uint8)
            for b in range(BITS):
                if i >> b & 1:
                    img[:, b * SIDE // BITS:(b + 1) * SIDE // BITS] = 255
            for pkt in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                box.mux(pkt)
        for pkt in st.encode():
            box.mux(pkt)
    return str(path)


def index_of(img: np.ndarray) -> int:
    w = img.shape[1] // BITS
    return sum(1 << b for b in range(BITS) if img[:, b * w + 2:(b + 1) * w - 2].mean() > 127)


def test_a_scene_late_in_a_long_pose_video_is_read_by_seeking_and_scaled_as_decoded(tmp_path):
    src = write_pose(tmp_path / "long.mp4", 10 * SRC_FPS)  # 10 s, longer than the scene
    reader = PoseReader(src, fps=16, width=64, height=64)
    start, count = 8 * 16, 24  # the scene starts 8 s in
    got = list(reader.frames(start, count))
    assert all(isinstance(f, np.ndarray) and f.shape == (64, 64, 3) and f.dtype == np.uint8 for f in got)
    # frame j of the scene shows the last source frame at or before its time
    assert [index_of(f) for f in got] == [(start + j) * SRC_FPS // 16 for j in range(count)]
    # only the stretch from the keyframe before 8 s on was decoded, not the 200 frames before it
    assert reader.decoded <= 2 * SRC_FPS + count * SRC_FPS // 16


def test_after_the_pose_video_ends_the_pose_is_blank_not_the_last_frame_held(tmp_path):
    src = write_pose(tmp_path / "short.mp4", SRC_FPS)  # 1 s, shorter than the scene
    got = list(PoseReader(src, fps=16, width=64, height=64).frames(0, 40))
    assert all(f is not None for f in got[:16]) and all(f is None for f in got[16:])
    assert index_of(got[15]) == 15 * SRC_FPS // 16
    # per clip (80 frames, 3 lead-in copies of the first pose): clip 1 and 2 lie wholly past the end
    clips = list(clip_pose_frames(PoseReader(src, 16, 64, 64), 0, 3, 80, 3))
    assert clips[1] is None and clips[2] is None
    assert len(clips[0]) == 80 and index_of(clips[0][0]) == 0 and index_of(clips[0][3]) == 0
    assert index_of(clips[0][3 + 15]) == 15 * SRC_FPS // 16 and all(f is None for f in clips[0][3 + 16:])


def test_a_scene_that_starts_after_the_pose_video_gets_only_blank_poses(tmp_path):
    src = write_pose(tmp_path / "short.mp4", SRC_FPS)
    assert list(PoseReader(src, 16, 64, 64).frames(5 * 16, 8)) == [None] * 8


def test_a_pose_file_that_is_not_a_video_is_a_media_error(tmp_path):
    from core.errors import MediaError

    bad = tmp_path / "pose.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(MediaError, match="pose video"):
        list(PoseReader(str(bad), 16, 64, 64).frames(0, 4))
