"""Issues 4 and 12: 50+ kinds of bad input, each named by file, row (line) and field, while the valid rows still
publish. One `s2v render` (in-process CLI, real Ray, ffmpeg, local storage) of one YAML catalog holds most kinds as
rows; one CSV render holds the header kinds; what cannot share a manifest (malformed files, hostile YAML,
operator flags, a manifest in a bucket) are cases of their own, none of which starts Ray."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from core.settings import Settings
import media
from core.errors import ManifestError, Problem
from orchestrator.run.results import JobResult
from pipeline.media import ffmpeg_bin
from storage_servers import gcs_env, gcs_server, gcs_settings, unique  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parents[1]
LINK = "[link=https://evil.example]click[/link]"

# label → (field, words the reason must contain). The label is the row's id unless the id is the problem.
BAD = {
    "missing-audio": ("audio", "no such file"),
    "zero-audio": ("audio", "empty (0 bytes)"),
    "corrupt-audio": ("audio", "not a readable audio file"),
    "text-named-mp3": ("audio", "not a readable audio file"),
    "silent-audio": ("audio", "silent"),
    "too-long-audio": ("audio", "exceeds the limit"),
    "video-without-sound": ("audio", "no audio stream"),
    "audio-is-number": ("audio", "must be a path or URI"),
    "no-audio-field": ("audio", "is required"),
    "markup-in-path": ("audio", "no such file"),  # "nope[/b].wav": once a MarkupError after the good jobs published
    "escape-in-path": ("audio", "no such file"),  # an ANSI colour sequence in a path
    "text-named-jpg": ("image", "not an image"),
    "one-pixel-image": ("image", "1×1 px"),
    "truncated-jpeg": ("image", "truncated"),
    "image-is-folder": ("image", "is a folder"),
    "ftp-image": ("image", "unsupported URI scheme 'ftp'"),
    "s3-without-bucket": ("image", "has no bucket"),
    "gs-dotdot-key": ("image", "contains '..'"),
    "missing-pose": ("pose", "no such file"),
    "text-as-pose": ("pose", "not a readable video"),
    "unknown-backend": ("backend", "unknown backend 'nosuch'"),
    "typo-field": ("sead", "did you mean 'seed'"),
    "markup-field": ("[/b]", "unknown field"),
    "link-field": (LINK, "unknown field"),
    "key-given-twice": ("audio", "given twice in this job"),
    "size-word": ("size", "WIDTH*HEIGHT"),
    "size-too-small": ("size", "≥ 64"),
    "size-too-large": ("size", "area at most 4096*4096"),
    "negative-seed": ("seed", "greater than or equal to 0"),
    "seed-word": ("seed", "valid integer"),
    "seed-too-big": ("seed", "less than 2147483648"),
    "seed-fraction": ("seed", "fractional part"),
    "seed-yes": ("seed", "YAML boolean"),
    "priority-word": ("priority", "valid integer"),
    "scene-min-above-max": ("min_scene_s", "must be below max_scene_s"),
    "scene-too-long": ("max_scene_s", "less than or equal to 600"),
    "negative-pause": ("min_pause_s", "greater than 0"),
    "zero-steps": ("steps", "greater than or equal to 1"),
    "guidance-nan": ("guidance", "less than or equal to 30"),
    "prompt-is-list": ("prompt", "valid string"),
    "tags-mapping": ("tags", "valid tuple"),
    "model-dir-list": ("model_dir", "must be a path or URI"),
    "output-under-a-file": ("output", "not writable"),
    "output-without-bucket": ("output", "has no bucket"),
}
# rows whose id is the problem: (label, the id as written, words in the reason)
BAD_IDS = [("dotdot", "../escape", "no '..'"), ("slash", "nested/id", "'/'"), ("empty", "", "1-128 characters"),
           ("duplicate", "ok-1", "duplicate id 'ok-1'"), ("newline", "evil\n", "1-128 characters"),
           ("list", ["a", "b"], "must be text, got a list"), ("mapping", {"a": 1}, "must be text, got a dict")]


def _media(d: Path, assets) -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    f = {"zero": d / "zero.wav", "corrupt": d / "corrupt.wav", "text_mp3": d / "notes.mp3",
         "text_jpg": d / "photo.jpg", "tiny": d / "tiny.png", "trunc": d / "trunc.jpg", "folder": d / "folder.jpg",
         "file": d / "a-file", "noaudio": d / "noaudio.mp4"}
    f["zero"].write_bytes(b"")
    f["corrupt"].write_bytes(b"RIFF" + np.random.default_rng(1).bytes(20000))  # a WAV magic, then noise
    f["text_mp3"].write_text("these are lecture notes, not audio\n" * 40)
    f["text_jpg"].write_text("not a photo\n" * 40)
    Image.new("RGB", (1, 1), "white").save(f["tiny"])
    Image.open(assets["image"]).convert("RGB").save(d / "full.jpg", quality=90)
    f["trunc"].write_bytes((d / "full.jpg").read_bytes()[:3000])  # headers intact: only a full decode notices
    f["folder"].mkdir()
    f["file"].write_text("a regular file where the output folder should be\n")
    f["silent"] = media.write_wav(d / "silent.wav", np.zeros(2 * media.SR, np.float32))
    pcm, _ = media.speech([(7.0, 0)], seed=5)
    f["long"] = media.write_wav(d / "long.wav", pcm)  # above max_duration_s=5 set below
    subprocess.run([ffmpeg_bin(), "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=red:s=64x64:d=1",
                    "-c:v", "libx264", str(f["noaudio"])], check=True, timeout=60)
    return f


def _row_lines(path: Path) -> list[int]:
    """The line of each job in the file, as a reader would find it."""
    root = yaml.compose(path.read_text())
    jobs = next(v for k, v in root.value if k.value == "jobs")
    return [node.start_mark.line + 1 for node in jobs.value]


@pytest.fixture(scope="module")
def bad_manifest(tmp_path_factory, assets):
    d = tmp_path_factory.mktemp("bad")
    f = _media(d / "media", assets)
    good = {"audio": str(assets["speech4"])}
    rows = {
        "missing-audio": {"audio": str(d / "media" / "nope.wav")},
        "zero-audio": {"audio": str(f["zero"])},
        "corrupt-audio": {"audio": str(f["corrupt"])},
        "text-named-mp3": {"audio": str(f["text_mp3"])},
        "silent-audio": {"audio": str(f["silent"])},
        "too-long-audio": {"audio": str(f["long"])},
        "video-without-sound": {"audio": str(f["noaudio"])},
        "audio-is-number": {"audio": 5},
        "no-audio-field": {},
        "markup-in-path": {"audio": str(d / "media" / "nope[/b].wav")},
        "escape-in-path": {"audio": str(d / "media" / "nope\x1b[31mred.wav")},
        "text-named-jpg": {**good, "image": str(f["text_jpg"])},
        "one-pixel-image": {**good, "image": str(f["tiny"])},
        "truncated-jpeg": {**good, "image": str(f["trunc"])},
        "image-is-folder": {**good, "image": str(f["folder"])},
        "ftp-image": {**good, "image": "ftp://example.com/p.jpg"},
        "s3-without-bucket": {**good, "image": "s3:///p.jpg"},
        "gs-dotdot-key": {**good, "image": "gs://bucket/a/../p.jpg"},
        "missing-pose": {**good, "pose": "pose/nope.mp4"},  # relative: resolves against the manifest's folder
        "text-as-pose": {**good, "pose": str(f["text_mp3"])},
        "unknown-backend": {**good, "backend": "nosuch"},
        "typo-field": {**good, "sead": 3},
        "markup-field": {**good, "[/b]": 1},
        "link-field": {**good, LINK: 1},
        "size-word": {**good, "size": "big"},
        "size-too-small": {**good, "size": "16*16"},
        "size-too-large": {**good, "size": "8192*8192"},
        "negative-seed": {**good, "seed": -1},
        "seed-word": {**good, "seed": "ten"},
        "seed-too-big": {**good, "seed": 2**31},
        "seed-fraction": {**good, "seed": 1.5},
        "seed-yes": {**good, "seed": True},  # written `seed: true`; `yes` loads the same
        "priority-word": {**good, "priority": "high"},
        "scene-min-above-max": {**good, "min_scene_s": 10, "max_scene_s": 5},
        "scene-too-long": {**good, "max_scene_s": 1000},
        "negative-pause": {**good, "min_pause_s": -1},
        "zero-steps": {**good, "steps": 0},
        "guidance-nan": {**good, "guidance": float("nan")},
        "prompt-is-list": {**good, "prompt": ["a", "b"]},
        "tags-mapping": {**good, "tags": {"a": 1}},
        "model-dir-list": {**good, "model_dir": ["a"]},
        "output-under-a-file": {**good, "output": str(f["file"] / "out")},
        "output-without-bucket": {**good, "output": "s3:///out"},
    }
    assert set(rows) | {"key-given-twice"} == set(BAD)
    jobs = [{"id": "ok-1", **good, "seed": 1}]
    jobs += [{"id": k, **v} for k, v in rows.items()]
    jobs += [{"id": i, **good} for _, i, _ in BAD_IDS]
    jobs.append({"id": "ok-2", **good, "seed": 2, "prompt": f"the second valid row {LINK}"})
    m = media.write_manifest(d / "catalog.yaml", jobs,
                             {"image": str(assets["image"]), "size": "96*96", "output": str(d / "out")})
    # a key given twice cannot be dumped from a dict: written by hand, as the last job
    with m.open("a") as fh:
        fh.write(f"- id: key-given-twice\n  audio: {assets['speech4']}\n  audio: {d / 'media' / 'other.wav'}\n")
    labels = ["ok-1", *rows, *(label for label, _, _ in BAD_IDS), "ok-2", "key-given-twice"]
    return m, dict(zip(labels, _row_lines(m)))


class CliRun:
    """What `s2v render` left: its exit code, its terminal output and the run's full report."""

    def __init__(self, code: int, output: str, report: dict):
        self.exit_code, self.output, self.report = code, output, report
        self.jobs = {k: JobResult(**v) for k, v in report["jobs"].items()}
        self.problems = [Problem(**p) for p in report["problems"]]


