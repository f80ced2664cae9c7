"""A manifest cannot replace files s2v did not publish, outputs can be fenced into allowed roots, and what s2v
publishes is readable by others (the umask's mode, not 0600)."""

from __future__ import annotations

import json
import os
import stat
from types import SimpleNamespace

import pytest
import yaml

import media
from infra.storage.checks import within_roots
from infra.storage.uri import parse
from orchestrator.intake.manifest import JobSpec
from orchestrator.deliver.outputs import SIDECAR_SCHEMA, claim_uri, output_uris, replace_problem
from orchestrator.workarea.layout import WorkArea
from orchestrator.run.runner import render
from storage_servers import s3_env, s3_server, s3_settings, unique  # noqa: F401

DOCKER_CONFIG = {"auths": {"registry.example": {"auth": "dXNlcjpwYXNz"}}, "credsStore": "desktop"}


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_a_manifest_cannot_replace_a_file_s2v_did_not_publish(ray_local, assets, settings, tmp_path, monkeypatch):
    """The review's reproduction: `output: ~/.docker` with `id: config` replaced ~/.docker/config.json with a
    sidecar. That job now fails before any GPU work with the reason; the other job publishes, readable by others."""
    old_umask = os.umask(0o022)
    try:
        home = tmp_path / "home"
        (home / ".docker").mkdir(parents=True)
        config = home / ".docker" / "config.json"
        config.write_text(json.dumps(DOCKER_CONFIG))
        monkeypatch.setenv("HOME", str(home))
        out = tmp_path / "out"
        m = media.write_manifest(tmp_path / "m.yaml", [
            {"id": "config", "audio": str(assets["speech4"]), "output": "~/.docker"},
            {"id": "lesson", "audio": str(assets["speech4"]), "output": str(out)}],
            {"image": str(assets["image"]), "size": "96*96", "backend": "draft"})
        from test_webhook import Receiver

        hooks = Receiver((200,))
        try:
            res = render(str(m), settings.model_copy(update={"webhook_url": hooks.url}))
        finally:
            hooks.stop()
        from orchestrator.run.report import write_reports

        reports = write_reports(res, settings)
    finally:
        os.umask(old_umask)
    events = {(d["event"], (d.get("job") or {}).get("id")) for d in (json.loads(b) for _, _, b in hooks.requests)}
    assert events == {("job.failed", "config"), ("job.published", "lesson"), ("run.finished", None)}
    assert json.loads(config.read_text()) == DOCKER_CONFIG  # untouched
    assert not any((home / ".docker" / f"config.{e}").exists() for e in ("mp4", "jpg"))
    bad = res.jobs["config"]
    assert bad.status == "failed" and str(config) in bad.reason and "not an s2v sidecar" in bad.reason
    assert bad.clips_rendered == 0 and bad.gpu_s == 0  # refused before rendering, not after
    assert res.jobs["lesson"].status == "published" and res.exit_code == 1
    side = json.loads((out / "lesson.json").read_text())
    assert side["schema"] == SIDECAR_SCHEMA and side["id"] == "lesson"
    # everything s2v wrote is 0644 under umask 022: outputs, poster, sidecar, report, checkpoints, run state
    work = tmp_path / "work"
    written = [out / f"lesson.{e}" for e in ("mp4", "jpg", "json")] + [p for p in reports.written if p.endswith(".html")]
    written += [p for p in work.rglob("*") if p.is_file()]
    assert len(written) > 6 and {str(p): oct(_mode(p)) for p in written} == {str(p): "0o644" for p in written}
    assert not list((work / "publishing").glob("*"))  # the publish claim is gone once the sidecar is there


def _plan(output: str, jid: str = "intro") -> SimpleNamespace:
    return SimpleNamespace(job=JobSpec(id=jid, audio="/a.wav", image="/i.png", output=output), key="k1")


def _put(st, uri, data: bytes) -> None:
    st.write_bytes(uri, data)


@pytest.fixture(params=["local", "s3"])
def where(request, tmp_path):
    """(storage, output prefix, settings) on a local folder and in a SeaweedFS bucket."""
    from core.settings import Settings
    from infra.storage.base import storage_for

    if request.param == "local":
        s = Settings(work=str(tmp_path / "work"), cache_dir=tmp_path / "c")
        return storage_for(parse(str(tmp_path / "out")), s), str(tmp_path / "out"), s
    srv = request.getfixturevalue("s3_env")
    bucket = srv.make_bucket(unique("safe"))
    s = s3_settings(srv.endpoint, tmp_path, work=str(tmp_path / "work"))
    return storage_for(parse(f"s3://{bucket}/x"), s), f"s3://{bucket}/out", s


