"""Pose videos for Wan S2V: one scene's frames, seeked to and scaled while decoding, blank after the video ends."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from core.errors import MediaError

_EPS = 1e-6  # frame times are rationals turned into floats; a frame exactly at a wanted time must count


class PoseReader:
    """Frames of a pose video sampled at `fps` for a stretch of a job, fitted to (width, height) like the reference
    image (cover + centre crop), as uint8 (H, W, 3) arrays; None where the pose video has ended (a blank pose,
    which is what upstream pads with: -1 in the model's [-1, 1] space, black here).

    Only the scene's stretch is decoded: the reader seeks to the keyframe before it. A source frame is scaled when
    it is first used, so memory holds one decoded source frame plus target-size frames, never a full-resolution
    copy of the scene. `decoded` counts the source frames decoded (tests check the seek)."""

    def __init__(self, path: str, fps: int, width: int, height: int):
        self.path, self.fps, self.width, self.height = path, fps, width, height
        self.decoded = 0

    def frames(self, start_frame: int, count: int) -> Iterator[np.ndarray | None]:
        import av

        try:
            yield from self._frames(av, start_frame, count)
        except av.error.FFmpegError as exc:
            raise MediaError(f"cannot read pose video {self.path}: {exc}") from exc

    def _frames(self, av, start_frame: int, count: int):
        if count <= 0:
            return
        want = [(start_frame + j) / self.fps for j in range(count)]
        i = 0
        with av.open(self.path) as box:
            st = box.streams.video[0]
            if start_frame > 0 and st.time_base:
                box.seek(int(want[0] / st.time_base), stream=st, backward=True, any_frame=False)
            prev = prev_img = None
            prev_t = last_dur = 0.0
            for frame in box.decode(st):
                self.decoded += 1
                t = float(frame.time or 0.0)
                if prev is not None:
                    last_dur = t - prev_t
                # every wanted time before this frame shows the previous frame (the first one, before any)
                while i < count and want[i] < t - _EPS:
                    if prev_img is None:
                        prev_img = self._fit(prev if prev is not None else frame)
                    yield prev_img
                    i += 1
                if i >= count:
                    return
                prev, prev_t, prev_img = frame, t, None
            if prev is None:
                if start_frame == 0:
                    raise MediaError(f"pose video {self.path} has no frames")
                yield from [None] * (count - i)  # the scene starts after the pose video's end
                return
            dur = _frame_duration(prev, st) or last_dur or 1.0 / self.fps
            while i < count:
                if want[i] < prev_t + dur - _EPS:
                    if prev_img is None:
                        prev_img = self._fit(prev)
                    yield prev_img
                else:
                    yield None
                i += 1

    def _fit(self, frame) -> np.ndarray:
        """Scale to cover (width, height) in one swscale pass, then centre-crop, as fit_image does for the reference."""
        w, h = self.width, self.height
        s = max(w / frame.width, h / frame.height)
        sw, sh = max(w, round(frame.width * s)), max(h, round(frame.height * s))
        rgb = frame.reformat(width=sw, height=sh, format="rgb24", interpolation="LANCZOS").to_ndarray()
        left, top = (sw - w) // 2, (sh - h) // 2
        return np.ascontiguousarray(rgb[top: top + h, left: left + w])


def _frame_duration(frame, stream) -> float | None:
    dur = getattr(frame, "duration", None)
    if dur and frame.time_base:
        return float(dur * frame.time_base)
    if stream.average_rate:
        return 1.0 / float(stream.average_rate)
    return None


def blank_pose(width: int, height: int) -> np.ndarray:
    """The pose after the video ends: black, i.e. exactly -1 once diffsynth maps [0, 255] to [-1, 1]."""
    return np.zeros((height, width, 3), np.uint8)


def clip_pose_frames(reader: PoseReader, start_frame: int, clips: int, clip_frames: int, lead_in: int):
    """Per clip of a chain, its `clip_frames` pose frames (None = blank), or None for a clip wholly past the end.
    Clip 0 begins with `lead_in` copies of the scene's first pose frame, for the frames the model morphs out of
    the reference image (dropped afterwards), so pose frame j lines up with kept frame j."""
    it = reader.frames(start_frame, clips * clip_frames - lead_in)
    first = next(it, None)
    pending = [first] * (lead_in + 1)
    for _ in range(clips):
        chunk = pending[:clip_frames]
        pending = pending[clip_frames:]
        while len(chunk) < clip_frames:
            chunk.append(next(it, None))
        yield None if all(f is None for f in chunk) else chunk
