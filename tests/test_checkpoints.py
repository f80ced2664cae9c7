"""Checkpoints: compressed lossless tails, one tail per chain in the work area, resume from them bit-exactly, and
nothing left once a job is published (on local, S3 via SeaweedFS and GCS via fake-gcs-server, all on 127.0.0.1)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest

from core.settings import Settings
from orchestrator.workarea.layout import WorkArea
from orchestrator.workarea.tails import decode_tail, encode_tail
from storage_servers import bucket_settings, gcs_server, s3_server  # noqa: F401  (fixtures)

H, W = 48, 80  # a Wan-shaped tail at a small size: (1, 3, 73, 48, 80)


def bf16_values(x: np.ndarray) -> np.ndarray:
    """float32 holding bf16 values, as tails decoded from a bf16 run's activations are."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).view(np.float32)


def test_tails_round_trip_bit_exactly_and_bf16_ones_shrink():
    rng = np.random.default_rng(5)
    full = np.clip(rng.standard_normal((1, 3, 73, H, W), dtype=np.float32) * 0.4, -1, 1)
    full.reshape(-1)[:6] = [-0.0, 0.0, 1e-42, -1e-40, np.inf, -np.inf]  # signed zeros, denormals, infinities
    halfish = bf16_values(full)
    cases = [full, halfish, full[:, :, ::2],  # a strided view
             np.array([0.25, 17.0]), np.float32(3.5), np.zeros((0, 3), np.float32), np.arange(9, dtype=">i4")]
    for a in cases:
        data = encode_tail(a)
        b = decode_tail(data)
        assert b.dtype == np.asarray(a).dtype and b.shape == np.shape(a)
        assert np.asarray(a).tobytes() == b.tobytes()  # bit for bit, -0.0 and denormals included
    assert len(encode_tail(halfish)) < 0.6 * halfish.nbytes  # two zero bytes per value cost almost nothing
    big = bf16_values(rng.random((3 * 2**21 + 5,), dtype=np.float32))  # several chunks, one partial
    assert np.array_equal(decode_tail(encode_tail(big)).view(np.uint32), big.view(np.uint32))


def test_corrupt_or_foreign_tail_files_are_refused_with_a_clear_error():
    from core.errors import StorageError

    data = bytearray(encode_tail(np.ones((1, 3, 73, 8, 8), np.float32)))
    data[-5] ^= 0xFF
    with pytest.raises(StorageError, match="corrupt"):
        decode_tail(bytes(data))
    with pytest.raises(StorageError, match="truncated"):
        decode_tail(bytes(data[:-1]))
    with pytest.raises(StorageError, match="not a motion tail"):
        decode_tail(b"PK\x03\x04 a zip file")


@pytest.fixture(params=["file", "s3", "gs"])
def work(request, tmp_path, monkeypatch):
    """A work area on each storage: a folder, a SeaweedFS bucket, a fake-gcs-server bucket (all loopback)."""
    if request.param == "file":
        return WorkArea.at(str(tmp_path / "work"), Settings())
    base, settings = bucket_settings(request, request.param, monkeypatch, tmp_path, "ckpt")
    return WorkArea.at(f"{base}/work", settings)


def _names(work: WorkArea) -> set[str]:
    prefix = work.root.key.rstrip("/") + "/"
    return {u.key[len(prefix):] for u in work.storage.list(work.root)}


def test_the_previous_tail_is_gone_once_the_next_marker_exists(work, tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not really a video")
    tails = [bf16_values(np.full((1, 3, 73, 8, 8), k / 10, np.float32)) for k in range(4)]
    for k in range(3):
        work.save_clip("key1", 0, k, video, tails[k], {"clip": k})
        names = _names(work)
        assert f"jobs/key1/scene-0000/clip-{k:04d}.tail" in names
        assert not any(f"clip-{j:04d}.tail" in n for j in range(k) for n in names), names  # older tails are gone
        assert {f"jobs/key1/scene-0000/clip-{j:04d}.done.json" for j in range(k + 1)} <= names
        assert np.array_equal(work.load_tail("key1", 0, k), tails[k])
    assert work.done_clips("key1") == {0: {0, 1, 2}}
    work.save_clip("key1", 0, 3, video, None, {"clip": 3})  # the chain's last clip: nothing continues it
    assert not any(".tail" in n for n in _names(work)) and work.load_tail("key1", 0, 3) is None
    marker = json.loads(work.storage.read_bytes(work.clip_done("key1", 0, 3)))
    assert marker["clip"] == 3 and marker["tail"] is None
    assert work.remove_job("key1") == 8 and _names(work) == set()


def test_checkpoints_written_before_compression_still_resume(tmp_path):
    """An existing work area: clip-NNNN.tail.npy and a marker that names no tail."""
    import io

    work = WorkArea.at(str(tmp_path / "work"), Settings())
    old = np.random.default_rng(1).random((1, 3, 73, 8, 8)).astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, old)
    base = work.clip_base("k", 2, 5)
    work.storage.write_bytes(base.parent().join("clip-0005.tail.npy"), buf.getvalue())
    work.storage.write_bytes(work.clip_done("k", 2, 5), json.dumps({"clip": 5}).encode())
    assert np.array_equal(work.load_tail("k", 2, 5), old)


