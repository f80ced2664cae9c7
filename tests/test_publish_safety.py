"""A manifest cannot replace files s2v did not publish, outputs can be fenced into allowed roots, and what s2v
publishes is readable by others (the umask's mode, not 0600)."""

from __future__ import annotations

import json
import os
import stat
from types import SimpleNamespace

import pytest

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
    assert str(uris["mp4"]) in problem and "no s2v sidecar" in problem


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