def test_what_counts_as_ours(where):
    st, out, s = where
    plan = _plan(out)
    uris = output_uris(plan)
    assert replace_problem(plan, s, s.work) is None  # nothing there
    _put(st, uris["json"], json.dumps(DOCKER_CONFIG).encode())
    assert "not an s2v sidecar" in replace_problem(plan, s, s.work)
    _put(st, uris["json"], b"\x00\x01 not json")
    assert "not an s2v sidecar" in replace_problem(plan, s, s.work)
    _put(st, uris["json"], b"[1, 2]")
    assert "not an s2v sidecar" in replace_problem(plan, s, s.work)
    _put(st, uris["mp4"], b"old video")
    ours = {"schema": SIDECAR_SCHEMA, "id": "intro", "job_key": "older-key"}
    _put(st, uris["json"], json.dumps(ours).encode())
    assert replace_problem(plan, s, s.work) is None  # a re-render of the same job, new key: ours to replace
    legacy = {"id": "intro", "job_key": "k0", "backend": {"name": "draft"}, "inputs": {}, "plan": {}}
    _put(st, uris["json"], json.dumps(legacy).encode())
    assert replace_problem(plan, s, s.work) is None  # written before the schema marker existed
    _put(st, uris["json"], json.dumps({**ours, "id": "Intro"}).encode())  # e.g. a case-insensitive folder
    assert "sidecar of job 'Intro'" in replace_problem(plan, s, s.work)
    st.delete(uris["json"])
    problem = replace_problem(plan, s, s.work)  # an MP4 with no sidecar: somebody else's file
    assert str(uris["mp4"]) in problem and "s2v did not publish it" in problem


def test_an_mp4_left_by_our_own_cut_short_publish_is_ours(where):
    """A publish killed between the MP4 and the sidecar leaves a claim in the work area: the rerun may finish it."""
    st, out, s = where
    plan = _plan(out)
    uris = output_uris(plan)
    _put(st, uris["mp4"], b"our video, sidecar never written")
    wa = WorkArea.at(s.work, s)
    claim = {"id": "intro", "key": "k1", "outputs": {k: str(u) for k, u in uris.items()}}
    wa.storage.write_bytes(claim_uri(wa, uris), json.dumps({**claim, "id": "other"}).encode())
    assert replace_problem(plan, s, s.work) is not None  # a claim for another job proves nothing
    wa.storage.write_bytes(claim_uri(wa, uris), json.dumps(claim).encode())
    assert replace_problem(plan, s, s.work) is None


def test_a_published_name_is_ours_only_where_a_sidecar_or_claim_records_it(where):
    """The check at publish time, over the exact files about to be written (HLS segments included): a file our
    sidecar or our cut-short publish's claim records is ours; a sidecar from before that record owns its tree."""
    st, out, s = where
    plan = _plan(out)
    uris = output_uris(plan)
    seg = parse(out).join("intro.hls/h96-0a1b2c3d/seg_00000.m4s")
    _put(st, uris["mp4"], b"our video")
    _put(st, seg, b"hand-made segment")
    dests = [uris["mp4"], seg, uris["json"]]
    ours = {"schema": SIDECAR_SCHEMA, "id": "intro", "job_key": "k0", "files": [str(uris[k]) for k in ("mp4", "json")]}
    _put(st, uris["json"], json.dumps(ours).encode())
    assert str(seg) in replace_problem(plan, s, s.work, dests)
    assert replace_problem(plan, s, s.work, [uris["mp4"], uris["json"]]) is None
    _put(st, uris["json"], json.dumps({**ours, "files": [*ours["files"], str(seg)]}).encode())
    assert replace_problem(plan, s, s.work, dests) is None
    before_record = {k: v for k, v in ours.items() if k != "files"}
    _put(st, uris["json"], json.dumps(before_record).encode())
    assert str(seg) in replace_problem(plan, s, s.work, dests)
    _put(st, uris["json"], json.dumps({**before_record, "hls": {"master": "m"}}).encode())
    assert replace_problem(plan, s, s.work, dests) is None  # it published HLS: the tree was its own
    st.delete(uris["json"])
    wa = WorkArea.at(s.work, s)
    claim = {"id": "intro", "key": "k1", "outputs": {k: str(u) for k, u in uris.items()}, "files": [str(uris["mp4"])]}
    wa.storage.write_bytes(claim_uri(wa, uris), json.dumps(claim).encode())
    assert str(seg) in replace_problem(plan, s, s.work, dests)
    wa.storage.write_bytes(claim_uri(wa, uris), json.dumps({**claim, "files": [str(u) for u in dests]}).encode())
    assert replace_problem(plan, s, s.work, dests) is None


