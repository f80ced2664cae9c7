"""The learner-facing part of the post step: the chapters track, transcripts and the SCORM package of a job,
keyed like the rest of the step (a packaging-only change re-makes the package alone, on a CPU)."""

from __future__ import annotations

from pathlib import Path

from core.errors import RenderError, S2VError
from core.settings import Settings
from infra.storage import Uri, parse, storage_for
from orchestrator.intake.inputs import local_path
from orchestrator.plan.records import JobPlan
from pipeline import captions as cap
from pipeline import chapters as chap
from pipeline.web import player, scorm
from pipeline.web import transcript as tr

LESSON_VERSION = "1"  # bump when what this module writes changes: transcript and package keys change with it


def title(plan: JobPlan) -> str:
    return plan.job.title or plan.job.id


def spans(plan: JobPlan) -> list[tuple[float, float, str]]:
    return chap.spans(plan.job.chapters, plan.duration_s)


def chapters_id(plan: JobPlan) -> list | None:
    """What the chapters add to a key (None without chapters: keys of jobs without them stay as they were)."""
    return [c.model_dump() for c in plan.job.chapters] or None


def names(plan: JobPlan) -> dict[str, Uri]:
    """Every name this module may publish for the job, whether or not the job asks for it."""
    base, i = parse(plan.job.output), plan.job.id
    return {"chapters": base.join(f"{i}.chapters.vtt"), "transcript": base.join(f"{i}.transcript.txt"),
            "transcript_html": base.join(f"{i}.transcript.html"), "package": base.join(f"{i}.scorm.zip")}


def wanted(plan: JobPlan) -> list[str]:
    job = plan.job
    return ((["chapters"] if job.chapters else []) + (["transcript", "transcript_html"] if job.captions else [])
            + (["package"] if job.package != "none" else []))


def key_parts(plan: JobPlan, ckey: str | None, mkey: str | None, rkeys: list[str]) -> dict:
    """This module's share of the post key; empty for a job that asks for none of it."""
    job, out = plan.job, {}
    if job.chapters:
        out["chapters"] = chapters_id(plan)
    if job.captions:
        out["transcript"] = [ckey, chapters_id(plan), title(plan), LESSON_VERSION]
    if job.package != "none":
        out["package"] = [job.package, job.package_completion, plan.key, mkey, ckey, rkeys, chapters_id(plan),
                          title(plan), LESSON_VERSION]
    return out


def add(plan: JobPlan, settings: Settings, d, cues: list[cap.Cue] | None, master: Path, tmpd: Path,
        poster: Path | None, outputs: dict[str, str]) -> None:
    """Chapters track, transcripts and package of one job, added to the post step's Delivery `d`."""
    job, uris = plan.job, names(plan)
    files: dict[str, Path] = {}
    if job.chapters:
        files["chapters"] = tmpd / uris["chapters"].name
        files["chapters"].write_text(chap.write_chapters_vtt(job.chapters, plan.duration_s), encoding="utf-8")
        d.meta["chapters"] = {"list": [c.model_dump() for c in job.chapters], "uri": str(uris["chapters"]),
                              "mp4": True}
    secs = tr.sections(cues, spans(plan)) if cues else []
    if cues:
        files["transcript"] = tmpd / uris["transcript"].name
        files["transcript"].write_text(tr.transcript_text(title(plan), secs), encoding="utf-8")
        files["transcript_html"] = tmpd / uris["transcript_html"].name
        files["transcript_html"].write_text(tr.transcript_page(title(plan), job.caption_language, secs),
                                            encoding="utf-8")
        d.meta["transcript"] = {"text": str(uris["transcript"]), "html": str(uris["transcript_html"]),
                                "paragraphs": sum(len(s.paragraphs) for s in secs)}
    if job.package != "none":
        files["package"] = tmpd / uris["package"].name
        vtt = next((p for p, u in d.files if u.name == f"{job.id}.vtt"), None)
        info = build_package(plan, files["package"], master, poster or _poster(plan, settings),
                             {**files, **({"captions": vtt} if vtt else {})}, secs, _hls_files(plan, settings, d, tmpd))
        d.meta["package"] = {"kind": job.package, "uri": str(uris["package"]), **info}
    for name, path in files.items():
        d.files.append((path, uris[name]))
        outputs[name] = str(uris[name])