def cli_render(manifest: Path, work: Path, run_id: str, **env) -> CliRun:
    """`s2v render` in-process (so it joins the test's Ray), with its stderr captured as a user would see it."""
    from orchestrator.cli.main import main

    err = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, str(v))
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(err):
            try:
                main(["render", str(manifest), "--no-progress", "--work", str(work), "--run-id", run_id])
                code = 0
            except SystemExit as e:
                code = int(e.code or 0)
    report = json.loads((work / "runs" / run_id / "report.json").read_text())
    return CliRun(code, err.getvalue(), report)


@pytest.fixture(scope="module")
def rendered(bad_manifest, tmp_path_factory):
    """One render of the whole catalog (valid rows render on real Ray; bad ones never reach a GPU)."""
    from conftest import start_local_ray

    start_local_ray()
    tmp = tmp_path_factory.mktemp("badrun")
    return cli_render(bad_manifest[0], tmp / "work", "bad-inputs", S2V_GPUS=2, S2V_CACHE_DIR=tmp / "cache",
                      S2V_MAX_DURATION_S=5.0)


@pytest.mark.parametrize("jid", sorted(BAD))
def test_each_bad_row_is_named_by_line_and_field(rendered, bad_manifest, jid):
    m, lines = bad_manifest
    field, words = BAD[jid]
    where = f"{m}:{lines[jid]} "
    mine = [p for p in rendered.problems if p.where.startswith(where)]
    assert mine, f"no problem reported at {where}"
    assert any(p.field == field and words in str(p) for p in mine), [str(p) for p in mine]
    r = rendered.jobs[jid]
    assert r.status == "invalid" and words in r.reason and where in r.reason
    assert not (m.parent / "out" / f"{jid}.mp4").exists()


