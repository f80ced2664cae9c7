"""Publish a finished job (MP4, poster, sidecar last, each atomic) and tell whether a job is already published."""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from pathlib import Path

from infra.storage import Uri, parse, storage_for
from orchestrator.workarea.layout import WorkArea
from orchestrator.plan.planner import JobPlan, local_path
from core.errors import RenderError, S2VError
from orchestrator.deliver.post import deliver
from core.retry import retrying
from core.settings import Settings
from pipeline.media import encode_audio_argv, probe, run_ffmpeg
from pipeline.stitch import stitch

log = logging.getLogger("s2v.publish")
# Marks a sidecar as ours. Its `id` is the job's lineage: a re-render of the same id (any key) may replace the
# files it describes; anything else at those names is not ours to replace.
SIDECAR_SCHEMA = "s2v-batch/sidecar"
_LEGACY_SIDECAR_KEYS = {"id", "job_key", "backend", "inputs", "plan"}  # sidecars written before the marker


def output_uris(plan: JobPlan) -> dict[str, Uri]:
    base = parse(plan.job.output)
    return {ext: base.join(f"{plan.job.id}.{ext}") for ext in ("mp4", "jpg", "json")}


def published_key(plan: JobPlan, settings: Settings) -> str | None:
    """The job key recorded in the published sidecar, if any (the sidecar is written last, so it proves the rest)."""
    uris = output_uris(plan)
    st = storage_for(uris["json"], settings)
    try:
        if not retrying("storage")(st.exists, uris["json"]):
            return None
        meta = json.loads(retrying("storage")(st.read_bytes, uris["json"]))
    except (ValueError, OSError):
        return None
    if not is_our_sidecar(meta) or not st.exists(uris["mp4"]):
        return None
    return meta.get("job_key")


def is_our_sidecar(meta) -> bool:
    return isinstance(meta, dict) and (meta.get("schema") == SIDECAR_SCHEMA or _LEGACY_SIDECAR_KEYS <= meta.keys())


def _claim(wa: WorkArea, uris: dict[str, Uri]) -> Uri:
    """Where a publish in progress says which outputs it is writing: if it is cut short between the MP4 and the
    sidecar, the next run recognises the sidecar-less MP4 as its own."""
    return wa.root.join("publishing", hashlib.sha256(str(uris["json"]).encode()).hexdigest()[:32] + ".json")


def replace_problem(plan: JobPlan, settings: Settings, work: str) -> str | None:
    """Why publishing this job would replace a file s2v did not publish (None when its names are free or ours).

    Ours: a sidecar of ours for the same job id next to the files, or, with no sidecar, a claim in the work area
    left by our own publish of this job that was cut short. A manifest can name any folder the user can write
    (`output: ~/.docker`, `id: config` replaced ~/.docker/config.json), so anything else is refused."""
    uris = output_uris(plan)
    st = storage_for(uris["json"], settings)
    try:
        present = [u for u in uris.values() if retrying("storage")(st.exists, u)]
    except S2VError as e:  # cannot tell what is there: refusing is the safe answer
        return f"cannot check what is at {uris['json'].parent()} before publishing there: {e}"
    if not present:
        return None
    hint = "move it away, or choose another output folder or job id"
    if uris["json"] in present:
        try:
            meta = json.loads(retrying("storage")(st.read_bytes, uris["json"]))
        except (ValueError, S2VError):  # not JSON (or not readable): not a sidecar of ours
            meta = None
        if not is_our_sidecar(meta):
            return f"{uris['json']} exists and is not an s2v sidecar; refusing to replace a file s2v did not publish ({hint})"
        if meta.get("id") != plan.job.id:
            return (f"{uris['json']} is the sidecar of job {meta.get('id')!r}, not {plan.job.id!r}; refusing to replace "
                    f"another job's files ({hint})")
        return None
    wa = WorkArea.at(work, settings)
    try:
        claim = json.loads(retrying("storage")(wa.storage.read_bytes, _claim(wa, uris)))
    except (ValueError, S2VError):  # no claim (or an unreadable one): nothing says these files are ours
        claim = None
    if isinstance(claim, dict) and claim.get("id") == plan.job.id and claim.get("outputs") == {
            k: str(u) for k, u in uris.items()}:
        return None
    names = ", ".join(str(u) for u in present)
    return (f"{names} already exist{'s' if len(present) == 1 else ''} with no s2v sidecar; refusing to replace files "
            f"s2v did not publish (move them away, or delete them if an earlier s2v run left them there)")


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
        if retrying("storage")(wa.storage.exists, dest):
            return str(dest)
        with tempfile.TemporaryDirectory(prefix="s2v-audio-") as tmp:
            out = Path(tmp) / "audio.m4a"
            run_ffmpeg(encode_audio_argv(str(src), str(out), settings.audio_bitrate), what=f"audio of {plan.job.id}")
            retrying("storage")(wa.storage.upload, out, dest)
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
    if retrying("storage")(wa.storage.exists, pre):
        if pre.scheme == "file":
            return Path(pre.key), True
        local = tmpd / "audio.m4a"
        retrying("storage")(wa.storage.download, pre, local)
        return local, True
    return src, False


