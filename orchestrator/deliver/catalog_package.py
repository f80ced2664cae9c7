"""`s2v package MANIFEST`: one SCORM package for a whole catalog, one SCO per lesson, made from what is published
(no render, no GPU): each lesson's master, poster, captions, chapters and transcripts, one shared player script."""

from __future__ import annotations

import json
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from core.errors import InputError, RenderError, S2VError
from infra.storage import Uri, parse, storage_for
from orchestrator.deliver.lesson import lesson_for, spans, title
from orchestrator.deliver.outputs import is_our_sidecar
from orchestrator.intake.inputs import local_path
from pipeline import captions as cap
from pipeline.web import player, scorm
from pipeline.web import transcript as tr

MARK = b"s2v-batch catalog package"  # the zip comment: a file at the destination without it is not ours


@dataclass(frozen=True)
class Published:
    """A published job as the player needs it (what a JobPlan gives the post step)."""

    job: object
    duration_s: float
    sidecar: dict


def _published(job, settings) -> Published | None:
    u = parse(job.output).join(f"{job.id}.json")
    try:
        meta = json.loads(storage_for(u, settings).read_bytes(u))
    except (S2VError, OSError, ValueError):
        return None
    ok = is_our_sidecar(meta) and meta.get("id") == job.id and (meta.get("outputs") or {}).get("mp4")
    return Published(job, float(meta.get("duration_s") or 0), meta) if ok else None


def default_destination(manifest: str, jobs, kind: str) -> Uri:
    stem = Path(parse(manifest).key).stem
    return parse(jobs[0].output).join(f"{stem}.{kind}.zip")


def _lesson_files(p: Published, settings) -> tuple[dict[str, Path], list]:
    """The lesson's published files by name inside its folder, and its transcript sections."""
    out, i = p.sidecar.get("outputs") or {}, p.job.id
    files = {f"media/{i}.mp4": local_path(out["mp4"], settings)}
    for name, rel in (("jpg", f"{i}.jpg"), ("vtt", f"{i}.vtt"), ("chapters", f"{i}.chapters.vtt"),
                      ("transcript", f"{i}.transcript.txt"), ("transcript_html", f"{i}.transcript.html")):
        if out.get(name):
            files[f"media/{rel}"] = local_path(out[name], settings)
    secs = []
    if f"media/{i}.vtt" in files:
        cues, _ = cap.parse_captions(files[f"media/{i}.vtt"].read_bytes(), f"{i}.vtt", p.duration_s)
        secs = tr.sections(cues, spans(p))
    return files, secs


def build(manifest: str, jobs, kind: str, dest: Uri, settings, package_title: str | None = None) -> dict:
    """Package every job of the catalog; InputError naming the lessons not published yet (none is left out
    silently: an LMS course with a missing lesson is worse than no package)."""
    version = scorm.VERSIONS[kind]
    found = {j.id: _published(j, settings) for j in jobs}
    missing = [jid for jid, p in found.items() if p is None]
    if missing:
        raise InputError(f"not published yet, so not packaged: {', '.join(missing)} (render them first, or leave "
                         "them out of the manifest)")
    st = storage_for(dest, settings)
    if st.exists(dest) and not _ours(st, dest):
        raise InputError(f"{dest} exists and is not an s2v catalog package; refusing to replace it "
                         "(move it away, or give another --output)")
    with tempfile.TemporaryDirectory(prefix="s2v-package-") as tmp:
        tmpd = Path(tmp)
        entries: dict[str, Path | bytes] = {"lesson.js": player.script().encode()}
        scos = []
        for jid, p in found.items():
            files, secs = _lesson_files(p, settings)
            page = f"media/{jid}.transcript.html"
            lesson = lesson_for(p, "media/", hls=False, poster=f"media/{jid}.jpg" in files, secs=secs,
                                scorm_version=version, links=((page, "Transcript"),) if page in files else ())
            entries.update({f"{jid}/{k}": v for k, v in files.items()})
            entries[f"{jid}/index.html"] = player.page(lesson, "../lesson.js").encode()
            names = sorted(k for k in entries if k.startswith(f"{jid}/"))
            scos.append(scorm.Sco(scorm.identifier(jid, "sco"), title(p), f"{jid}/index.html", names))
        name = package_title or Path(parse(manifest).key).stem
        entries["imsmanifest.xml"] = scorm.manifest_xml(version, scorm.identifier(name, "s2v"), name, scos,
                                                        ["lesson.js"]).encode()
        local = tmpd / dest.name
        scorm.write_zip(local, entries, comment=MARK)
        problems = scorm.manifest_problems(local, version)
        if problems:
            raise RenderError("the catalog package breaks the SCORM rules: " + "; ".join(problems))
        size = local.stat().st_size
        st.publish([(local, dest)])
    return {"uri": str(dest), "lessons": len(scos), "version": scorm.SCHEMA_VERSION[version], "bytes": size}


def _ours(st, dest: Uri) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            with zipfile.ZipFile(st.download(dest, Path(tmp) / "old.zip")) as z:
                return z.comment == MARK
        except (zipfile.BadZipFile, OSError, S2VError):
            return False
