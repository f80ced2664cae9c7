"""The post step of a job: captions and delivery renditions from the stitched master, keyed so only what changed
is redone (a renditions-only change of a published job reruns this step alone: no GPU, no clips)."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import RenderError, S2VError
from core.settings import Settings
from infra.storage import Uri, parse, storage_for
from orchestrator.intake.delivery_fields import alpha3
from orchestrator.deliver import lesson
from orchestrator.deliver.outputs import output_uris
from orchestrator.intake.inputs import local_path, sha256_file
from orchestrator.plan.records import JobPlan
from pipeline import captions as cap
from pipeline import chapters as chap
from pipeline import delivery as dv

POST_VERSION = "1"  # bump when what the post step writes changes: every rendition key changes with it
STATS_KEYS = ("gpu_s", "cost_usd", "clips_rendered", "retries", "preemptions", "attempts")


def _h(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:24]


# ---------- keys: what decides a redo ----------

def _asr_identity(settings: Settings) -> str:
    from pipeline.asr import model_identity

    return model_identity(settings.asr_model_dir) if settings.asr_model_dir else "none"


def asr_key(plan: JobPlan, settings: Settings) -> str:
    from pipeline.asr import ASR_VERSION, whisper_language

    return _h({"audio": plan.audio_sha256, "model": _asr_identity(settings), "asr": ASR_VERSION,
               "lang": whisper_language(plan.job.caption_language), "style": [cap.MAX_CHARS, cap.MAX_CUE_S]})


def caption_key(plan: JobPlan, settings: Settings) -> str | None:
    job = plan.job
    if not job.captions:
        return None
    src = {"asr": asr_key(plan, settings)} if job.captions_auto else \
        {"file": sha256_file(local_path(job.captions, settings))}
    return _h({"src": src, "lang": job.caption_language, "post": POST_VERSION})


def _encoding_id(settings: Settings) -> list:
    return [settings.rendition_preset, settings.rendition_crf, settings.rendition_audio_bitrate,
            settings.hls_segment_s, settings.caption_font, settings.crf]


def master_key(plan: JobPlan, settings: Settings, ckey: str | None) -> str | None:
    """None: the master is the stitch's output, untouched."""
    chapters = lesson.chapters_id(plan)
    if ckey is None and chapters is None:
        return None
    burn = plan.job.captions_burn
    return _h({"job": plan.key, "captions": ckey, "burn": burn, "enc": _encoding_id(settings) if burn else None,
               **({"chapters": chapters} if chapters else {})})


def rendition_key(plan: JobPlan, r, ckey: str | None, settings: Settings) -> str:
    # an MP4 carries the captions as a track; an HLS variant only when they are burned (else they are a group)
    uses_captions = ckey if (r.format == "mp4" or plan.job.captions_burn) else None
    chapters = lesson.chapters_id(plan) if r.format == "mp4" else None  # MP4 chapters; HLS players use the track
    return _h({"job": plan.key, "r": r.model_dump(), "captions": uses_captions, "burn": plan.job.captions_burn,
               "enc": _encoding_id(settings), "post": POST_VERSION, **({"chapters": chapters} if chapters else {})})


def post_key(plan: JobPlan, settings: Settings) -> str | None:
    """The whole post step's key; None when the job asks for none of it (captions, renditions, chapters, package)."""
    job = plan.job
    if not job.captions and not job.renditions and not job.chapters and job.package == "none":
        return None
    ckey = caption_key(plan, settings)
    mkey, rkeys = master_key(plan, settings, ckey), [rendition_key(plan, r, ckey, settings) for r in job.renditions]
    return _h({"master": mkey, "captions": ckey, "renditions": rkeys, **lesson.key_parts(plan, ckey, mkey, rkeys)})


def post_current(plan: JobPlan, settings: Settings) -> bool:
    """True when the published sidecar records this post key (the caller checked the job key already)."""
    side = output_uris(plan)["json"]
    try:
        meta = json.loads(storage_for(side, settings).read_bytes(side))
        return (meta.get("post") or {}).get("key") == post_key(plan, settings)
    except (S2VError, OSError, ValueError):
        return False  # unreadable here: the post task reports the real problem


# ---------- captions: speech recognition, run as a CPU task that overlaps the render ----------

def _asr_uri(plan: JobPlan, settings: Settings, work: str) -> Uri:
    return parse(work).join("asr", f"{asr_key(plan, settings)}.vtt")


