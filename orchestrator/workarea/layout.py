"""The work area's layout: per-clip checkpoints (clip video, compressed lossless motion tail, done marker) and run
state, readable from any machine."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from infra.storage import Uri, parse, storage_for
from orchestrator.workarea.tails import decode_tail, encode_tail

DONE_RE = re.compile(r"scene-(\d{4})/clip-(\d{4})\.done\.json$")
MARKER, MARKER_SCHEMA = "s2v-work-area.json", "s2v-batch/work-area"
_MARKED: set[str] = set()  # roots this process knows to be marked
TAIL_SUFFIX = ".tail"  # compressed (see encode_tail); markers name their tail
LEGACY_TAIL_SUFFIX = ".tail.npy"  # plain .npy, written before tails were compressed; still read


@dataclass(frozen=True)
class WorkArea:
    """Layout: <work>/jobs/<job key>/scene-NNNN/clip-NNNN.{mp4,tail,done.json}, <work>/runs/<run id>/…"""

    root: Uri
    settings: object  # the run's Settings: storage credentials, endpoints, file modes

    @classmethod
    def at(cls, location: str, settings) -> "WorkArea":
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
        return _suffixed(self.clip_base(key, scene, clip), TAIL_SUFFIX)

    def clip_done(self, key: str, scene: int, clip: int) -> Uri:
        return _suffixed(self.clip_base(key, scene, clip), ".done.json")

    def job_audio(self, key: str) -> Uri:
        """The job's audio encoded once as AAC (non-AAC sources), so the stitch is a stream copy."""
        return self.job_dir(key).join("audio.m4a")

    def run_dir(self, run_id: str) -> Uri:
        return self.root.join("runs", run_id)

    # --- checkpoints ---
    def save_clip(self, key: str, scene: int, clip: int, video_path, tail: np.ndarray | None, marker: dict) -> None:
        """Video and tail first, the done marker last: a marker means the clip is complete and reusable.

        Then the previous clip's tail goes: a chain resumes from its first clip without a marker, so tail k-1 is
        needed only while marker k is missing, and a chain keeps one tail in the work area. tail=None (the
        chain's last clip, which nothing continues) stores no tail at all."""
        st = self.storage
        st.upload(video_path, self.clip_video(key, scene, clip))
        marker = dict(marker, tail=None)
        if tail is not None:
            data = encode_tail(tail)
            st.write_bytes(self.clip_tail(key, scene, clip), data)
            marker.update(tail=self.clip_tail(key, scene, clip).name, tail_bytes=len(data))
        st.write_bytes(self.clip_done(key, scene, clip), json.dumps(marker, sort_keys=True).encode())
        if clip > 0:
            st.delete(self.clip_tail(key, scene, clip - 1))

    def load_tail(self, key: str, scene: int, clip: int) -> np.ndarray | None:
        """The tail clip `clip` left for its successor; None when the clip is not done or stored no tail."""
        st = self.storage
        done = self.clip_done(key, scene, clip)
        if not st.exists(done):
            return None
        marker = json.loads(st.read_bytes(done))
        if "tail" not in marker:  # a checkpoint from before compressed tails
            return decode_tail(st.read_bytes(_suffixed(self.clip_base(key, scene, clip), LEGACY_TAIL_SUFFIX)))
        if marker["tail"] is None:
            return None
        return decode_tail(st.read_bytes(done.parent().join(marker["tail"])))

    def done_clips(self, key: str) -> dict[int, set[int]]:
        """scene → completed clip indices for a job key (one listing per job)."""
        out: dict[int, set[int]] = {}
        for u in list(self.storage.list(self.job_dir(key))):
            m = DONE_RE.search(u.key)
            if m:
                out.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
        return out

    def remove_job(self, key: str) -> int:
        """Delete every checkpoint of a job key (markers first, so a reader never trusts a half-removed clip);
        returns how many objects went."""
        objs = list(self.storage.list(self.job_dir(key)))
        self.delete_objects(objs)
        return len(objs)

    def delete_objects(self, uris: list[Uri]) -> None:
        """Delete objects, done markers before the rest, a few at a time (one request each on object stores);
        on a local work area the folders they leave empty go too."""
        st = self.storage
        markers = [u for u in uris if u.key.endswith(".done.json")]
        rest = [u for u in uris if not u.key.endswith(".done.json")]
        with ThreadPoolExecutor(max_workers=8) as pool:
            for group in (markers, rest):  # every marker is gone before any clip or tail goes
                list(pool.map(st.delete, group))
        if self.root.scheme == "file":
            _prune_empty_dirs({u.parent() for u in uris}, self.root)

    # --- the marker: what makes a folder (or a bucket prefix) a work area, for `s2v gc` ---
    @property
    def marker(self) -> Uri:
        return self.root.join(MARKER)

    def is_marked(self) -> bool:
        try:
            doc = json.loads(self.storage.read_bytes(self.marker)) if self.storage.exists(self.marker) else None
        except (ValueError, UnicodeDecodeError):
            return False
        return isinstance(doc, dict) and doc.get("schema") == MARKER_SCHEMA

    def ensure_marker(self) -> None:
        """Written the first time s2v writes here (once per process and root): gc removes things only under it."""
        if str(self.root) in _MARKED:
            return
        if not self.is_marked():
            self.storage.write_bytes(self.marker, json.dumps(
                {"schema": MARKER_SCHEMA, "created": time.time(), "note": "an s2v-batch work area: `s2v gc` cleans "
                 "it, and only what s2v wrote in it"}, indent=1).encode())
        _MARKED.add(str(self.root))

    # --- run state (readable after the driver died, from any machine) ---
    def write_state(self, run_id: str, state: dict, latest: bool = True) -> None:
        """latest: also point runs/LATEST here (a run does so once, when it starts, so a concurrent older run
        that keeps writing its state never flips LATEST back to itself)."""
        self.ensure_marker()
        data = json.dumps(state, indent=1, sort_keys=True).encode()
        self.storage.write_bytes(self.run_dir(run_id).join("state.json"), data)
        if latest:
            self.storage.write_bytes(self.root.join("runs", "LATEST"), run_id.encode())

    def read_state(self, run_id: str | None = None) -> dict | None:
        st = self.storage
        if run_id is None:
            run_id = self.latest_run()
            if run_id is None:
                return None
        u = self.run_dir(run_id).join("state.json")
        return json.loads(st.read_bytes(u)) if st.exists(u) else None

    def latest_run(self) -> str | None:
        latest = self.root.join("runs", "LATEST")
        if not self.storage.exists(latest):
            return None
        return self.storage.read_bytes(latest).decode().strip() or None


def _suffixed(u: Uri, suffix: str) -> Uri:
    return Uri(u.scheme, u.bucket, u.key + suffix)


def _prune_empty_dirs(dirs: set[Uri], root: Uri) -> None:
    from pathlib import Path

    stop = Path(root.key)
    for d in sorted((Path(u.key) for u in dirs), key=lambda p: -len(p.parts)):
        while d != stop and stop in d.parents:
            try:
                d.rmdir()  # only when empty
            except OSError:
                break
            d = d.parent


def first_missing(done: set[int], n_clips: int) -> int:
    """Where a chain resumes: the first clip not done (clips after a gap are re-rendered, in order)."""
    k = 0
    while k < n_clips and k in done:
        k += 1
    return k
