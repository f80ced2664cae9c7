"""`s2v gc`: a dry run lists the right things and removes nothing; --yes removes old runs, abandoned jobs, superseded
tails, stale temps and old cache entries, and nothing a running run holds — on a folder, SeaweedFS (S3) and
fake-gcs-server (GCS), both on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from core.settings import Settings
from orchestrator.workarea import gc
from orchestrator.workarea.layout import WorkArea
from storage_servers import bucket_settings, gcs_server, s3_server  # noqa: F401  (fixtures)

DAY = 86400.0
HOST = socket.gethostname()


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def state(status: str, updated: float, keys: list[str], host: str = HOST, pid: int | None = None) -> bytes:
    jobs = {f"job-{k}": {"id": f"job-{k}", "status": "pending", "key": k} for k in keys}
    from orchestrator.workarea import liveness

    return json.dumps({"run_id": "x", "status": status, "updated": updated, "started": updated, "host": host,
                       "pid": pid if pid is not None else os.getpid(), "boot_id": liveness.boot_id(),
                       "pid_ns": liveness.pid_namespace(), "jobs": jobs}).encode()


def put(work: WorkArea, rel: str, data: bytes = b"x" * 100, age_s: float = 0.0) -> None:
    parts = rel.split("/")
    if len(parts) == 3 and parts[0] == "runs" and parts[2] == "state.json":  # a run's state names its run
        data = json.dumps({**json.loads(data), "run_id": parts[1]}).encode()
    u = work.root.join(*parts)
    work.storage.write_bytes(u, data)
    if age_s and u.scheme == "file":
        t = time.time() - age_s
        os.utime(u.key, (t, t))


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_gc_dry_run_lists_what_is_stale_and_yes_removes_only_that(tmp_path, run_cli, capsys, monkeypatch):
    work_dir, out = tmp_path / "work", tmp_path / "out"
    work = WorkArea.at(str(work_dir), Settings())
    work.ensure_marker()
    old, now = 30 * DAY, time.time()
    put(work, "runs/old-done/state.json", state("finished", now - old, ["000000000000000000000003"]), old)
    put(work, "runs/old-done/report.json", b"{}", old)
    put(work, "runs/latest/state.json", state("finished", now - old, []), old)
    put(work, "runs/LATEST", b"latest", old)
    put(work, "runs/live-here/state.json", state("running", now - old, ["000000000000000000000005"]), old)  # this pid: alive
    put(work, "runs/live-there/state.json", state("running", now - 60, ["000000000000000000000008"], host="gpu-node-7", pid=1), old)
    put(work, "runs/dead-here/state.json", state("running", now - old, ["000000000000000000000002"], pid=dead_pid()), old)
    for key in ("000000000000000000000005", "000000000000000000000008", "000000000000000000000002", "000000000000000000000001"):
        put(work, f"jobs/{key}/scene-0000/clip-0000.mp4", age_s=old)
        put(work, f"jobs/{key}/scene-0000/clip-0000.done.json", b"{}", old)
    fresh = "jobs/000000000000000000000004/scene-0000/"
    for name in ("clip-0000.mp4", "clip-0000.tail", "clip-0000.done.json", "clip-0001.mp4", "clip-0001.tail",
                 "clip-0001.done.json"):
        put(work, fresh + name)
    put(work, "jobs/000000000000000000000004/scene-0001/clip-0003.tail.npy")  # from before compression, superseded
    put(work, "jobs/000000000000000000000004/scene-0001/clip-0004.done.json", b"{}")
    put(work, fresh + ".tmp-0123456789ab-clip-0002.mp4.partial", age_s=2 * 3600)  # a SIGKILLed upload
    put(work, fresh + ".tmp-k3x_9qzv", age_s=2 * 3600)  # a SIGKILLed local write (mkstemp)
    put(work, "runs/live-here/.tmp-0123456789ab-state.json.partial", age_s=600)  # being written: too young
    out.mkdir()
    for name, age in ((".tmp-0123456789ab-lesson.mp4", 3 * 3600), (".tmp-notes.txt", 3 * 3600), ("lesson.mp4", 0)):
        (out / name).write_bytes(b"y" * 10)
        os.utime(out / name, (now - age, now - age))
    before, outputs = files(work_dir), files(out)
    gone = {"runs/old-done/state.json", "runs/old-done/report.json", "runs/dead-here/state.json",
            "jobs/000000000000000000000002/scene-0000/clip-0000.mp4", "jobs/000000000000000000000002/scene-0000/clip-0000.done.json",
            "jobs/000000000000000000000001/scene-0000/clip-0000.mp4", "jobs/000000000000000000000001/scene-0000/clip-0000.done.json",
            fresh + "clip-0000.tail", "jobs/000000000000000000000004/scene-0001/clip-0003.tail.npy",
            fresh + ".tmp-0123456789ab-clip-0002.mp4.partial", fresh + ".tmp-k3x_9qzv"}

    assert run_cli("gc", "--work", work_dir, "--temps-in", out, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    found = {(f["kind"], Path(f["what"]).name if f["kind"] in ("tail", "temp") else f["what"]) for f in report["findings"]}
    assert found == {("run", "old-done"), ("run", "dead-here"), ("job", "000000000000000000000002"), ("job", "000000000000000000000001"),
                     ("tail", "clip-0000.tail"), ("tail", "clip-0003.tail.npy"),
                     ("temp", ".tmp-0123456789ab-clip-0002.mp4.partial"), ("temp", ".tmp-k3x_9qzv"),
                     ("temp", ".tmp-0123456789ab-lesson.mp4")}
    assert report["dry_run"] and report["removable_bytes"] == sum((work_dir / g).stat().st_size for g in gone) + 10
    assert report["live_runs"] == ["live-here", "live-there"] and report["held_jobs"] == ["000000000000000000000005", "000000000000000000000008"]
    assert files(work_dir) == before and files(out) == outputs  # a dry run removes nothing

    assert run_cli("gc", "--work", work_dir, "--temps-in", out) == 0  # the plain listing says the same
    text = capsys.readouterr().out
    assert "would remove job   000000000000000000000001" in text and "rerun with --yes" in text and files(work_dir) == before

    assert run_cli("gc", "--work", work_dir, "--temps-in", out, "--yes") == 0
    assert "removed" in capsys.readouterr().out
    assert files(work_dir) == before - gone
    assert files(out) == {".tmp-notes.txt", "lesson.mp4"}  # only our own temp name goes from an output folder
    assert not (work_dir / "jobs" / "000000000000000000000001").exists() and not (work_dir / "runs" / "old-done").exists()
    assert out.is_dir()


def test_gc_cache_prunes_old_input_cache_entries(tmp_path, run_cli, capsys, monkeypatch):
    from infra.storage.cache import cache_root

    monkeypatch.setenv("S2V_CACHE_DIR", str(tmp_path / "cache"))
    root = cache_root(type("S", (), {"cache_dir": tmp_path / "cache"})())
    old_entry, new_entry = root / "ab" / ("ab" + "0" * 62), root / "cd" / ("cd" + "1" * 62)
    for entry, age in ((old_entry, 20 * DAY), (new_entry, DAY)):
        entry.mkdir(parents=True)
        (entry / ".lock").touch()
        (entry / "lesson.wav").write_bytes(b"z" * 1000)
        t = time.time() - age
        os.utime(entry / "lesson.wav", (t, t))
    work = tmp_path / "work"
    WorkArea.at(str(work), Settings()).ensure_marker()
    assert run_cli("gc", "--work", work, "--cache", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert [(f["kind"], f["objects"], f["bytes"]) for f in report["findings"]] == [("cache", 1, 1000)]
    assert (old_entry / "lesson.wav").is_file()
    assert run_cli("gc", "--work", work, "--cache", "--yes") == 0
    assert not old_entry.exists() and (new_entry / "lesson.wav").is_file()


@pytest.fixture(params=["s3", "gs"])
def bucket_work(request, tmp_path, monkeypatch):
    base, settings = bucket_settings(request, request.param, monkeypatch, tmp_path, "gc")
    work = WorkArea.at(f"{base}/work", settings)
    work.ensure_marker()
    return work


def test_gc_on_object_stores_removes_stale_things_and_keeps_what_a_running_run_holds(bucket_work):
    """Object stores cannot be back-dated: gc is asked as of 30 days from now instead."""
    work, later = bucket_work, time.time() + 30 * DAY
    put(work, "runs/old/state.json", state("finished", time.time(), ["000000000000000000000007"]))
    put(work, "runs/live/state.json", state("running", time.time(), ["000000000000000000000005"]))  # this process: alive
    put(work, "runs/LATEST", b"live")
    put(work, "runs/live/.tmp-0123456789ab-state.json.partial")
    for key in ("000000000000000000000007", "000000000000000000000005"):
        put(work, f"jobs/{key}/scene-0000/clip-0000.mp4")
        put(work, f"jobs/{key}/scene-0000/clip-0000.tail")
        put(work, f"jobs/{key}/scene-0000/clip-0000.done.json")
    listing = {i.uri.key for i in work.storage.list_info(work.root)}

    plan = gc.collect(work, now=later, settings=work.settings)
    assert {(f.kind, f.what.rsplit("/", 1)[-1]) for f in plan.findings} == \
        {("run", "old"), ("job", "000000000000000000000007"), ("temp", ".tmp-0123456789ab-state.json.partial")}
    assert {i.uri.key for i in work.storage.list_info(work.root)} == listing  # looking removes nothing

    gc.apply(plan, work.settings)
    left = {i.uri.key.removeprefix("work/") for i in work.storage.list_info(work.root)}
    assert left == {"s2v-work-area.json", "runs/live/state.json", "runs/LATEST",
                    "jobs/000000000000000000000005/scene-0000/clip-0000.mp4",
                    "jobs/000000000000000000000005/scene-0000/clip-0000.tail", "jobs/000000000000000000000005/scene-0000/clip-0000.done.json"}


def test_a_run_that_starts_between_looking_and_removing_keeps_its_job(tmp_path):
    work = WorkArea.at(str(tmp_path / "work"), Settings())
    work.ensure_marker()
    put(work, "jobs/000000000000000000000006/scene-0000/clip-0000.mp4", age_s=30 * DAY)
    plan = gc.collect(work, settings=work.settings)
    assert [f.what for f in plan.findings] == ["000000000000000000000006"]
    put(work, "runs/new/state.json", state("running", time.time(), ["000000000000000000000006"]))  # resumes 000000000000000000000006's checkpoints
    assert gc.apply(plan, work.settings) == 0 and plan.kept == ["000000000000000000000006"]
    assert (tmp_path / "work" / "jobs" / "000000000000000000000006" / "scene-0000" / "clip-0000.mp4").is_file()


def test_a_run_whose_pid_was_reused_is_not_alive(tmp_path):
    """A dead driver's pid may belong to another process by now: `os.kill(pid, 0)` said "alive" and gc kept the
    dead run's jobs forever (leases already compared the pid's start time). The run state records the start time
    and boot, and one check (workarea/liveness.py) answers for runs and leases alike."""
    from orchestrator.run.state import RunState
    from orchestrator.workarea import liveness

    work = WorkArea.at(str(tmp_path / "work"), Settings())
    me = RunState(work, "r", "m.yaml", {})._doc("running")
    assert me["pid"] == os.getpid() and me["pid_start"] and me["boot_id"]
    assert gc.driver_alive(me) is True and liveness.alive(me) is True
    other = subprocess.Popen(["sleep", "30"])  # a live process that is not the run's driver
    try:
        reused = {**me, "pid": other.pid}  # its start time is not the one the state recorded
        assert gc.driver_alive(reused) is False and not gc.run_is_live(reused, time.time())
    finally:
        other.kill()
        other.wait(10)
    assert gc.driver_alive({**me, "host": "another-host"}) is None  # elsewhere: only the state's age can tell
    assert gc.driver_alive({**me, "boot_id": "another-boot"}) is None
    # a container with host networking shares the host name and boot, not the pids: its pid says nothing here
    assert me["pid_ns"] and gc.driver_alive({**me, "pid_ns": "pid:[1]", "pid": dead_pid()}) is None


def _project(root: Path, age_s: float) -> dict[str, bytes]:
    """A user's project folder: a TensorBoard run, a script, a settings file named like an old temp."""
    made = {"runs/resnet-2024-05/events.out.tfevents.1": b"tb", "runs/resnet-2024-05/state.json": b'{"step": 9}',
            "jobs/nightly/backup.sh": b"#!/bin/sh\n", "src/.tmp-settings": b"k=v", ".tmp-settings": b"k=v",
            "jobs/notes/scene-0000/clip-0000.mp4": b"not ours either"}
    for rel, data in made.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        os.utime(p, (time.time() - age_s, time.time() - age_s))
    return made