def test_foreign_deliverables_reports_and_hls_files_stop_their_job(ray_local, assets, tmp_path, run_cli, monkeypatch):
    """The review's reproduction: a hand-made report.html, report.json, <id>.vtt, <id>.<rendition>.mp4 and
    <id>.hls/* next to an output were all replaced by a render with captions and renditions. Each now stops its
    job before any GPU work with a reason naming the file, which stays byte-identical; the job in a clean folder
    publishes, and its repost stops the same way at a hand-made file it would replace."""
    monkeypatch.setenv("S2V_WORK", str(tmp_path / "work"))
    monkeypatch.setenv("S2V_GPUS", "2")
    (tmp_path / "talk.srt").write_text("1\n00:00:00,300 --> 00:00:01,800\nWelcome\n")
    out = tmp_path / "out"
    foreign = {"t1": "report.html", "t2": "report.json", "t3": "t3.vtt", "t4": "t4.r64.mp4", "t5": "t5.hls/master.m3u8"}
    for jid, name in foreign.items():
        (out / jid / name).parent.mkdir(parents=True)
        (out / jid / name).write_bytes(f"hand-made {name}".encode())
    renditions = [{"name": "r64", "height": 64, "fps": 24}, {"name": "h64", "height": 64, "fps": 24, "format": "hls"}]
    jobs = [{"id": jid, "audio": str(assets["speech4"]), "output": str(out / jid)} for jid in [*foreign, "clean"]]
    m = media.write_manifest(tmp_path / "m.yaml", jobs, {"image": str(assets["image"]), "size": "96*96",
                                                         "captions": "talk.srt", "renditions": renditions})
    assert run_cli("render", m, "--no-progress") == 1
    latest = (tmp_path / "work" / "runs" / "LATEST").read_text()
    report = json.loads((tmp_path / "work" / "runs" / latest / "report.json").read_text())["jobs"]
    for jid, name in foreign.items():
        assert report[jid]["status"] == "failed" and str(out / jid / name) in report[jid]["reason"], jid
        assert report[jid]["clips_rendered"] == 0
        assert (out / jid / name).read_bytes() == f"hand-made {name}".encode()
        assert not (out / jid / f"{jid}.mp4").exists()
    assert report["clean"]["status"] == "published"
    side = json.loads((out / "clean" / "clean.json").read_text())
    published = {str(p) for p in (out / "clean").rglob("*") if p.is_file() and not p.name.startswith("report.")}
    assert len(published) > 8 and set(side["files"]) == published  # every file it wrote, HLS segments too

    (out / "clean" / "clean.r80.mp4").write_bytes(b"hand-made rendition")
    master = (out / "clean" / "clean.mp4").read_bytes()
    doc = yaml.safe_load(m.read_text())
    doc["defaults"]["renditions"] = [*renditions, {"name": "r80", "height": 80, "fps": 24}]
    m.write_text(yaml.safe_dump(doc))
    assert run_cli("render", m, "--no-progress") == 1
    latest = (tmp_path / "work" / "runs" / "LATEST").read_text()
    again = json.loads((tmp_path / "work" / "runs" / latest / "report.json").read_text())["jobs"]["clean"]
    assert again["status"] == "failed" and str(out / "clean" / "clean.r80.mp4") in again["reason"]
    assert (out / "clean" / "clean.r80.mp4").read_bytes() == b"hand-made rendition"
    assert (out / "clean" / "clean.mp4").read_bytes() == master


def test_outputs_outside_the_allowed_roots_are_refused_at_validate(tmp_path, run_cli, monkeypatch, capsys, assets):
    inside, outside = tmp_path / "srv" / "videos", tmp_path / "srv" / "videos-other"
    m = media.write_manifest(tmp_path / "m.yaml", [
        {"id": "a", "audio": str(assets["speech4"]), "output": str(inside / "course1")},
        {"id": "b", "audio": str(assets["speech4"]), "output": str(outside)},
        {"id": "c", "audio": str(assets["speech4"]), "output": "s3://acme-out/x"}],
        {"image": str(assets["image"]), "size": "96*96"})
    roots = [str(inside), "s3://acme-out/videos"]
    monkeypatch.setenv("S2V_ALLOWED_OUTPUT_ROOTS", json.dumps(roots))
    assert run_cli("validate", m, "--no-deep") == 2
    assert "outside the allowed" in capsys.readouterr().out  # validate reports on stdout, like a linter
    assert not outside.exists()  # refused before anything is written there

    from core.settings import Settings
    from infra.storage.checks import check_inputs
    from orchestrator.intake.manifest import load_manifest

    s = Settings()
    problems = check_inputs(load_manifest(str(m), None, s).jobs, s)
    assert [(p.field, p.reason.split(" is outside")[0]) for p in problems] == [("output", str(outside)),
                                                                             ("output", "s3://acme-out/x")]
    assert all(str(m) in p.where and "S2V_ALLOWED_OUTPUT_ROOTS" in p.hint and roots[1] in p.reason for p in problems)
    monkeypatch.setenv("S2V_ALLOWED_OUTPUT_ROOTS", '["relative/path"]')  # a root that can never match: a typo
    assert run_cli("validate", m, "--no-deep") == 2
    assert "S2V_ALLOWED_OUTPUT_ROOTS" in capsys.readouterr().err


def test_within_roots_compares_folder_by_folder():
    roots = ["/srv/videos", "s3://acme/out/", "gs://whole-bucket"]
    assert within_roots(parse("/srv/videos"), roots) and within_roots(parse("/srv/videos/a/b"), roots)
    assert not within_roots(parse("/srv/videos-evil"), roots) and not within_roots(parse("/srv"), roots)
    assert within_roots(parse("s3://acme/out/x"), roots) and not within_roots(parse("s3://acme/outside"), roots)
    assert not within_roots(parse("s3://other/out/x"), roots) and not within_roots(parse("gs://acme/out/x"), roots)
    assert within_roots(parse("gs://whole-bucket/any/thing"), roots)