def transcribe_to_work(plan: JobPlan, settings: Settings, work: str) -> list[cap.Cue]:
    """Whisper → words → cues → WebVTT in the work area (keyed by audio, model and language: done once)."""
    from pipeline.asr import transcribe
    from pipeline.audio import decode

    pcm = decode(str(local_path(plan.job.audio, settings)))
    words = transcribe(pcm, settings.asr_model_dir, plan.job.caption_language, threads=int(settings.asr_cpus))
    cues = cap.cues_from_words(words, plan.duration_s, plan.job.caption_language)
    if not cues:
        raise RenderError(f"speech recognition found no words in the audio of {plan.job.id}")
    u = _asr_uri(plan, settings, work)
    storage_for(u, settings).write_bytes(u, cap.write_vtt(cues).encode())
    return cues


def prepare_captions(plan: JobPlan, settings: Settings, work: str) -> dict:
    """Runs as a Ray task (CPU only) while the job renders. Never raises: the post step reports the error."""
    try:
        u = _asr_uri(plan, settings, work)
        if not storage_for(u, settings).exists(u):
            transcribe_to_work(plan, settings, work)
        return {"uri": str(u)}
    except Exception as e:  # noqa: BLE001 - carried to the post step, which fails the job with it
        return {"error": f"{type(e).__name__}: {e}"}


def _cues(plan: JobPlan, settings: Settings, work: str, asr_ready) -> list[cap.Cue]:
    job = plan.job
    if not job.captions_auto:
        data = local_path(job.captions, settings).read_bytes()
        return dv.read_cues(data, Path(job.captions).name, plan.duration_s, job.source or job.id)
    if isinstance(asr_ready, dict) and asr_ready.get("error"):
        raise RenderError(f"captions: auto: {asr_ready['error']}")
    u = _asr_uri(plan, settings, work)
    st = storage_for(u, settings)
    if st.exists(u):
        return dv.read_cues(st.read_bytes(u), u.name, plan.duration_s, job.id)
    return transcribe_to_work(plan, settings, work)


# ---------- the step ----------

@dataclass
class Delivery:
    master: Path | None  # the MP4 to publish as <id>.mp4; None leaves the published one as it is
    files: list[tuple[Path, Uri]] = field(default_factory=list)
    meta: dict = field(default_factory=dict)


def _encoding(settings: Settings) -> dv.Encoding:
    return dv.Encoding(preset=settings.rendition_preset, crf=settings.rendition_crf, master_crf=settings.crf,
                       audio_bitrate=settings.rendition_audio_bitrate, segment_s=settings.hls_segment_s,
                       style=cap.BurnStyle(font=settings.caption_font), fonts_dir=settings.caption_fonts_dir)


def _master(m: dv.Master, cues, lang3: str | None, burn: bool, ffmeta: str | None, tmpd: Path, enc: dv.Encoding,
            republish: bool) -> Path:
    """The master to publish: the stitch's, + a captions track (or burned captions), + MP4 chapters."""
    master = m.path
    if cues:
        master = dv.captioned_master(m, cues, lang3, burn, tmpd, enc)
    elif republish:
        master = dv.plain_master(m, tmpd)  # captions (or chapters) were dropped from the job
    return dv.chaptered(master, ffmeta, tmpd / "chaptered-master.mp4") if ffmeta else master


def _folder_files(folder: Path, base: Uri, rel: str) -> list[tuple[Path, Uri]]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    # the playlist after its segments: it never names a segment that is not there yet
    files.sort(key=lambda p: p.name == "index.m3u8")
    return [(p, base.join(f"{rel}/{p.name}")) for p in files]