def _scene(image: str, clips: tuple[int, ...], si: int):
    from pipeline.backends.base import SceneInput

    total = sum(clips)
    audio = np.sin(np.arange(total * 1000) / 40.0).astype(np.float32) * 0.3
    return SceneInput(job_id="lesson", job_key="key", scene_index=si, image_path=image, seed=3, width=W, height=H,
                      start_frame=0, frames=total, clip_frames=clips, audio=audio)


def _request(k: int, frames: int):
    from pipeline.backends.base import ClipRequest

    return ClipRequest(index=k, scene_frame_start=80 * k, frames=frames, job_clip_index=k, seed=3 + k)


def _drill(tmp_path: Path):
    from core.settings import Settings
    from pipeline.backends.drills.faults import FaultBackend

    b = FaultBackend(Settings(faults=[{"action": "wan_tail"}], faults_dir=str(tmp_path / "faults")))
    b.load()
    return b


def test_the_work_area_holds_one_tail_per_running_chain_through_a_long_chain(tmp_path):
    """Two chains of 8 clips with Wan-shaped tails, interleaved as two actors would render them; after every clip the
    work area is its clip videos and markers plus exactly one tail per chain, then nothing once published."""
    from pipeline.media import EncodeParams, encode_frames

    import media

    image = str(media.presenter(tmp_path / "p.png", size=128))
    backend, work = _drill(tmp_path), WorkArea.at(str(tmp_path / "work"), Settings())
    clips = (80,) * 8
    ctxs = [backend.prepare_scene(_scene(image, clips, si)) for si in (0, 1)]
    tails, rendered, sizes, peak_tails = [None, None], {}, [], 0
    for k in range(len(clips)):
        for si in (0, 1):
            out = backend.render_clip(ctxs[si], _request(k, clips[k]), tails[si])
            assert out.tail.shape == (1, 3, 73, H, W) and out.tail.dtype == np.float32
            tails[si] = out.tail
            rendered[(si, k)] = out
            with tempfile.TemporaryDirectory() as tmp:
                mp4 = Path(tmp) / "c.mp4"
                encode_frames(out.frames, EncodeParams(16, W, H, 18, "veryfast"), mp4)
                last = k == len(clips) - 1
                work.save_clip("key", si, k, mp4, None if last else out.tail, {"clip": k})
            files = [p for p in (tmp_path / "work").rglob("*") if p.is_file()]
            tails_now = {f"{p.parent.name}/{p.name}" for p in files if p.name.endswith(".tail")}
            expected = set()
            for s in (0, 1):  # the newest clip saved of each chain, unless that was the chain's last
                j = k if s <= si else k - 1
                if 0 <= j < len(clips) - 1:
                    expected.add(f"scene-{s:04d}/clip-{j:04d}.tail")
            assert tails_now == expected
            others = [p for p in files if not p.name.endswith((".tail", ".mp4", ".done.json"))]
            assert others == []  # clip videos, markers and those tails: nothing else
            sizes.append(sum(p.stat().st_size for p in files))
            peak_tails = max(peak_tails, sum(p.stat().st_size for p in files if p.name.endswith(".tail")))
    assert 0 < peak_tails <= 2 * tails[0].nbytes  # a compressed tail per chain at most, never a growing pile
    # resume bit-exactly from the compressed checkpoint, in a fresh backend (a restarted actor)
    fresh = _drill(tmp_path)
    ctx = fresh.prepare_scene(_scene(image, clips, 1))
    work.save_clip("key2", 1, 3, tmp_path / "p.png", rendered[(1, 3)].tail, {"clip": 3})
    resumed = fresh.render_clip(ctx, _request(4, 80), work.load_tail("key2", 1, 3))
    assert np.array_equal(resumed.frames, rendered[(1, 4)].frames)
    assert resumed.tail.tobytes() == rendered[(1, 4)].tail.tobytes()


def test_a_published_job_leaves_no_checkpoints_unless_told_to_keep_them(ray_local, assets, tmp_path):
    """End to end through the runner: after publishing, the job's folder in the work area is gone (clip videos,
    tails, markers, pre-encoded audio); with keep_checkpoints the clips stay and each chain kept at most one tail."""
    import media
    from core.settings import Settings
    from orchestrator.run.runner import render

    m = media.write_manifest(tmp_path / "m.yaml", [{"id": "lesson", "audio": str(assets["speech13"]), "seed": 1}],
                             {"image": str(assets["image"]), "size": "64*64", "backend": "faults", "max_scene_s": 8,
                              "output": str(tmp_path / "out")})
    base = dict(gpus=2, cache_dir=tmp_path / "cache", faults=[{"action": "wan_tail"}],
                faults_dir=str(tmp_path / "faults"))
    res = render(str(m), Settings(work=str(tmp_path / "w1"), **base))
    assert res.exit_code == 0 and (tmp_path / "out" / "lesson.mp4").is_file()
    key = res.jobs["lesson"].key
    assert not (tmp_path / "w1" / "jobs" / key).exists()
    assert [p.name for p in (tmp_path / "w1" / "jobs").rglob("*") if p.is_file()] == []

    res = render(str(m), Settings(work=str(tmp_path / "w2"), keep_checkpoints=True, **base), force=True)
    assert res.exit_code == 0
    job = tmp_path / "w2" / "jobs" / key
    assert len(list(job.rglob("*.done.json"))) == len(list(job.rglob("*.mp4"))) == res.jobs["lesson"].clips
    for scene in job.glob("scene-*"):
        assert len([p for p in scene.iterdir() if ".tail" in p.name]) <= 1