@pytest.mark.parametrize("label,jid,words", BAD_IDS, ids=[b[0] for b in BAD_IDS])
def test_bad_ids_are_named_by_their_row(rendered, bad_manifest, label, jid, words):
    m, lines = bad_manifest
    where = f"{m}:{lines[label]} "
    assert any(p.where.startswith(where) and p.field == "id" and words in p.reason for p in rendered.problems)
    r = next(r for r in rendered.jobs.values() if r.status == "invalid" and where in (r.reason or ""))
    assert words in r.reason
    if jid in ("", "ok-1") or not isinstance(jid, str):  # no usable id, or a valid job's: keyed by the row
        assert where in r.id and r.id != jid and rendered.jobs["ok-1"].status == "published"
    assert not list((m.parent / "out").glob("evil*"))  # "evil\n.mp4" was once published


def test_valid_rows_publish_and_exit_code_is_2(rendered, bad_manifest):
    m, _ = bad_manifest
    out = m.parent / "out"
    assert rendered.exit_code == 2
    published = {k for k, r in rendered.jobs.items() if r.status == "published"}
    assert published == {"ok-1", "ok-2"}, {k: r.reason for k, r in rendered.jobs.items() if r.status != "invalid"}
    for jid in published:
        assert (out / f"{jid}.mp4").stat().st_size > 0
        assert json.loads((out / f"{jid}.json").read_text())["id"] == jid
    assert sorted(p.name for p in out.glob("*.mp4")) == ["ok-1.mp4", "ok-2.mp4"]
    n_invalid = sum(r.status == "invalid" for r in rendered.jobs.values())
    assert n_invalid == len(BAD) + len(BAD_IDS)
    # every problem names a row of this manifest, not just the file
    assert all(re.match(rf"^{re.escape(str(m))}:\d+ \(job #\d+\)$", p.where) for p in rendered.problems)


