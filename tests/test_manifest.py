"""Manifests: YAML and CSV load into JobSpecs; every malformed case is named with its row and field, all at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ManifestError
from orchestrator.manifest import load_manifest, parse_defaults


def _write(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_yaml_defaults_and_relative_paths(tmp_path):
    loc = _write(tmp_path, "m.yaml", """
defaults: {image: img/p.png, size: "640*360", seed: 5, tags: [a, b]}
jobs:
  - {id: one, audio: a/one.wav}
  - {id: two, audio: /abs/two.wav, seed: 9, tags: "x;y"}
""")
    m = load_manifest(loc)
    assert not m.problems
    one, two = m.jobs
    assert one.image == str(tmp_path / "img" / "p.png")  # relative to the manifest's folder
    assert one.audio == str(tmp_path / "a" / "one.wav")
    assert two.audio == "/abs/two.wav"
    assert (one.seed, two.seed) == (5, 9)
    assert one.size == "640*360" and one.area == (640, 360)
    assert two.tags == ("x", "y") and one.tags == ("a", "b")
    assert one.source.endswith(":4 (job #1)")


def test_csv_with_cli_and_file_defaults(tmp_path):
    loc = _write(tmp_path, "m.csv", "id,audio,prompt,seed\nj1,a.wav,\"Hello, world\",3\nj2,b.wav,,\n")
    dfile = _write(tmp_path, "d.yaml", "defaults:\n  image: face.png\n  seed: 7\n  backend: draft\n")
    m = load_manifest(loc, parse_defaults(["size=512*512"], dfile))
    assert not m.problems, m.problems
    j1, j2 = m.jobs
    assert j1.prompt == "Hello, world" and j1.seed == 3
    assert j2.seed == 7 and j2.prompt == ""  # an empty cell takes the default
    assert j1.image == str(tmp_path / "face.png") and j1.size == "512*512"
    assert j2.source.endswith(":3 (row 2)")


BAD_YAML = """
defaults: {image: p.png, colour: red}
jobs:
  - {id: ok-1, audio: a.wav}
  - {id: ../escape, audio: a.wav}
  - {id: has/slash, audio: a.wav}
  - {id: ok-1, audio: b.wav}
  - {id: no-audio}
  - {id: bad-size, audio: a.wav, size: big}
  - {id: neg-seed, audio: a.wav, seed: -1}
  - {id: typo, audio: a.wav, promt: hi}
  - {id: policy, audio: a.wav, min_scene_s: 30, max_scene_s: 10}
  - {id: word-num, audio: a.wav, max_scene_s: long}
  - {id: bad-uri, audio: "ftp://host/a.wav"}
  - {id: no-bucket, audio: "s3:///key.wav"}
  - just a string
"""


def test_every_yaml_problem_is_named_at_once(tmp_path):
    m = load_manifest(_write(tmp_path, "bad.yaml", BAD_YAML))
    got = {(p.where.split(":")[-1].split(" ")[0] if ":" in p.where else "defaults", p.field) for p in m.problems}
    text = "\n".join(map(str, m.problems))
    expected = [
        ("colour", "unknown field"),                      # in defaults
        ("id", "no '..'"),                                # ../escape
        ("id", "duplicate id 'ok-1'"),                    # first at line 4
        ("audio", "is required"),
        ("size", "WIDTH*HEIGHT"),
        ("seed", "greater than or equal to 0"),
        ("promt", "did you mean 'prompt'"),
        ("min_scene_s", "must be below max_scene_s"),
        ("max_scene_s", "valid number"),
        ("audio", "unsupported URI scheme 'ftp'"),
        ("audio", "has no bucket"),
        ("a job must be a mapping", ""),
    ]
    for field, needle in expected:
        if field.startswith("a job"):
            assert any(field in p.reason and p.field is None for p in m.problems)
        else:
            assert any(p.field == field and needle in str(p) for p in m.problems), (field, needle, text)
    assert sum(1 for p in m.problems if p.field == "id") >= 3  # ../escape, has/slash, duplicate
    assert [j.id for j in m.jobs] == ["ok-1"]  # the one valid row survives
    assert len(m.bad_rows) == 11
    assert all(p.where.startswith(str(tmp_path)) for p in m.problems)
    dup = next(p for p in m.problems if "duplicate" in p.reason)
    assert ":7 (job #4)" in dup.where and ":4" in dup.reason  # names both rows
    assert any(":10 (job #7)" in p.where and p.field == "seed" for p in m.problems)
    assert got  # every problem has a location


@pytest.mark.parametrize("text,needle", [
    ("jobs: [\n  {id: a", "not valid YAML"),
    ("", "empty"),
    ("- {id: a}\n", "mapping with a 'jobs:' list"),
    ("jobs: []\n", "non-empty list"),
    ("jobs: {id: a}\n", "non-empty list"),
    ("defaults: [1]\njobs: [{id: a, audio: a, image: b}]\nextra: 1\n", "unknown top-level key"),
])
def test_malformed_yaml_files(tmp_path, text, needle):
    m = load_manifest(_write(tmp_path, "m.yaml", text))
    assert any(needle in str(p) for p in m.problems), m.problems


@pytest.mark.parametrize("text,needle,where", [
    ("id,audio,image\na,x.wav\n", "has 2 cells but the header has 3", ":2 (row 1)"),
    ("id,audio,image,colour\na,x.wav,p.png,red\n", "unknown column", ":1"),
    ("id,audio,image,audoi\n", "did you mean 'audio'", ":1"),
    ("id,audio,id\n", "more than once", ":1"),
    ("", "empty", ""),
    ("id,audio,image,seed\na,x.wav,p.png,ten\n", "valid integer", ":2 (row 1)"),
    ("id,audio,image\n\"a,x.wav,p.png\n", "cells", ""),
])
def test_malformed_csv_files(tmp_path, text, needle, where):
    m = load_manifest(_write(tmp_path, "m.csv", text))
    hit = [p for p in m.problems if needle in str(p)]
    assert hit, m.problems
    assert where in hit[0].where


def test_unreadable_manifests_raise_input_errors(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        load_manifest(str(tmp_path / "missing.yaml"))
    with pytest.raises(ManifestError, match="cannot tell the format"):
        load_manifest(_write(tmp_path, "m.json", "{}"))
    p = tmp_path / "latin1.csv"
    p.write_bytes("id,audio,image,prompt\na,x.wav,p.png,caf\xe9\n".encode("latin-1"))
    with pytest.raises(ManifestError, match="not UTF-8"):
        load_manifest(str(p))
    with pytest.raises(ManifestError, match="unknown default"):
        parse_defaults(["colour=red"], None)
