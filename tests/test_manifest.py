"""Manifests: YAML and CSV load into JobSpecs; every malformed case is named with its row and field, all at once."""

from __future__ import annotations

from core.settings import Settings
from pathlib import Path

import pytest

from core.errors import ManifestError
from orchestrator.intake.manifest import load_manifest, parse_defaults


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
    m = load_manifest(loc, None, Settings())
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
    m = load_manifest(loc, parse_defaults(["size=512*512"], dfile, Settings()), Settings())
    assert not m.problems, m.problems
    j1, j2 = m.jobs
    assert j1.prompt == "Hello, world" and j1.seed == 3
    assert j2.seed == 7 and j2.prompt == ""  # an empty cell takes the default
    assert j1.image == str(tmp_path / "face.png") and j1.size == "512*512"
    assert j2.source.endswith(":3 (row 2)")


BAD_YAML = """
defaults: {image: p.png}
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
    m = load_manifest(_write(tmp_path, "bad.yaml", BAD_YAML), None, Settings())
    got = {(p.where.split(":")[-1].split(" ")[0] if ":" in p.where else "defaults", p.field) for p in m.problems}
    text = "\n".join(map(str, m.problems))
    expected = [
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
    assert len(m.bad) == 11
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
    m = load_manifest(_write(tmp_path, "m.yaml", text), None, Settings())
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
    m = load_manifest(_write(tmp_path, "m.csv", text), None, Settings())
    hit = [p for p in m.problems if needle in str(p)]
    assert hit, m.problems
    assert where in hit[0].where


def test_unreadable_manifests_raise_input_errors(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        load_manifest(str(tmp_path / "missing.yaml"), None, Settings())
    with pytest.raises(ManifestError, match="cannot tell the format"):
        load_manifest(_write(tmp_path, "m.json", "{}"), None, Settings())
    p = tmp_path / "latin1.csv"
    p.write_bytes("id,audio,image,prompt\na,x.wav,p.png,caf\xe9\n".encode("latin-1"))
    with pytest.raises(ManifestError, match="not UTF-8"):
        load_manifest(str(p), None, Settings())
    with pytest.raises(ManifestError, match="unknown default"):
        parse_defaults(["colour=red"], None, Settings())


# --- issue 12: hostile and inconsistent input --------------------------------------------------------------------

def _bomb(levels: int = 9, width: int = 9, job: str = "{id: *top, audio: a.wav, image: p.png}") -> str:
    lines = [f"b0: &b0 [{', '.join(['lol'] * width)}]"]
    lines += [f"b{i}: &b{i} [{', '.join([f'*b{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return "\n".join(lines).replace(f"&b{levels} ", "&top ") + f"\njobs:\n  - {job}\n"


def test_yaml_alias_bomb_is_refused_before_it_expands(tmp_path):
    """Nine levels of nine aliases (3.9e8 strings once str()'d: 2.2 GB, MemoryError after 27 s) are refused while
    composing. The work is bounded by memory allocated, not by a timer: well under a few MB."""
    import tracemalloc

    loc = _write(tmp_path, "bomb.yaml", _bomb())
    tracemalloc.start()
    try:
        m = load_manifest(loc, None, Settings())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not m.jobs
    p = next(p for p in m.problems if "aliases" in p.reason)
    assert p.where == f"{loc}:5" and "expand this document past" in p.reason  # the alias that crossed the budget
    assert peak < 8 * 2**20, peak
    with pytest.raises(ManifestError, match="aliases"):  # a --defaults file goes through the same loader
        parse_defaults([], _write(tmp_path, "d.yaml", _bomb(job="{}")), Settings())


def test_shared_yaml_blocks_still_load(tmp_path):
    """Anchors and merge keys for shared settings (one alias per job) stay well inside the alias budget."""
    jobs = "".join(f"  - {{<<: *common, id: j{i}, audio: a{i}.wav}}\n" for i in range(1000))
    m = load_manifest(_write(tmp_path, "m.yaml", "x: &common {image: p.png, size: '96*96', seed: 3}\njobs:\n" + jobs), None, Settings())
    assert [p.reason for p in m.problems if p.field is None] == []
    assert len(m.jobs) == 1000 and m.jobs[-1].seed == 3


def test_non_text_ids_are_never_stringified(tmp_path):
    """An id that is a list or mapping is a problem at its row (labelled by the row, never by str() of it)."""
    m = load_manifest(_write(tmp_path, "m.yaml", _bomb(levels=3, width=4) +
                             "  - {id: {a: 1}, audio: a.wav, image: p.png}\n  - {id: fine, audio: a.wav, image: p.png}\n"), None, Settings())
    assert [j.id for j in m.jobs] == ["fine"]
    assert [p.reason for p in m.problems if p.field == "id"] == ["must be text, got a list", "must be text, got a dict"]
    assert all(b.id is None and b.label == b.where for b in m.bad)  # labelled by their place


def test_manifest_size_is_capped_by_a_setting(tmp_path):
    from core.settings import Settings

    loc = _write(tmp_path, "m.yaml", "jobs:\n" + "  - {id: a, audio: a.wav, image: p.png}\n" * 100)
    assert load_manifest(loc, None, settings=Settings()).jobs  # 4 kB under the default 64 MB
    with pytest.raises(ManifestError, match="too big") as e:
        load_manifest(loc, None, settings=Settings(manifest_max_mb=0.001))
    assert "above the limit of 0.001 MB" in str(e.value) and "S2V_MANIFEST_MAX_MB" in str(e.value)


def test_deep_nesting_is_a_problem_not_a_recursion_error(tmp_path):
    m = load_manifest(_write(tmp_path, "m.yaml", "jobs:\n  - {id: a, tags: " + "[" * 5000 + "]" * 5000 + "}\n"), None, Settings())
    assert any("nested more than 64 levels" in p.reason for p in m.problems)


@pytest.mark.parametrize("written,loaded", [('"evil\\n"', None), ("'evil\n\n'", None), ("ok\u202e", None),
                                            ("007", "007"), ("1.50", "1.50"), ("yes", "yes"),
                                            ("2024-01-05", "2024-01-05"), ("'lesson-01'", "lesson-01")])
def test_ids_fully_match_and_are_taken_as_written(tmp_path, written, loaded):
    """`match` with `$` let "evil\\n" through (it published `evil\\n.mp4`); YAML would turn 007 into 7 and yes
    into True: an id is the text the row shows."""
    m = load_manifest(_write(tmp_path, "m.yaml", f"jobs:\n  - id: {written}\n    audio: a.wav\n    image: p.png\n"), None, Settings())
    assert [j.id for j in m.jobs] == ([loaded] if loaded else [])
    if loaded is None:
        assert any(p.field == "id" and "1-128 characters" in p.reason for p in m.problems)


def test_run_ids_follow_the_id_rule():
    from core.errors import InputError
    from orchestrator.intake.manifest import check_run_id

    for ok in ("nightly-1", "20261125-073804-a08947", "a.b_c"):
        assert check_run_id(ok) == ok
    for bad in ("../../esc", "..", "a/b", "", ".x", "x\n", "a..b", "x" * 129):
        with pytest.raises(InputError, match="is not allowed"):
            check_run_id(bad)


def test_every_regex_validator_fully_matches():
    """The same `$` mistake elsewhere: RunPod ids, ports and env names (GraphQL values), and settings patterns."""
    from pydantic import ValidationError

    from core.errors import ConfigError
    from core.settings import Settings
    from infra.clusters.runpod.api import check_id, deploy_mutation

    assert check_id("abc-1") == "abc-1"
    with pytest.raises(ConfigError):
        check_id("abc\n")
    nc = {"image_name": "img", "ports": "22/tcp\n"}
    with pytest.raises(ConfigError, match="ports"):
        deploy_mutation("n", nc, {}, interruptible=False, global_network=False)
    with pytest.raises(ConfigError, match="environment variable"):
        deploy_mutation("n", {"image_name": "img"}, {"KEY\n": "v"}, interruptible=False, global_network=False)
    with pytest.raises(ValidationError):
        Settings(wan_offload="cpu\n")


def test_relative_paths_stay_inside_a_bucket():
    from core.errors import InputError
    from infra.storage.uri import parse

    assert str(parse("../media/a.wav", "s3://b/cat")) == "s3://b/media/a.wav"
    assert str(parse("a.wav", "gs://b")) == "gs://b/a.wav"
    assert str(parse("../a", "s3://b/cat")) == "s3://b/a" and str(parse("..", "s3://b/cat/x")) == "s3://b/cat"
    for v in ("../../x", "../..", "a/../../../b"):
        with pytest.raises(InputError, match="climbs above the root of bucket"):
            parse(v, "s3://b/cat")


def test_relative_local_paths_resolve_against_the_current_folder_each_time(tmp_path, monkeypatch):
    """Resolved paths are cached (a 10,000-row catalog names the same files 40,000 times): the cache must not
    answer a relative path from the folder, or a ~ path from the HOME, it was first resolved in."""
    from infra.storage.uri import parse

    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        monkeypatch.chdir(tmp_path / d)
        assert parse("lesson.wav").key == str((tmp_path / d / "lesson.wav").resolve())
        assert parse("lesson.wav", str(tmp_path / "a")).key == str((tmp_path / "a" / "lesson.wav").resolve())
    for d in ("a", "b"):  # nor a ~ path from another HOME
        monkeypatch.setenv("HOME", str(tmp_path / d))
        assert parse("~/lesson.wav").key == str((tmp_path / d / "lesson.wav").resolve())


def test_unknown_default_invalidates_every_row_like_an_unknown_row_key(tmp_path):
    """YAML rows with unknown keys were invalid while an unknown key in `defaults` was ignored (exit 0, prompt
    lost): now the defaults' problem is named at the defaults and at every row it would reach."""
    loc = _write(tmp_path, "m.yaml", "defaults:\n  image: p.png\n  promt: a teacher\njobs:\n"
                                     "  - {id: a, audio: a.wav}\n  - {id: b, audio: b.wav, prompt: own}\n")
    m = load_manifest(loc, None, Settings())
    assert not m.jobs and [b.label for b in m.bad] == ["a", "b"]
    d = next(p for p in m.problems if p.where == f"{loc}:1 (defaults)")
    assert d.field == "promt" and d.hint == "did you mean 'prompt'?" and "no job is rendered" in d.reason
    for line, n in ((5, 1), (6, 2)):
        assert any(p.where == f"{loc}:{line} (job #{n})" and p.field == "promt" and "defaults" in p.reason
                   for p in m.problems)


def test_a_key_given_twice_in_yaml_is_a_problem(tmp_path):
    loc = _write(tmp_path, "m.yaml", "jobs:\n  - id: a\n    image: p.png\n    audio: a.wav\n    audio: b.wav\n"
                                     "  - {id: b, image: p.png, audio: a.wav}\n")
    m = load_manifest(loc, None, Settings())
    assert [j.id for j in m.jobs] == ["b"]
    p = next(p for p in m.problems if p.field == "audio")
    assert p.where == f"{loc}:2 (job #1)" and "given twice in this job on lines 4 and 5" in p.reason


@pytest.mark.parametrize("header,row,field,words,renders", [
    ("id,audio,image,promt", "a,x.wav,p.png,hello", "promt", "did you mean 'prompt'", False),
    ("id,audio,image,promt", "a,x.wav,p.png,", "promt", "did you mean 'prompt'", True),
    ("id,audio,image,audio", "a,x.wav,p.png,y.wav", "audio", "more than one 'audio' column (2 and 4)", False),
    ("id,audio,image,audio", "a,x.wav,p.png,", "audio", "more than once in the header (columns 2 and 4)", True),
    ("id,audio,image,", "a,x.wav,p.png,zz", "column 4", "no name in the header", False),
    ("Audio,id,image", "x.wav,a,p.png", "Audio", "did you mean 'audio'", False),
])
def test_csv_header_problems_reach_the_rows_they_affect(tmp_path, header, row, field, words, renders):
    """A duplicate `audio` column once used the last one silently, and a misspelt `promt` dropped the prompt
    (exit 0). Each is a problem naming the column; a row with a value under it is not rendered, and says so."""
    loc = _write(tmp_path, "m.csv", f"{header}\n{row}\n")
    m = load_manifest(loc, None, Settings())
    assert any(p.field == field and words in str(p) for p in m.problems), [str(p) for p in m.problems]
    assert [j.id for j in m.jobs] == (["a"] if renders else [])
    if not renders:
        assert any(p.where == f"{loc}:2 (row 1)" for p in m.problems) and [b.label for b in m.bad] == ["a"]


def test_trailing_empty_csv_columns_are_harmless(tmp_path):
    """Spreadsheets export `a,b,c,,,`: columns without a name and without values are not a problem."""
    m = load_manifest(_write(tmp_path, "m.csv", "id,audio,image,,\na,x.wav,p.png,,\n"), None, Settings())
    assert not m.problems and [j.id for j in m.jobs] == ["a"]


def test_yaml_booleans_are_not_numbers(tmp_path):
    m = load_manifest(_write(tmp_path, "m.yaml", "jobs:\n  - {id: a, audio: a.wav, image: p.png, seed: yes}\n"), None, Settings())
    assert not m.jobs and any(p.field == "seed" and "YAML boolean" in p.reason for p in m.problems)