def test_terminal_output_shows_user_data_as_written(rendered, bad_manifest):
    """Item 2: markup and escape sequences in paths, keys and prompts print as text; the run's output (problems,
    results, report paths) is complete — once a "[/b]" in a path crashed it after the good jobs had published."""
    text = rendered.output
    assert "MarkupError" not in text and "Traceback" not in text
    assert "nope[/b].wav" in text and LINK in text
    assert "\x1b" not in text and "nope\\x1b[31mred.wav" in text  # the ESC shown, never sent to the terminal
    assert "ok-1" in text and "published" in text and "report: " in text
    m, lines = bad_manifest
    # plain lines on a non-terminal (CI logs): place, id, field, reason on one line
    assert f"{m}:{lines['markup-field']} (job #{list(lines).index('markup-field') + 1}): id markup-field: [/b]: " \
           "unknown field" in text


def test_output_folder_report_lists_only_its_jobs_with_relative_posters(rendered, bad_manifest, tmp_path):
    """Item 4: an output folder's report names only the jobs published there (the full report, with every row's
    problem, stays in the work area). Item 14: posters are linked relative to the report, so the folder can
    move or be served from a bucket."""
    m, _ = bad_manifest
    out = m.parent / "out"
    folder = json.loads((out / "report.json").read_text())
    assert set(folder["jobs"]) == {"ok-1", "ok-2"} and folder["problems"] == []
    assert folder["totals"]["published"] == 2 and folder["totals"]["invalid"] == 0
    assert "../escape" not in (out / "report.html").read_text()
    assert len(rendered.report["jobs"]) == 2 + len(BAD) + len(BAD_IDS)  # the work area's copy has them all
    page = (out / "report.html").read_text()
    assert 'src="ok-1.jpg"' in page and 'href="ok-1.mp4"' in page and str(out) not in page
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("report.html", "ok-1.jpg", "ok-2.jpg"):
        (moved / name).write_bytes((out / name).read_bytes())
    for src in re.findall(r'<img src="([^"]+)"', (moved / "report.html").read_text()):
        assert (moved / src).is_file()  # still shows after the folder moved
    # the work area's page links to the same posters, relatively too
    run_dir = next(Path(p.split("report: ", 1)[1].strip()) for p in rendered.output.splitlines()
                   if "report: " in p and "runs" in p).parent
    for src in re.findall(r'<img src="([^"]+)"', (run_dir / "report.html").read_text()):
        assert not src.startswith("/") and (run_dir / src).resolve().parent == out


def test_report_links_are_relative_within_one_storage():
    from infra.storage import parse
    from orchestrator.run.report import relative_href

    assert relative_href("s3://b/out/a.jpg", parse("s3://b/out")) == "a.jpg"
    assert relative_href("gs://b/out/a.jpg", parse("gs://b/work/runs/r1")) == "../../../out/a.jpg"
    assert relative_href("/srv/out/a b.jpg", parse("/srv/work/runs/r1")) == "../../../out/a%20b.jpg"
    assert relative_href("s3://b/out/a.jpg", parse("/srv/work")) == "s3://b/out/a.jpg"  # no path across storages
    assert relative_href("s3://other/out/a.jpg", parse("s3://b/work")) == "s3://other/out/a.jpg"


