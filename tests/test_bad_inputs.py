"""Issue 4: 30+ kinds of bad input in one manifest, each named by row (file:line) and field, while the valid rows
still publish (real Ray, ffmpeg, local storage); plus file-level malformations that cannot share a manifest."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

import media
from core.errors import ManifestError
from orchestrator.runner import render
from pipeline.media import ffmpeg_bin

# id → (field, words the reason must contain). The id is also the row's label unless the id itself is the problem.
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
    "size-word": ("size", "WIDTH*HEIGHT"),
    "size-too-small": ("size", "≥ 64"),
    "negative-seed": ("seed", "greater than or equal to 0"),
    "seed-word": ("seed", "valid integer"),
    "scene-min-above-max": ("min_scene_s", "must be below max_scene_s"),
    "negative-pause": ("min_pause_s", "greater than 0"),
    "zero-steps": ("steps", "greater than or equal to 1"),
    "prompt-is-list": ("prompt", "valid string"),
    "output-under-a-file": ("output", "not writable"),
}
# rows whose id is the problem: (id as written, words in the reason)
BAD_IDS = [("../escape", "no '..'"), ("nested/id", "'/'"), ("", "1-128 characters"), ("ok-1", "duplicate id 'ok-1'")]


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
        "size-word": {**good, "size": "big"},
        "size-too-small": {**good, "size": "16*16"},
        "negative-seed": {**good, "seed": -1},
        "seed-word": {**good, "seed": "ten"},
        "scene-min-above-max": {**good, "min_scene_s": 10, "max_scene_s": 5},
        "negative-pause": {**good, "min_pause_s": -1},
        "zero-steps": {**good, "steps": 0},
        "prompt-is-list": {**good, "prompt": ["a", "b"]},
        "output-under-a-file": {**good, "output": str(f["file"] / "out")},
    }
    assert set(rows) == set(BAD)
    jobs = [{"id": "ok-1", **good, "seed": 1}]
    jobs += [{"id": k, **v} for k, v in rows.items()]
    jobs += [{"id": i, **good} for i, _ in BAD_IDS]
    jobs.append({"id": "ok-2", **good, "seed": 2, "prompt": "the second valid row"})
    m = media.write_manifest(d / "catalog.yaml", jobs,
                             {"image": str(assets["image"]), "size": "96*96", "output": str(d / "out")})
    # the line of each row in the file, as a reader would find it
    lines = {}
    for n, text in enumerate(m.read_text().splitlines(), 1):
        hit = re.match(r"^- id: (.*)$", text)
        if hit:
            lines.setdefault(yaml.safe_load(hit.group(1)) or "", []).append(n)
    return m, lines


@pytest.fixture(scope="module")
def rendered(bad_manifest, tmp_path_factory):
    """One render of the whole catalog (valid rows render on real Ray; bad ones never reach a GPU)."""
    from conftest import start_local_ray
    from core.settings import Settings

    start_local_ray()
    tmp = tmp_path_factory.mktemp("badrun")
    s = Settings(gpus=2, work=str(tmp / "work"), cache_dir=tmp / "cache", max_duration_s=5.0)
    return render(str(bad_manifest[0]), s)


def test_at_least_25_kinds(bad_manifest):
    assert len(BAD) + len(BAD_IDS) >= 25


@pytest.mark.parametrize("jid", sorted(BAD))
def test_each_bad_row_is_named_by_line_and_field(rendered, bad_manifest, jid):
    m, lines = bad_manifest
    field, words = BAD[jid]
    where = f"{m}:{lines[jid][0]} "
    mine = [p for p in rendered.problems if p.where.startswith(where)]
    assert mine, f"no problem reported at {where}"
    assert any(p.field == field and words in str(p) for p in mine), [str(p) for p in mine]
    r = rendered.jobs[jid]
    assert r.status == "invalid" and words in r.reason and where in r.reason
    assert not (m.parent / "out" / f"{jid}.mp4").exists()


@pytest.mark.parametrize("jid,words", BAD_IDS)
def test_bad_ids_are_named_by_their_row(rendered, bad_manifest, jid, words):
    m, lines = bad_manifest
    where = f"{m}:{lines[jid][-1]} "  # the duplicate is the later row
    assert any(p.where.startswith(where) and p.field == "id" and words in p.reason for p in rendered.problems)
    r = next(r for r in rendered.jobs.values() if r.status == "invalid" and where in (r.reason or ""))
    assert words in r.reason
    if jid in ("", "ok-1"):  # no id, or one that a valid job owns: keyed by the row, never overwriting it
        assert where in r.id and r.id != jid and rendered.jobs["ok-1"].status == "published"


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


def test_bad_csv_rows_are_named_and_the_valid_row_publishes(ray_local, assets, settings, tmp_path):
    """The same holds for CSV: row problems carry the CSV line, the good row still publishes."""
    text = ("id,audio,image,seed,size,output\n"
            f"good,{assets['speech4']},{assets['image']},1,96*96,{tmp_path / 'out'}\n"
            f"short-row,{assets['speech4']}\n"
            f"badseed,{assets['speech4']},{assets['image']},x,96*96,{tmp_path / 'out'}\n")
    m = tmp_path / "c.csv"
    m.write_text(text)
    res = render(str(m), settings)
    assert res.exit_code == 2
    assert res.jobs["good"].status == "published" and (tmp_path / "out" / "good.mp4").exists()
    assert any(p.where == f"{m}:3 (row 2)" and "has 2 cells but the header has 6" in p.reason for p in res.problems)
    assert any(p.where == f"{m}:4 (row 3)" and p.field == "seed" for p in res.problems)
    assert res.jobs["badseed"].status == "invalid"


@pytest.mark.parametrize("name,text,where,words", [
    ("indent.yaml", "jobs:\n  - id: a\n   audio: x.wav\n", ":3", "not valid YAML"),
    ("tab.yaml", "jobs:\n\t- id: a\n", ":2", "not valid YAML"),
    ("list.yaml", "- {id: a, audio: a.wav, image: p.png}\n", "", "a mapping with a 'jobs:' list"),
    ("nojobs.yaml", "jobs: []\n", "", "non-empty list"),
    ("scalar-row.yaml", "jobs:\n  - just a string\n", ":2 (job #1)", "a job must be a mapping"),
    ("empty.yaml", "", "", "empty"),
    ("quote.csv", 'id,audio,image\n"a,x.wav,p.png\n', ":2", "cells"),
    ("header.csv", "id,audoi,image\na,x.wav,p.png\n", ":1", "did you mean 'audio'"),
    ("empty.csv", "\n", "", "empty"),
])
def test_malformed_files_exit_2_naming_the_line(run_cli, tmp_path, monkeypatch, name, text, where, words):
    """File-level malformations: `s2v render` reports them with the line and exits 2 without starting Ray."""
    monkeypatch.setenv("S2V_WORK", str(tmp_path / "work"))
    m = tmp_path / name
    m.write_text(text)
    from orchestrator.manifest import load_manifest

    probs = load_manifest(str(m)).problems
    assert any(p.where.startswith(f"{m}{where}") and words in str(p) for p in probs), [str(p) for p in probs]
    assert run_cli("render", m, "--no-progress") == 2


@pytest.mark.parametrize("name,data,words", [
    ("missing.yaml", None, "not found"),
    ("m.json", b"{}", "cannot tell the format"),
    ("latin1.yaml", "jobs:\n  - id: caf\xe9\n".encode("latin-1"), "not UTF-8"),
])
def test_unreadable_manifest_files(run_cli, tmp_path, name, data, words):
    from orchestrator.manifest import load_manifest

    m = tmp_path / name
    if data is not None:
        m.write_bytes(data)
    with pytest.raises(ManifestError, match=words):
        load_manifest(str(m))
    assert run_cli("validate", m) == 2
