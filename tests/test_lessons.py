"""Chapters, transcripts and SCORM packages end to end on the embedded default (real Ray, real ffmpeg, PyAV to
read back): MP4 chapter metadata and a WebVTT chapters track, transcripts from the captions, packages opened as
zips from a fresh folder and checked against the SCORM packaging rules, a packaging-only change that re-makes the
package alone (no clips, the master untouched — also for a job with burned captions whose clips are gone), and
bad chapter and package fields named by row."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import av
import pytest
from xml.etree import ElementTree as ET

import media
from conftest import start_local_ray
from orchestrator.run.runner import render
from pipeline.web import scorm

SRT = ("1\n00:00:00,300 --> 00:00:01,800\nWelcome to <i>lesson one</i>\n\n"
       "2\n00:00:02,600 --> 00:00:03,900\nWater &amp; clouds\n")
CHAPTERS = [{"at": 0, "title": "Welcome"}, {"at": "0:02.5", "title": "Water; and = clouds"}]


def _catalog(d: Path, assets, **lesson) -> Path:
    (d / "lesson.srt").write_text(SRT)
    jobs = [{"id": "lesson", "title": "Lesson one", "audio": str(assets["speech4"]), "captions": "lesson.srt",
             "chapters": CHAPTERS, "package": "scorm2004", "seed": 1, **lesson},
            {"id": "plain", "audio": str(assets["speech4"]), "seed": 2, "package": "scorm12", "renditions": []}]
    return media.write_manifest(d / "catalog.yaml", jobs, {
        "image": str(assets["image"]), "size": "128*128", "output": str(d / "out"),
        "renditions": [{"name": "r96", "height": 96}, {"name": "h64", "height": 64, "format": "hls"}]})


@pytest.fixture(scope="module")
def run(tmp_path_factory, assets):
    from core.settings import Settings

    d = tmp_path_factory.mktemp("lessons")
    manifest = _catalog(d, assets)
    settings = Settings(gpus=2, work=str(d / "work"), cache_dir=d / "cache", hls_segment_s=2.0,
                        rendition_preset="ultrafast")
    start_local_ray()
    res = render(str(manifest), settings)
    assert res.exit_code == 0, {k: v.reason for k, v in res.jobs.items()}
    return {"dir": d, "out": d / "out", "manifest": manifest, "settings": settings, "result": res, "assets": assets}


def _chapters(path: Path) -> list[tuple[float, str]]:
    with av.open(str(path)) as c:
        return [(round(float(ch["start"] * ch["time_base"]), 3), ch["metadata"].get("title")) for ch in c.chapters()]


def test_chapters_are_mp4_metadata_and_a_webvtt_track(run):
    out = run["out"]
    want = [(0.0, "Welcome"), (2.5, "Water; and = clouds")]
    assert _chapters(out / "lesson.mp4") == want
    assert _chapters(out / "lesson.r96.mp4") == want  # MP4 renditions carry them too
    with av.open(str(out / "lesson.mp4")) as c:  # muxing chapters kept the captions track and its language
        subs = [s for s in c.streams if s.type == "subtitle"]
        assert subs and subs[0].metadata.get("language") == "eng"
    vtt = (out / "lesson.chapters.vtt").read_text()
    assert vtt.startswith("WEBVTT") and "00:00:00.000 --> 00:00:02.500\nWelcome" in vtt
    assert "00:00:02.500 --> " in vtt and "Water; and = clouds" in vtt
    assert _chapters(out / "plain.mp4") == []
    meta = json.loads((out / "lesson.json").read_text())
    assert meta["chapters"]["list"][1] == {"at": 2.5, "title": "Water; and = clouds"}
    assert meta["outputs"]["chapters"] == str(out / "lesson.chapters.vtt")


def test_transcripts_follow_the_captions_and_chapters(run):
    out = run["out"]
    text = (out / "lesson.transcript.txt").read_text()
    assert text.splitlines()[0] == "Lesson one"
    assert "[0:00] Welcome\n\nWelcome to lesson one" in text
    assert "[0:02] Water; and = clouds\n\nWater & clouds" in text  # markup gone, entities decoded
    page = (out / "lesson.transcript.html").read_text()
    assert '<html lang="en">' in page and "<h1>Transcript: Lesson one</h1>" in page
    assert "Water &amp; clouds" in page and "<i>" not in page
    assert not (out / "plain.transcript.txt").exists()  # no captions, no transcript
    assert run["result"].jobs["lesson"].deliverables["transcript_html"] == str(out / "lesson.transcript.html")


@pytest.mark.parametrize("job,version", [("lesson", "2004"), ("plain", "1.2")])
def test_packages_open_from_a_fresh_folder_and_follow_the_scorm_rules(run, tmp_path, job, version):
    src = run["out"] / f"{job}.scorm.zip"
    fresh = tmp_path / "upload"
    fresh.mkdir()
    shutil.copy(src, fresh / src.name)
    assert scorm.manifest_problems(fresh / src.name, version) == []
    with zipfile.ZipFile(fresh / src.name) as z:
        assert z.testzip() is None
        z.extractall(fresh / "x")
        names = set(z.namelist())
    root = ET.parse(fresh / "x" / "imsmanifest.xml").getroot()
    ns = {"1.2": "http://www.imsproject.org/xsd/imscp_rootv1p1p2", "2004": "http://www.imsglobal.org/xsd/imscp_v1p1"}
    assert root.tag == f"{{{ns[version]}}}manifest"
    listed = {f.get("href") for f in root.iter(f"{{{ns[version]}}}file")}
    assert listed == names - {"imsmanifest.xml"}  # every file of the package listed, nothing else
    assert {"index.html", "lesson.js", f"media/{job}.mp4", f"media/{job}.jpg"} <= names
    page = (fresh / "x" / "index.html").read_text()
    assert f'data-scorm="{version}"' in page and 'type="video/mp4"' in page
    if job == "lesson":
        assert {"media/lesson.vtt", "media/lesson.chapters.vtt", "media/lesson.transcript.html",
                "media/hls/master.m3u8"} <= names
        assert 'kind="captions"' in page and 'kind="chapters"' in page and "application/vnd.apple.mpegurl" in page
        # the packaged master is the published one, chapters and captions track included
        assert (fresh / "x" / "media" / "lesson.mp4").read_bytes() == (run["out"] / "lesson.mp4").read_bytes()
    meta = json.loads((run["out"] / f"{job}.json").read_text())
    assert meta["package"]["uri"] == str(src) and src.name in {Path(f).name for f in meta["files"]}


def test_manifest_rules_catch_what_an_lms_refuses(tmp_path):
    def pkg(xml: str, files=("index.html",)) -> Path:
        p = tmp_path / f"p{len(list(tmp_path.iterdir()))}.zip"
        with zipfile.ZipFile(p, "w") as z:
            z.writestr("imsmanifest.xml", xml)
            for f in files:
                z.writestr(f, "x")
        return p

    good = scorm.manifest_xml("1.2", "m-1", "T", [scorm.Sco("sco-1", "T", "index.html", ["index.html"])], [])
    assert scorm.manifest_problems(pkg(good), "1.2") == []
    assert any("not well-formed" in p for p in scorm.manifest_problems(pkg(good[:-20]), "1.2"))
    assert any("schemaversion" in p for p in scorm.manifest_problems(pkg(good.replace(">1.2<", ">1.3<")), "1.2"))
    assert any("listed in no resource" in p for p in scorm.manifest_problems(pkg(good, ("index.html", "x.js")), "1.2"))
    assert any("not in the package" in p for p in scorm.manifest_problems(pkg(good, ()), "1.2"))
    assert any("points at no resource" in p
               for p in scorm.manifest_problems(pkg(good.replace('identifierref="sco-1"', 'identifierref="nope"')), "1.2"))
    assert any("used twice" in p for p in scorm.manifest_problems(pkg(good.replace('"m-1"', '"sco-1"')), "1.2"))
    assert any("not manifest in" in p for p in scorm.manifest_problems(pkg(good), "2004"))  # 1.2's namespace
    two = scorm.manifest_xml("2004", "m-2", "T", [scorm.Sco("sco-1", "T", "index.html", [])], [])
    assert scorm.manifest_problems(pkg(two), "2004") == []
    assert any("not an xs:ID" in p for p in scorm.manifest_problems(pkg(two.replace('"m-2"', '"9bad"')), "2004"))
    # 1.2 spells it scormtype, 2004 scormType: an LMS reads the other spelling as no SCO at all
    assert any("adlcp:scormType" in p for p in scorm.manifest_problems(pkg(two.replace("scormType", "scormtype")), "2004"))


def test_a_packaging_only_change_remakes_the_package_alone(run):
    out, settings = run["out"], run["settings"]
    master = (out / "lesson.mp4").read_bytes()
    r96 = (out / "lesson.r96.mp4").stat().st_mtime_ns
    before = zipfile.ZipFile(out / "lesson.scorm.zip").read("index.html").decode()
    manifest = _catalog(run["dir"], run["assets"], package="scorm12", package_completion=0.75)
    res = render(str(manifest), settings)
    assert res.exit_code == 0 and res.jobs["lesson"].status == "published"
    assert res.jobs["lesson"].clips_rendered == 0 and res.jobs["plain"].status == "skipped"
    assert (out / "lesson.mp4").read_bytes() == master and (out / "lesson.r96.mp4").stat().st_mtime_ns == r96
    after = zipfile.ZipFile(out / "lesson.scorm.zip").read("index.html").decode()
    assert after != before and 'data-scorm="1.2"' in after and 'data-completion="0.75"' in after
    assert scorm.manifest_problems(out / "lesson.scorm.zip", "1.2") == []


def test_burned_captions_job_repackages_without_its_clips(tmp_path, assets):
    """A package-only change of a job with burned captions used to demand its clips (to re-stitch a clean
    master) although no picture is encoded."""
    from core.settings import Settings

    manifest = _catalog(tmp_path, assets, captions_burn=True, renditions=[])
    settings = Settings(gpus=2, work=str(tmp_path / "work"), cache_dir=tmp_path / "cache")
    start_local_ray()
    assert render(str(manifest), settings).exit_code == 0
    shutil.rmtree(tmp_path / "work" / "jobs")  # the clips age out (`s2v gc`)
    manifest = _catalog(tmp_path, assets, captions_burn=True, renditions=[], package="scorm12")
    res = render(str(manifest), settings)
    assert res.jobs["lesson"].status == "published", res.jobs["lesson"].reason
    assert scorm.manifest_problems(tmp_path / "out" / "lesson.scorm.zip", "1.2") == []


@pytest.mark.parametrize("field,value,says", [
    ("chapters", [{"at": 3, "title": "B"}, {"at": 1, "title": "A"}], "does not come after"),
    ("chapters", [{"at": "1:75", "title": "A"}], "below 60"),
    ("chapters", [{"at": 1, "title": "  "}], "needs a title"),
    ("chapters", [{"at": 99, "title": "Late"}], "after the end of the audio"),
    ("package", "scorm3", "not a package kind"),
])
def test_bad_chapter_and_package_fields_are_named_by_row(tmp_path, assets, run_cli, capsys, field, value, says):
    m = media.write_manifest(tmp_path / "m.yaml", [{"id": "a", "audio": str(assets["speech4"]), field: value}],
                             {"image": str(assets["image"]), "output": str(tmp_path / "out")})
    assert run_cli("validate", m, "--json") == 2
    doc = json.loads(capsys.readouterr().out)
    assert any(p["field"].startswith(field) and says in p["reason"] for p in doc["problems"]), doc["problems"]


def test_a_catalog_package_holds_one_sco_per_published_lesson(run, run_cli, capsys, tmp_path):
    out = run["out"]
    assert run_cli("package", run["manifest"], "--kind", "scorm12", "--title", "Course") == 0
    pkg = out / "catalog.scorm12.zip"
    assert scorm.manifest_problems(pkg, "1.2") == []
    root = ET.fromstring(zipfile.ZipFile(pkg).read("imsmanifest.xml"))
    ns = "{http://www.imsproject.org/xsd/imscp_rootv1p1p2}"
    assert [i.get("identifierref") for i in root.iter(f"{ns}item")] == ["sco-lesson", "sco-plain"]
    assert root.find(f"{ns}organizations/{ns}organization/{ns}title").text == "Course"
    names = set(zipfile.ZipFile(pkg).namelist())
    assert {"lesson.js", "lesson/index.html", "lesson/media/lesson.mp4", "lesson/media/lesson.chapters.vtt",
            "plain/index.html", "plain/media/plain.mp4"} <= names
    assert '<script src="../lesson.js">' in zipfile.ZipFile(pkg).read("lesson/index.html").decode()
    # a file s2v did not write at the destination stays; an unpublished lesson is named, nothing is written
    foreign = tmp_path / "mine.zip"
    foreign.write_bytes(b"not ours")
    assert run_cli("package", run["manifest"], "--output", foreign) == 2
    assert foreign.read_bytes() == b"not ours" and "not an s2v catalog package" in capsys.readouterr().err
    extra = media.write_manifest(tmp_path / "more.yaml", [{"id": "lesson"}, {"id": "never"}], {
        "audio": str(run["assets"]["speech4"]), "image": str(run["assets"]["image"]), "output": str(out)})
    assert run_cli("package", extra, "--output", tmp_path / "c.zip") == 2
    assert "not published yet, so not packaged: never" in capsys.readouterr().err
    assert not (tmp_path / "c.zip").exists()
