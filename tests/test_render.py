"""End to end on the embedded default: real local Ray (2 logical GPUs), real ffmpeg, local storage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import media
from orchestrator.run.runner import render
from pipeline.media import count_video_frames, probe

FPS = 16


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, assets):
    d = tmp_path_factory.mktemp("catalog")
    jobs = [
        {"id": "long", "audio": str(assets["speech13"]), "max_scene_s": 6, "seed": 1},
        {"id": "short", "audio": str(assets["speech4"]), "seed": 2},
        {"id": "mid", "audio": str(assets["speech13"]), "max_scene_s": 9, "seed": 3, "prompt": "other"},
    ]
    return media.write_manifest(d / "catalog.yaml", jobs,
                                {"image": str(assets["image"]), "size": "128*128", "output": str(d / "out")})


def _outputs(out: Path, job: str):
    return out / f"{job}.mp4", out / f"{job}.jpg", out / f"{job}.json"


def test_render_publishes_frame_exact_outputs_on_both_gpus(ray_local, catalog, settings):
    res = render(str(catalog), settings)
    assert res.exit_code == 0, {k: v.reason for k, v in res.jobs.items()}
    out = catalog.parent / "out"
    for jid, jr in res.jobs.items():
        assert jr.status == "published"
        mp4, jpg, side = _outputs(out, jid)
        assert mp4.stat().st_size > 0 and jpg.stat().st_size > 0
        meta = json.loads(side.read_text())
        streams = {s.kind: s for s in probe(mp4)}
        assert set(streams) == {"video", "audio"}
        frames = count_video_frames(mp4)
        assert frames == meta["frames"] == sum(s["frames"] for s in meta["plan"]["scenes"])
        assert abs(frames / FPS - meta["duration_s"]) <= 1 / FPS  # within one frame of the audio
        assert abs(streams["audio"].duration_s - meta["duration_s"]) <= 1 / FPS + 0.05
        assert meta["job_key"] == jr.key and meta["inputs"]["audio"]["sha256"]
        assert [c["seed"] for s in meta["plan"]["scenes"] for c in s["clips"]] == \
            list(range(meta["seed"], meta["seed"] + jr.clips))
    # one backend load per actor, and both logical GPUs did work
    assert len(res.actors) == 2
    assert all(a["loads"] == {"draft": 1} for a in res.actors)
    assert sorted(a["gpus"][0] for a in res.actors) == ["0", "1"]
    assert all(a["clips"] > 0 for a in res.actors)
    assert sum(a["clips"] for a in res.actors) == sum(j.clips for j in res.jobs.values())
    # clips of each chain were rendered in order, each exactly once
    done: dict = {}
    for e in res.events:
        if e.kind == "done":
            done.setdefault((e.job, e.scene), []).append(e.clip)
    assert done and all(v == list(range(len(v))) for v in done.values())
    # longest chain first: the first submitted chain has the most clips
    first = next(e for e in res.events if e.kind == "submit")
    assert len(done[(first.job, first.scene)]) == max(len(v) for v in done.values())


def test_same_manifest_renders_byte_identical_outputs(ray_local, catalog, settings, tmp_path):
    a = render(str(catalog), settings.model_copy(update={"work": str(tmp_path / "w1")}), force=True)
    first = {j: _outputs(catalog.parent / "out", j)[0].read_bytes() for j in a.jobs}
    posters = {j: _outputs(catalog.parent / "out", j)[1].read_bytes() for j in a.jobs}
    b = render(str(catalog), settings.model_copy(update={"work": str(tmp_path / "w2")}), force=True)
    assert a.exit_code == b.exit_code == 0
    assert sum(j.clips_rendered for j in b.jobs.values()) == sum(j.clips for j in b.jobs.values())
    for j in b.jobs:
        mp4, jpg, _ = _outputs(catalog.parent / "out", j)
        assert mp4.read_bytes() == first[j]
        assert jpg.read_bytes() == posters[j]


def test_rerun_renders_nothing_and_a_changed_row_renders_alone(ray_local, catalog, settings, tmp_path):
    import yaml

    assert render(str(catalog), settings).exit_code == 0
    again = render(str(catalog), settings)
    assert {j.status for j in again.jobs.values()} == {"skipped"}
    assert sum(j.clips_rendered for j in again.jobs.values()) == 0
    doc = yaml.safe_load(catalog.read_text())
    doc["jobs"][1]["prompt"] = "a new prompt"
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(doc))
    (tmp_path / "changed.yaml")  # same folder semantics: outputs are absolute paths in defaults
    res = render(str(changed), settings)
    assert {j: r.status for j, r in res.jobs.items()} == {"long": "skipped", "short": "published", "mid": "skipped"}
    assert res.jobs["short"].clips_rendered == res.jobs["short"].clips


def test_cli_exit_codes(ray_local, assets, tmp_path, run_cli, monkeypatch):
    base = {"image": str(assets["image"]), "size": "96*96", "output": str(tmp_path / "out")}
    monkeypatch.setenv("S2V_WORK", str(tmp_path / "work"))
    monkeypatch.setenv("S2V_GPUS", "2")
    good = media.write_manifest(tmp_path / "good.yaml", [{"id": "g", "audio": str(assets["speech4"])}], base)
    assert run_cli("render", good, "--no-progress") == 0

    monkeypatch.setenv("S2V_FAULTS", json.dumps([{"action": "fail", "job": "bad", "times": 0}]))
    monkeypatch.setenv("S2V_FAULTS_DIR", str(tmp_path / "faults"))
    mixed = media.write_manifest(tmp_path / "mixed.yaml", [
        {"id": "bad", "audio": str(assets["speech4"]), "backend": "faults"},
        {"id": "fine", "audio": str(assets["speech4"]), "backend": "faults", "seed": 4}], base)
    assert run_cli("render", mixed, "--no-progress") == 1
    side = json.loads((tmp_path / "out" / "fine.json").read_text())
    assert side["id"] == "fine"
    assert not (tmp_path / "out" / "bad.mp4").exists()
    latest = (tmp_path / "work" / "runs" / "LATEST").read_text()
    state = json.loads((tmp_path / "work" / "runs" / latest / "state.json").read_text())
    assert state["status"] == "finished" and state["jobs"]["bad"]["status"] == "failed"

    invalid = media.write_manifest(tmp_path / "invalid.yaml", [
        {"id": "ok2", "audio": str(assets["speech4"]), "seed": 9},
        {"id": "nofile", "audio": str(tmp_path / "missing.wav")},
        {"id": "bad id/x", "audio": str(assets["speech4"])}], base)
    assert run_cli("validate", invalid) == 2
    assert run_cli("render", invalid, "--no-progress") == 2
    assert (tmp_path / "out" / "ok2.mp4").exists()  # the valid row still published
    latest = (tmp_path / "work" / "runs" / "LATEST").read_text()
    report = json.loads((tmp_path / "work" / "runs" / latest / "report.json").read_text())  # the full report
    assert report["jobs"]["nofile"]["status"] == "invalid" and "missing.wav" in report["jobs"]["nofile"]["reason"]
    assert set(json.loads((tmp_path / "out" / "report.json").read_text())["jobs"]) == {"ok2"}  # only its jobs
