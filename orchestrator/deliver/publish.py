"""Publish a finished job: stitch its clips with the original audio, check, post step, then MP4, poster,
deliverables and sidecar (last), each atomically."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

from infra.storage import storage_for
from orchestrator.workarea.layout import WorkArea
from orchestrator.intake.inputs import local_path
from orchestrator.plan.records import JobPlan
from core.errors import S2VError
from orchestrator.deliver.outputs import (SIDECAR_SCHEMA, check_lease, files_record, is_our_sidecar, output_uris, publish_owned,
                                         published_key)
from orchestrator.deliver.post import deliver
from orchestrator.intake.content import plan_content_key
from core.settings import Settings
from pipeline.media import encode_audio_argv, probe, run_ffmpeg
from pipeline.stitch import stitch

log = logging.getLogger("s2v.publish")
def sidecar(plan: JobPlan, result, timings: dict, stats: dict) -> dict:
    return {
        "schema": SIDECAR_SCHEMA, "id": plan.job.id, "job_key": plan.key, "tags": list(plan.job.tags),
        "inputs": {"audio": {"uri": plan.job.audio, "sha256": plan.audio_sha256},
                   "image": {"uri": plan.job.image, "sha256": plan.image_sha256},
                   "pose": {"uri": plan.job.pose, "sha256": plan.pose_sha256} if plan.job.pose else None},
        "prompt": plan.job.prompt, "negative_prompt": plan.job.negative_prompt,
        "backend": {"name": plan.job.backend, "version": plan.backend_version},
        "seed": plan.job.seed, "size": plan.job.size, "width": plan.width, "height": plan.height, "fps": plan.fps,
        "duration_s": round(plan.duration_s, 6), "frames": plan.frames,
        "video_s": round(result.video_s, 6), "audio_s": round(result.audio_s, 6),
        "plan": {"policy": {"max_scene_s": plan.job.max_scene_s, "min_scene_s": plan.job.min_scene_s,
                            "min_pause_s": plan.job.min_pause_s},
                 "scenes": [{"index": s.index, "start_frame": s.start_frame, "frames": s.frames,
                             "clips": [{"frames": c.frames, "seed": c.seed} for c in s.clips]} for s in plan.scenes]},
        "timings": timings, **stats,
    }


def _sidecar_here(plan: JobPlan, settings: Settings) -> dict | None:
    """The sidecar already published for this job (ours, or None): what it records stays ours."""
    u = output_uris(plan)["json"]
    st = storage_for(u, settings)
    try:
        meta = json.loads(st.read_bytes(u)) if st.exists(u) else None
    except (ValueError, OSError, S2VError):
        return None
    return meta if is_our_sidecar(meta) else None


def source_is_aac(path: Path) -> bool:
    return any(s.kind == "audio" and s.codec == "aac" for s in probe(path))


def prepare_audio(plan: JobPlan, settings: Settings, work: str) -> str | None:
    """Runs as a Ray task while the job renders: the job's audio as AAC, once, in the work area, so the stitch
    only copies streams. None when the source is already AAC (the stitch copies the source itself) or when this
    failed: it is an optimisation, and the stitch then encodes the audio itself (and reports any real error)."""
    try:
        src = local_path(plan.job.audio, settings)
        if source_is_aac(src):
            return None
        wa = WorkArea.at(work, settings)
        dest = wa.job_audio(plan.key)
        if wa.storage.exists(dest):
            return str(dest)
        with tempfile.TemporaryDirectory(prefix="s2v-audio-") as tmp:
            out = Path(tmp) / "audio.m4a"
            run_ffmpeg(encode_audio_argv(str(src), str(out), settings.audio_bitrate), what=f"audio of {plan.job.id}")
            wa.storage.upload(out, dest)
        return str(dest)
    except Exception as e:  # noqa: BLE001 - see above
        log.warning("pre-encoding the audio of %s failed (the stitch will encode it): %s", plan.job.id, e)
        return None


def _stitch_audio(plan: JobPlan, settings: Settings, wa: WorkArea, tmpd: Path) -> tuple[Path, bool]:
    """(audio file, copy?) — the AAC source, the pre-encoded AAC from the work area, or the source to encode."""
    src = local_path(plan.job.audio, settings)
    if source_is_aac(src):
        return src, True
    pre = wa.job_audio(plan.key)
    if wa.storage.exists(pre):
        if pre.scheme == "file":
            return Path(pre.key), True
        local = tmpd / "audio.m4a"
        wa.storage.download(pre, local)
        return local, True
    return src, False


def stitch_and_publish(plan: JobPlan, settings: Settings, work: str, stats: dict, audio_ready=None,
                       keep_checkpoints: bool = False, captions_ready=None, lease: str | None = None) -> dict:
    """Runs as a Ray task: gather the job's checkpointed clips, stitch, check, post step, publish, then drop the
    job's checkpoints (unless settings.keep_checkpoints, or keep_checkpoints: another job of the run shares the
    key). Returns the sidecar. audio_ready is prepare_audio's result, passed only so Ray runs this after it;
    captions_ready is post.prepare_captions' result (speech recognition for `captions: auto`); lease is the run's
    lease holder id: a run that lost the job's lease to another run publishes nothing and keeps the checkpoints."""
    t0 = time.monotonic()
    wa = WorkArea.at(work, settings)
    uris = output_uris(plan)
    if published_key(plan, settings) == plan.key and not wa.done_clips(plan.key):
        # Ray retried this task after it had published and removed the checkpoints: the job is done
        return json.loads(storage_for(uris["json"], settings).read_bytes(uris["json"]))
    with tempfile.TemporaryDirectory(prefix=f"s2v-stitch-{plan.job.id}-") as tmp:
        tmpd = Path(tmp)
        clips = []
        for s in plan.scenes:
            for c in s.clips:
                src = wa.clip_video(plan.key, s.index, c.index)
                if src.scheme == "file":
                    clips.append(Path(src.key))
                else:
                    dst = tmpd / f"s{s.index:04d}c{c.index:04d}.mp4"
                    wa.storage.download(src, dst)
                    clips.append(dst)
        audio, copy = _stitch_audio(plan, settings, wa, tmpd)
        res = stitch(clips, str(audio), tmpd / f"{plan.job.id}.mp4", fps=plan.fps, expected_frames=plan.frames,
                     expected_audio_s=plan.duration_s, width=plan.width, height=plan.height,
                     audio_bitrate=settings.audio_bitrate, copy_audio=copy)
        from pipeline.gates import check_gates

        measured = check_gates(res.video, plan, settings)
        t_stitch = time.monotonic() - t0
        meta = sidecar(plan, res, {"stitch_s": round(t_stitch, 3)}, stats)
        meta["quality"] = {**(measured or {}), "long_silences": [[round(a, 3), round(b, 3)] for a, b in plan.silences]}
        meta["content_key"] = plan_content_key(plan, settings)  # what a review of this render approved
        meta["outputs"] = {k: str(u) for k, u in uris.items()}
        # delivery: captions + renditions from the stitched master (orchestrator/post.py)
        post = deliver(plan, settings, work, res.video, tmpd, asr_ready=captions_ready, poster=res.poster)
        meta.update(post.meta)
        meta["outputs"].update(post.meta["delivered"])
        files = [(post.master, uris["mp4"]), (res.poster, uris["jpg"]), *post.files]
        previous = _sidecar_here(plan, settings)
        meta["files"] = files_record(previous, plan, [u for _, u in files] + [uris["json"]], settings)
        side = tmpd / f"{plan.job.id}.json"
        side.write_text(json.dumps(meta, indent=1, sort_keys=True))
        publish_owned(plan, settings, work, files + [(side, uris["json"])], lease)
    # A master with burned-in captions is not a clean master: a later post-step change re-stitches one from the
    # clip videos (orchestrator/repost.py), so such a job keeps them (tails are gone already; `s2v gc` ages them).
    if not (settings.keep_checkpoints or keep_checkpoints or plan.job.captions_burn):
        try:  # they have served; failing to remove them costs disk (`s2v gc` finds them later), never the job
            check_lease(plan, settings, work, lease)  # a run that took the job over may be using them now
            wa.remove_job(plan.key)
        except Exception as e:  # noqa: BLE001
            log.warning("could not remove the checkpoints of %s: %s", plan.job.id, e)
    return meta