CSV_BAD = {  # label → (field, words) for rows a CSV header problem (or a cell) makes invalid
    "short-row": (None, "has 2 cells but the header has 11"),
    "badseed": ("seed", "valid integer"),
    "typo-prompt": ("promt", "did you mean 'prompt'"),
    "two-audios": ("audio", "values in more than one 'audio' column (2 and 8)"),
    "markup-column": ("[/x]", "unknown field"),
    "nameless-column": ("column 11", "no name in the header"),
}


def test_bad_csv_header_and_rows_are_named_and_the_valid_row_publishes(ray_local, assets, tmp_path):
    """Item 6: a misspelt column, a repeated column, a column without a name — each a problem (exit 2) that names
    the column; rows with a value under it are not rendered (named by row), rows without one are unaffected."""
    out, a, img = tmp_path / "out", assets["speech4"], assets["image"]
    text = (f"id,audio,image,seed,size,output,promt,audio,[/x],{LINK},\n"
            f"good,{a},{img},1,96*96,{out},,,,,\n"
            f"short-row,{a}\n"
            f"badseed,{a},{img},x,96*96,{out},,,,,\n"
            f"typo-prompt,{a},{img},1,96*96,{out},hello,,,,\n"
            f"two-audios,{a},{img},1,96*96,{out},,{a},,,\n"
            f"markup-column,{a},{img},1,96*96,{out},,,1,,\n"
            f"nameless-column,{a},{img},1,96*96,{out},,,,,zz\n")
    m = tmp_path / "c.csv"
    m.write_text(text)
    res = cli_render(m, tmp_path / "work", "csv", S2V_GPUS=2, S2V_CACHE_DIR=tmp_path / "cache")
    assert res.exit_code == 2, res.output
    assert res.jobs["good"].status == "published" and (out / "good.mp4").exists()
    assert sorted(p.name for p in out.glob("*.mp4")) == ["good.mp4"]
    header = [p for p in res.problems if p.where == f"{m}:1"]
    assert any(p.field == "promt" and "did you mean 'prompt'" in str(p) for p in header)
    assert any(p.field == "audio" and "more than once" in p.reason and "2 and 8" in p.reason for p in header)
    assert any(p.field == LINK and "unknown column" in p.reason for p in header)  # no row uses it: still exit 2
    for row, (label, (field, words)) in enumerate(CSV_BAD.items(), 2):
        where = f"{m}:{row + 1} (row {row})"
        assert any(p.where == where and p.field == field and words in str(p) for p in res.problems), \
            (label, [str(p) for p in res.problems if p.where == where])
        if label != "short-row":
            assert res.jobs[label].status == "invalid" and words in res.jobs[label].reason
    assert "MarkupError" not in res.output and LINK in res.output