def test_gc_refuses_a_folder_that_is_not_a_work_area_and_removes_nothing(tmp_path, run_cli, capsys):
    """`s2v gc --work . --yes` in a project folder removed a TensorBoard run, a backup script and a settings file
    30 days old (`.tmp-` + eight letters looked like an old temp of ours): nothing said the folder was a work area."""
    made = _project(tmp_path / "project", 30 * DAY)
    before = files(tmp_path / "project")
    assert run_cli("gc", "--work", tmp_path / "project", "--yes") == 2
    assert "is not an s2v work area" in capsys.readouterr().err
    assert files(tmp_path / "project") == before == set(made)
    assert run_cli("gc", "--work", tmp_path / "project", "--adopt") == 2  # no run state of ours: not adopted
    assert not (tmp_path / "project" / "s2v-work-area.json").exists()


def test_gc_in_a_work_area_removes_only_what_s2v_wrote(tmp_path, run_cli, capsys):
    """Marked, and shared with other data: what s2v wrote goes, by name and layout; the rest stays."""
    root = tmp_path / "work"
    work = WorkArea.at(str(root), Settings())
    work.ensure_marker()
    made = _project(root, 30 * DAY)
    key = "00000000000000000000abcd"
    put(work, "runs/old/state.json", state("finished", time.time() - 30 * DAY, [key]), 30 * DAY)
    put(work, "runs/LATEST", b"newer")
    put(work, f"jobs/{key}/scene-0000/clip-0000.mp4", age_s=30 * DAY)
    put(work, f"jobs/{key}/.tmp-k3x_9qzv", age_s=2 * 3600)  # an earlier version's temp, in our own folder
    assert run_cli("gc", "--work", root, "--yes") == 0
    assert files(root) == set(made) | {"s2v-work-area.json", "runs/LATEST"}


def test_a_work_area_from_before_the_marker_is_adopted_once_its_layout_proves_it(tmp_path, run_cli, capsys):
    root = tmp_path / "work"
    work = WorkArea.at(str(root), Settings())
    put(work, "runs/night-1/state.json", state("finished", time.time(), []))
    assert run_cli("gc", "--work", root) == 2
    assert run_cli("gc", "--work", root, "--adopt") == 0 and work.is_marked()
    assert "marked" in capsys.readouterr().out
