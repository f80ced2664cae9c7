"""The run's work area: per-clip checkpoints (clip video, lossless motion tail, done marker) and run state."""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass

import numpy as np

from infra.storage import Uri, parse, storage_for
from core.retry import retrying

DONE_RE = re.compile(r"scene-(\d{4})/clip-(\d{4})\.done\.json$")


@dataclass(frozen=True)
class WorkArea:
    """Layout: <work>/jobs/<job key>/scene-NNNN/clip-NNNN.{mp4,tail.npy,done.json}, <work>/runs/<run id>/…"""

    root: Uri
    settings: object = None

    @classmethod
    def at(cls, location: str, settings=None) -> "WorkArea":
        return cls(parse(location), settings)

    @property
    def storage(self):
        return storage_for(self.root, self.settings)

    def job_dir(self, key: str) -> Uri:
        return self.root.join("jobs", key)

    def clip_base(self, key: str, scene: int, clip: int) -> Uri:
        return self.job_dir(key).join(f"scene-{scene:04d}", f"clip-{clip:04d}")

    def clip_video(self, key: str, scene: int, clip: int) -> Uri:
        return _suffixed(self.clip_base(key, scene, clip), ".mp4")

    def clip_tail(self, key: str, scene: int, clip: int) -> Uri:
        return _suffixed(self.clip_base(key, scene, clip), ".tail.npy")

    def clip_done(self, key: str, scene: int, clip: int) -> Uri:
        return _suffixed(self.clip_base(key, scene, clip), ".done.json")

    def job_audio(self, key: str) -> Uri:
        """The job's audio encoded once as AAC (non-AAC sources), so the stitch is a stream copy."""
        return self.job_dir(key).join("audio.m4a")

    def run_dir(self, run_id: str) -> Uri:
        return self.root.join("runs", run_id)

    # --- checkpoints ---
    def save_clip(self, key: str, scene: int, clip: int, video_path, tail: np.ndarray, marker: dict) -> None:
        """Video and tail first, the done marker last: a marker means the clip is complete and reusable."""
        st = self.storage
        retrying("storage")(st.upload, video_path, self.clip_video(key, scene, clip))
        retrying("storage")(st.write_bytes, self.clip_tail(key, scene, clip), tail_to_bytes(tail))
        retrying("storage")(st.write_bytes, self.clip_done(key, scene, clip), json.dumps(marker, sort_keys=True).encode())

    def load_tail(self, key: str, scene: int, clip: int) -> np.ndarray | None:
        st = self.storage
        if not retrying("storage")(st.exists, self.clip_done(key, scene, clip)):
            return None
        return tail_from_bytes(retrying("storage")(st.read_bytes, self.clip_tail(key, scene, clip)))

    def done_clips(self, key: str) -> dict[int, set[int]]:
        """scene → completed clip indices for a job key (one listing per job)."""
        out: dict[int, set[int]] = {}
        for u in retrying("storage")(lambda: list(self.storage.list(self.job_dir(key)))):
            m = DONE_RE.search(u.key)
            if m:
                out.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
        return out

    # --- run state (readable after the driver died, from any machine) ---
    def write_state(self, run_id: str, state: dict, latest: bool = True) -> None:
        """latest: also point runs/LATEST here (a run does so once, when it starts, so a concurrent older run
        that keeps writing its state never flips LATEST back to itself)."""
        data = json.dumps(state, indent=1, sort_keys=True).encode()
        retrying("storage")(self.storage.write_bytes, self.run_dir(run_id).join("state.json"), data)
        if latest:
            retrying("storage")(self.storage.write_bytes, self.root.join("runs", "LATEST"), run_id.encode())

    def read_state(self, run_id: str | None = None) -> dict | None:
        st = self.storage
        if run_id is None:
            latest = self.root.join("runs", "LATEST")
            if not st.exists(latest):
                return None
            run_id = st.read_bytes(latest).decode().strip()
        u = self.run_dir(run_id).join("state.json")
        return json.loads(st.read_bytes(u)) if st.exists(u) else None


def _suffixed(u: Uri, suffix: str) -> Uri:
    return Uri(u.scheme, u.bucket, u.key + suffix)


def first_missing(done: set[int], n_clips: int) -> int:
    """Where a chain resumes: the first clip not done (clips after a gap are re-rendered, in order)."""
    k = 0
    while k < n_clips and k in done:
        k += 1
    return k


def tail_to_bytes(tail: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(tail), allow_pickle=False)
    return buf.getvalue()


def tail_from_bytes(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)