def _poster(plan: JobPlan, settings: Settings) -> Path | None:
    """The published poster (a repost has no stitch output to take it from)."""
    try:
        return local_path(str(parse(plan.job.output).join(f"{plan.job.id}.jpg")), settings)
    except (S2VError, OSError):
        return None  # a package without a poster still plays


def _hls_files(plan: JobPlan, settings: Settings, d, tmpd: Path) -> dict[str, Path]:
    """The job's HLS ladder as files (path inside the tree → local file): what this post step made, and the
    published files of variants it kept."""
    if not d.meta.get("hls"):
        return {}
    tree = str(parse(plan.job.output).join(f"{plan.job.id}.hls")) + "/"
    out = {str(u)[len(tree):]: p for p, u in d.files if str(u).startswith(tree)}
    for e in [e for e in d.meta.get("renditions", []) if e["format"] == "hls"]:
        folder = e["playlist"].rsplit("/", 1)[0] + "/"
        if not any(k.startswith(folder) for k in out):
            prefix = parse(tree + folder)
            st = storage_for(prefix, settings)
            for u in st.list(prefix):
                rel = str(u)[len(tree):]
                out[rel] = st.download(u, tmpd / "kept-hls" / rel)
    return out


def build_package(plan: JobPlan, dest: Path, master: Path, poster: Path | None, files: dict[str, Path],
                  secs: list, hls: dict[str, Path]) -> dict:
    """One lesson as a SCORM package: launch page + player script + media; checked before it is published.
    files: the job's delivery files by name (captions, chapters, transcripts) as the post step wrote them."""
    job, version = plan.job, scorm.VERSIONS[plan.job.package]
    entries: dict[str, Path | bytes] = {f"media/{job.id}.mp4": master}
    if poster:
        entries[f"media/{job.id}.jpg"] = poster
    for name in ("captions", "chapters", "transcript", "transcript_html"):
        if name in files:
            entries[f"media/{files[name].name}"] = files[name]
    entries.update({f"media/hls/{rel}": p for rel, p in hls.items()})
    links = tuple((f"media/{files[n].name}", label) for n, label in
                  (("transcript_html", "Transcript (web page)"), ("transcript", "Transcript (text)")) if n in files)
    lesson = lesson_for(plan, "media/", hls=bool(hls), poster=bool(poster), secs=secs, scorm_version=version,
                        links=links)
    entries["index.html"] = player.page(lesson, "lesson.js").encode()
    entries["lesson.js"] = player.script().encode()
    sco = scorm.Sco(scorm.identifier(job.id, "sco"), title(plan), "index.html", sorted(entries))
    entries["imsmanifest.xml"] = scorm.manifest_xml(version, scorm.identifier(job.id, "s2v"), title(plan), [sco],
                                                    []).encode()
    scorm.write_zip(dest, entries)
    problems = scorm.manifest_problems(dest, version)
    if problems:
        raise RenderError(f"{job.id}: the SCORM package breaks the SCORM rules: " + "; ".join(problems))
    return {"version": scorm.SCHEMA_VERSION[version], "files": len(entries), "bytes": dest.stat().st_size,
            "completion": job.package_completion, "hls": bool(hls)}


def lesson_for(plan: JobPlan, prefix: str, *, hls: bool, poster: bool, secs: list,
               scorm_version: str | None = None, links: tuple = ()) -> player.Lesson:
    """The player's view of a job whose files sit under `prefix` (relative to the page) by their published names."""
    job, i = plan.job, plan.job.id
    captions = player.Track(f"{prefix}{i}.vtt", job.caption_language, language_name(job.caption_language)) \
        if job.captions else None
    return player.Lesson(
        id=i, title=title(plan), mp4=f"{prefix}{i}.mp4", lang=job.caption_language,
        hls=f"{prefix}hls/master.m3u8" if hls else None, poster=f"{prefix}{i}.jpg" if poster else None,
        captions=captions, chapters_vtt=f"{prefix}{i}.chapters.vtt" if job.chapters else None,
        chapters=tuple(spans(plan)), transcript=tuple(secs), links=links, completion=job.package_completion,
        scorm=scorm_version)


def language_name(tag: str) -> str:
    """The language's own name for the player's subtitle menu ('English (United States)', 'português (Brasil)')."""
    import importlib.util

    import langcodes

    if importlib.util.find_spec("language_data") is None:  # langcodes prints a warning before it raises
        return tag
    try:
        return langcodes.Language.get(tag).display_name(tag).replace('"', "'")
    except LookupError:
        return tag