def stitch_and_publish(plan: JobPlan, settings: Settings, work: str, stats: dict, audio_ready=None,
                       keep_checkpoints: bool = False, captions_ready=None) -> dict:
    """Runs as a Ray task: gather the job's checkpointed clips, stitch, check, post step, publish, then drop the
    job's checkpoints (unless settings.keep_checkpoints, or keep_checkpoints: another job of the run shares the
    key). Returns the sidecar. audio_ready is prepare_audio's result, passed only so Ray runs this after it;
    captions_ready is post.prepare_captions' result (speech recognition for `captions: auto`)."""
    t0 = time.monotonic()
    wa = WorkArea.at(work, settings)
    uris = output_uris(plan)
    if published_key(plan, settings) == plan.key and not wa.done_clips(plan.key):
        # Ray retried this task after it had published and removed the checkpoints: the job is done
        return json.loads(retrying("storage")(storage_for(uris["json"], settings).read_bytes, uris["json"]))
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
                    retrying("storage")(wa.storage.download, src, dst)
                    clips.append(dst)
        audio, copy = _stitch_audio(plan, settings, wa, tmpd)
        res = stitch(clips, str(audio), tmpd / f"{plan.job.id}.mp4", fps=plan.fps, expected_frames=plan.frames,
                     expected_audio_s=plan.duration_s, width=plan.width, height=plan.height,
                     audio_bitrate=settings.audio_bitrate, copy_audio=copy)
        from pipeline.gates import check_gates

        check_gates(res.video, plan, settings)
        t_stitch = time.monotonic() - t0
        meta = sidecar(plan, res, {"stitch_s": round(t_stitch, 3)}, stats)
        meta["outputs"] = {k: str(u) for k, u in uris.items()}
        # delivery: captions + renditions from the stitched master (orchestrator/post.py)
        post = deliver(plan, settings, work, res.video, tmpd, asr_ready=captions_ready)
        meta.update(post.meta)
        meta["outputs"].update(post.meta["delivered"])
        side = tmpd / f"{plan.job.id}.json"
        side.write_text(json.dumps(meta, indent=1, sort_keys=True))
        refused = replace_problem(plan, settings, work)
        if refused:  # checked before rendering too; again here, where it counts
            raise RenderError(refused)
        claim = _claim(wa, uris)
        retrying("storage")(wa.storage.write_bytes, claim, json.dumps(
            {"id": plan.job.id, "key": plan.key, "outputs": {k: str(u) for k, u in uris.items()}}).encode())
        st = storage_for(uris["mp4"], settings)
        retrying("storage")(st.publish, [(post.master, uris["mp4"]), (res.poster, uris["jpg"]), *post.files,
                                         (side, uris["json"])])
        retrying("storage")(wa.storage.delete, claim)
    # A master with burned-in captions is not a clean master: a later post-step change re-stitches one from the
    # clip videos (orchestrator/repost.py), so such a job keeps them (tails are gone already; `s2v gc` ages them).
    if not (settings.keep_checkpoints or keep_checkpoints or plan.job.captions_burn):
        try:  # they have served; failing to remove them costs disk (`s2v gc` finds them later), never the job
            wa.remove_job(plan.key)
        except Exception as e:  # noqa: BLE001
            log.warning("could not remove the checkpoints of %s: %s", plan.job.id, e)
    return meta