def deliver(plan: JobPlan, settings: Settings, work: str, master_file: Path, tmpd: Path,
            previous: dict | None = None, asr_ready=None, poster: Path | None = None) -> Delivery:
    """Captions, renditions, chapters, transcripts and package for one job from its stitched master. previous:
    the published sidecar — its outputs whose keys still match are kept, not rebuilt."""
    t0, job, base, enc = time.monotonic(), plan.job, parse(plan.job.output), _encoding(settings)
    m = dv.Master.of(master_file, plan.fps, plan.duration_s)
    prev_post = (previous or {}).get("post") or {}
    prev_r = {r["name"]: r for r in (previous or {}).get("renditions") or []}
    ckey = caption_key(plan, settings)
    mkey = master_key(plan, settings, ckey)
    out = Delivery(master=master_file)
    cues = _cues(plan, settings, work, asr_ready) if job.captions else None
    lang3 = alpha3(job.caption_language) if cues else None
    outputs: dict[str, str] = {}
    if cues:
        vtt = tmpd / f"{job.id}.vtt"
        vtt.write_text(cap.write_vtt(cues), encoding="utf-8")
        out.files.append((vtt, base.join(vtt.name)))
        outputs["vtt"] = str(base.join(vtt.name))
        out.meta["captions"] = {"source": "auto" if job.captions_auto else "file",
                                "input": None if job.captions_auto else job.captions, "language": job.caption_language,
                                "burned": job.captions_burn, "cues": len(cues), "key": ckey, "uri": outputs["vtt"]}
    ffmeta = chap.write_ffmetadata(job.chapters, plan.duration_s) if job.chapters else None
    unchanged = previous is not None and prev_post.get("master_key") == mkey  # the published master stays
    out.master = None if unchanged else _master(m, cues, lang3, job.captions_burn, ffmeta, tmpd, enc,
                                                previous is not None)
    audio = dv.AudioTargets(str(local_path(job.audio, settings)), tmpd, enc.audio_bitrate)
    entries, first_pts = [], None
    for r in job.renditions:
        rkey = rendition_key(plan, r, ckey, settings)
        old = prev_r.get(r.name)
        if old and old.get("key") == rkey and _still_there(old, settings):
            entries.append(old)
            first_pts = first_pts if first_pts is not None else old.get("first_pts_s")
            continue
        encoded, info = dv.encode_rendition(m, r, audio, tmpd, enc, cues=cues, language3=lang3,
                                            burn=job.captions_burn)
        info["key"] = rkey
        if r.format == "mp4":
            if ffmeta:
                encoded = dv.chaptered(encoded, ffmeta, tmpd / f"chaptered-{r.name}.mp4")
            rel = f"{job.id}.{r.name}.mp4"
            out.files.append((encoded, base.join(rel)))
            info["uri"] = str(base.join(rel))
        else:
            rel = f"{job.id}.hls/{r.name}-{rkey[:8]}"
            folder = tmpd / "hls" / f"{r.name}-{rkey[:8]}"
            info.update(dv.cut_hls(encoded, folder, enc.segment_s, r.segments))
            info["playlist"] = f"{r.name}-{rkey[:8]}/index.m3u8"
            info["uri"] = str(base.join(f"{rel}/index.m3u8"))
            out.files += _folder_files(folder, base, rel)
            first_pts = info["first_pts_s"] if first_pts is None else first_pts
        entries.append(info)
    for e in entries:
        outputs[f"rendition:{e['name']}"] = e["uri"]
    hls = [e for e in entries if e["format"] == "hls"]
    if hls:
        subs = None
        if cues:
            rel = f"subs-{ckey[:8]}"
            folder = tmpd / "hls" / rel
            dv.hls_subtitles(cues, plan.duration_s, enc.segment_s, first_pts or 0.0, folder)
            out.files += _folder_files(folder, base, f"{job.id}.hls/{rel}")
            subs = (f"{rel}/index.m3u8", job.caption_language, lesson.language_name(job.caption_language))
        variants = [dv.rd.Variant(e["playlist"], e["bandwidth"], e["average_bandwidth"], e["width"], e["height"],
                                  e["fps"], e["codecs"]) for e in hls]
        playlist = tmpd / "master.m3u8"
        playlist.write_text(dv.rd.master_playlist(variants, subs))
        out.files.append((playlist, base.join(f"{job.id}.hls/master.m3u8")))
        outputs["hls"] = str(base.join(f"{job.id}.hls/master.m3u8"))
        out.meta["hls"] = {"master": outputs["hls"], "segment_s": enc.segment_s,
                           "subtitles": bool(subs), "variants": [e["name"] for e in hls]}
    out.meta["renditions"] = entries
    lesson.add(plan, settings, out, cues, out.master or m.path, tmpd, poster, outputs)
    out.meta["post"] = {"key": post_key(plan, settings), "master_key": mkey, "post_s": round(time.monotonic() - t0, 3)}
    out.meta["delivered"] = outputs
    return out


def _still_there(entry: dict, settings: Settings) -> bool:
    try:
        u = parse(entry["uri"])
        return bool(storage_for(u, settings).exists(u))
    except (S2VError, KeyError):
        return False


def deliverables(meta: dict) -> dict[str, str]:
    """Name → URI of everything the post step published (for the report and webhooks)."""
    return dict(meta.get("delivered") or {})