def _alias_bomb(levels: int = 9, width: int = 9) -> str:
    lines = [f"a0: &a0 [{', '.join(['x'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + f"\njobs:\n  - {{id: *a{levels}, audio: a.wav, image: p.png}}\n"


MALFORMED = [
    ("indent.yaml", "jobs:\n  - id: a\n   audio: x.wav\n", ":3", "not valid YAML"),
    ("tab.yaml", "jobs:\n\t- id: a\n", ":2", "not valid YAML"),
    ("list.yaml", "- {id: a, audio: a.wav, image: p.png}\n", "", "a mapping with a 'jobs:' list"),
    ("nojobs.yaml", "jobs: []\n", "", "non-empty list"),
    ("scalar-row.yaml", "jobs:\n  - just a string\n", ":2 (job #1)", "a job must be a mapping"),
    ("empty.yaml", "", "", "empty"),
    ("alias-bomb.yaml", _alias_bomb(), ":5", "aliases (*name) expand this document"),
    ("deep.yaml", "jobs:\n  - " + "[" * 100 + "]" * 100 + "\n", ":2", "nested more than 64 levels"),
    ("defaults-typo.yaml", "defaults: {promt: hi}\njobs: [{id: a, audio: a.wav, image: p.png}]\n",
     ":1 (defaults)", "did you mean 'prompt'"),
    ("defaults-id.yaml", "defaults: {id: x}\njobs: [{id: a, audio: a.wav, image: p.png}]\n", ":1 (defaults)",
     "an id cannot have a default"),
    ("two-jobs-keys.yaml", "jobs: [{id: a}]\njobs: [{id: b}]\n", "", "top-level key given twice"),
    ("quote.csv", 'id,audio,image\n"a,x.wav,p.png\n', ":2", "cells"),
    ("header.csv", "id,audoi,image\na,x.wav,p.png\n", ":1", "did you mean 'audio'"),
    ("capitalised.csv", "ID,Audio,Image\na,x.wav,p.png\n", ":1", "did you mean 'id'"),
    ("markup-header.csv", "id,audio,image,[/x]\na,x.wav,p.png,\n", ":1", "unknown column"),
    ("empty.csv", "\n", "", "empty"),
]


@pytest.mark.parametrize("name,text,where,words", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_files_exit_2_naming_the_line(run_cli, tmp_path, monkeypatch, name, text, where, words):
    """File-level malformations: `s2v render` reports them with the line and exits 2 without starting Ray."""
    monkeypatch.setenv("S2V_WORK", str(tmp_path / "work"))
    m = tmp_path / name
    m.write_text(text)
    from orchestrator.intake.manifest import load_manifest

    probs = load_manifest(str(m), None, Settings()).problems
    assert any(p.where.startswith(f"{m}{where}") and words in str(p) for p in probs), [str(p) for p in probs]
    assert run_cli("render", m, "--no-progress") == 2


UNREADABLE = [
    ("missing.yaml", None, "not found"),
    ("m.json", b"{}", "cannot tell the format"),
    ("latin1.yaml", "jobs:\n  - id: caf\xe9\n".encode("latin-1"), "not UTF-8"),
    ("[/x].csv", None, "not found"),  # its name once crashed the error handler (markup), exit 1
    ("huge.yaml", b"jobs:\n" + b"  - {id: a, audio: a.wav, image: p.png}\n" * 400, "too big"),
]


@pytest.mark.parametrize("name,data,words", UNREADABLE, ids=[c[0] for c in UNREADABLE])
def test_unreadable_manifest_files(run_cli, tmp_path, monkeypatch, capsys, name, data, words):
    from core.settings import Settings
    from orchestrator.intake.manifest import load_manifest

    monkeypatch.setenv("S2V_MANIFEST_MAX_MB", "0.01")  # 10 kB: only huge.yaml passes it
    m = tmp_path / name
    if data is not None:
        m.write_bytes(data)
    with pytest.raises(ManifestError, match=re.escape(words)):
        load_manifest(str(m), None, settings=Settings())
    assert run_cli("validate", m) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and str(m) in err


def test_operator_paths_are_refused_and_checks_create_nothing(run_cli, assets, tmp_path, monkeypatch, capsys):
    """Item 11: a run id that climbs out of the work area is refused (render and status); validate and plan check
    the output folder without creating it."""
    monkeypatch.setenv("S2V_WORK", str(tmp_path / "a" / "work"))
    out = tmp_path / "a" / "new" / "out"
    m = media.write_manifest(tmp_path / "m.yaml", [{"id": "one", "audio": str(assets["speech4"])}],
                             {"image": str(assets["image"]), "size": "96*96", "output": str(out)})
    for rid in ("../../esc", "../esc", "a/b", ".hidden", "x\n"):
        assert run_cli("render", m, "--no-progress", "--run-id", rid) == 2
        assert "is not allowed" in capsys.readouterr().err
    assert run_cli("status", "../../esc") == 2
    assert not (tmp_path / "esc").exists() and not (tmp_path / "a" / "esc").exists()
    assert not (tmp_path / "a" / "work").exists()
    assert run_cli("validate", m) == 0
    assert run_cli("plan", m) == 0
    assert not (tmp_path / "a" / "new").exists()  # validate and plan leave no folder behind
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    m2 = media.write_manifest(tmp_path / "m2.yaml", [{"id": "one", "audio": str(assets["speech4"])}],
                              {"image": str(assets["image"]), "size": "96*96", "output": str(blocker / "out")})
    assert run_cli("validate", m2, "--no-deep") == 2
    assert "is a file, not a folder" in capsys.readouterr().out


def test_relative_path_above_the_bucket_root_is_refused(gcs_env, tmp_path):
    """Item 11: in a manifest stored in a bucket (fake-gcs-server on 127.0.0.1), '../../x' once became the key
    '../../x'; it is refused naming row and field, while '../' inside the bucket still resolves."""
    from infra.storage import parse, storage_for
    from orchestrator.intake.manifest import load_manifest

    bucket = gcs_env.make_bucket(unique("bad"))
    s = gcs_settings(tmp_path)
    text = ("jobs:\n  - {id: climbs, audio: ../../x.wav, image: p.png}\n"
            "  - {id: inside, audio: ../media/a.wav, image: p.png}\n")
    loc = f"gs://{bucket}/cat/m.yaml"
    storage_for(parse(loc), s).write_bytes(parse(loc), text.encode())
    m = load_manifest(loc, None, settings=s)
    assert [j.id for j in m.jobs] == ["inside"] and m.jobs[0].audio == f"gs://{bucket}/media/a.wav"
    p = next(p for p in m.problems if p.where == f"{loc}:2 (job #1)")
    assert p.field == "audio" and "climbs above the root of bucket" in p.reason and "../../x.wav" in p.reason


def test_terminal_output_draws_no_links_and_fits_80_columns(assets, tmp_path):
    """Items 2 and 14 on a real terminal (FORCE_COLOR, 80 columns): a header `[link=…]` prints as text, not as a
    clickable link; `validate` groups problems under each row's place and id and keeps within 80 columns."""
    m = tmp_path / "h.csv"
    a, img = assets["speech4"], assets["image"]
    m.write_text(f"id,audio,image,{LINK},promt\nlesson-01,{a},{img},1,hi\nlesson-02,{a},{img},,\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FORCE_COLOR": "1", "COLUMNS": "80", "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    p = subprocess.run([sys.executable, "-m", "orchestrator.cli", "validate", str(m), "--no-deep"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert "\x1b]8;" not in p.stdout  # OSC 8: a hyperlink
    plain = re.sub(r"\x1b\[[0-9;]*m", "", p.stdout)
    assert LINK in plain.replace("\n", "").replace(" ", "") or "[link=https://evil" in plain
    assert all(len(line) <= 80 for line in plain.splitlines()), max(plain.splitlines(), key=len)
    assert re.search(r"line 2 \(row 1\)\s+id lesson-01", plain) and "did you mean 'prompt'" in plain
    assert "lesson-02" not in plain  # no value under the bad columns: not a problem row


def test_validate_json_for_ci(run_cli, tmp_path, capsys):
    """Item 14: `validate --json` gives every problem with its place, the row's id, field, reason and hint."""
    m = tmp_path / "m.yaml"
    m.write_text("jobs:\n  - {id: a, audio: a.wav, image: p.png, promt: x}\n  - {id: b, audio: b.wav}\n")
    assert run_cli("validate", m, "--json", "--no-deep") == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["rows"] == 2 and doc["valid"] == 0
    by = {(p["id"], p["field"]): p for p in doc["problems"]}
    assert by[("a", "promt")]["hint"] == "did you mean 'prompt'?" and by[("a", "promt")]["where"] == f"{m}:2 (job #1)"
    assert by[("b", "image")]["reason"] == "is required"


def test_at_least_50_kinds():
    kinds = len(BAD) + len(BAD_IDS) + len(CSV_BAD) + len(MALFORMED) + len(UNREADABLE)
    assert kinds >= 50, kinds


@pytest.mark.parametrize("args, says", [
    (["nonsense"], "No such command 'nonsense'"),
    (["render"], "Missing argument 'manifest'"),
    (["render", "--gpus", "x", "m.yaml"], "Invalid value for '--gpus'"),
])
def test_usage_errors_print_the_usage_and_exit_2_without_a_traceback(args, says, run_cli, capsys):
    """typer carries its own copy of click, whose exceptions the entry point did not catch: every usage error printed
    a page-long traceback and exited 1."""
    assert run_cli(*args) == 2
    err = capsys.readouterr().err
    assert says in err and "Usage: s2v" in err and "Traceback" not in err and "UsageError" not in err
