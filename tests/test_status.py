"""`s2v status` reads a run's state from the work area: after a finished run (table and --json), by run id, and
after the driver was SIGKILLed mid-run (the last written state, "running", stays readable)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import media

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def env(monkeypatch, tmp_path):
    work = tmp_path / "work"
    monkeypatch.setenv("S2V_WORK", str(work))
    monkeypatch.setenv("S2V_GPUS", "2")
    monkeypatch.setenv("COLUMNS", "200")  # rich tables fold at 80 columns otherwise
    return work


def test_status_after_a_finished_run(ray_local, assets, tmp_path, env, run_cli, capsys):
    out = tmp_path / "out"
    m = media.write_manifest(tmp_path / "m.yaml", [
        {"id": "one", "audio": str(assets["speech4"]), "seed": 1},
        {"id": "nofile", "audio": str(tmp_path / "missing.wav")}],
        {"image": str(assets["image"]), "size": "96*96", "output": str(out)})
    assert run_cli("render", m, "--no-progress", "--run-id", "nightly-1") == 2  # one invalid row
    capsys.readouterr()

    assert run_cli("status", "--json") == 0  # no RUN: the latest one
    state = json.loads(capsys.readouterr().out)
    assert state["run_id"] == "nightly-1" and state["status"] == "finished"
    assert state["manifest"] == str(m) and state["pid"] == os.getpid()
    assert state["jobs"]["one"]["status"] == "published" and state["jobs"]["one"]["output"] == str(out / "one.mp4")
    assert state["jobs"]["one"]["clips_rendered"] == state["jobs"]["one"]["clips"] > 0
    assert state["jobs"]["nofile"]["status"] == "invalid" and "missing.wav" in state["jobs"]["nofile"]["reason"]

    assert run_cli("status", "nightly-1") == 0  # by id, as a table
    text = capsys.readouterr().err
    assert "run nightly-1 (finished)" in text and "published" in text and "invalid" in text

    # a second run becomes the latest; the first stays readable by id, from a fresh --work flag too
    assert run_cli("render", m, "--no-progress", "--run-id", "nightly-2") == 2
    capsys.readouterr()
    assert run_cli("status", "--json", "--work", env) == 0
    latest = json.loads(capsys.readouterr().out)
    assert latest["run_id"] == "nightly-2" and latest["jobs"]["one"]["status"] == "skipped"
    assert run_cli("status", "nightly-1", "--json") == 0
    assert json.loads(capsys.readouterr().out)["jobs"]["one"]["status"] == "published"

    assert run_cli("status", "no-such-run") == 2
    assert "no run named no-such-run" in capsys.readouterr().err
    assert run_cli("status", "--work", tmp_path / "empty-work") == 2


def _why_not(p: subprocess.Popen, state_file: Path, log: Path | None = None) -> str:
    """What a test that waited for a rendered clip saw instead: the driver's exit, its state, its last output."""
    state = state_file.read_text()[-1500:] if state_file.exists() else "(no state file)"
    out = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
    return f"the driver never recorded a rendered clip; exit {p.poll()}; state: {state}; output: {out}"


def _rendered_some(state_file: Path) -> bool:
    """The driver's state (written at most every 2 s) records a rendered clip of an unfinished job."""
    try:
        job = json.loads(state_file.read_text())["jobs"]["slow"]
    except (OSError, ValueError, KeyError):
        return False
    return job["status"] == "pending" and job["clips_rendered"] >= 1


def test_status_after_the_driver_was_sigkilled(assets, tmp_path, env, run_cli, capsys):
    """The driver dies without a word (SIGKILL, its own local Ray); its last state is still there to read."""
    pcm, _ = media.speech([(9.0, 0.6), (9.0, 0)], seed=11)
    wav = media.write_wav(tmp_path / "long.wav", pcm)
    m = media.write_manifest(tmp_path / "m.yaml", [{"id": "slow", "audio": str(wav), "seed": 1}],
                             {"image": str(assets["image"]), "size": "96*96", "backend": "faults",
                              "output": str(tmp_path / "out"), "max_scene_s": 25})
    run_env = {**os.environ, "S2V_GPUS": "1", "S2V_FAULTS_DIR": str(tmp_path / "faults"),
               "S2V_FAULTS": json.dumps([{"action": "slow", "seconds": 2.0}])}  # 4 clips: ~8 s
    log = tmp_path / "driver.log"
    with log.open("w") as fh:
        p = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "render", str(m), "--no-progress",
                              "--run-id", "doomed"], cwd=ROOT, env=run_env, stdout=fh, stderr=subprocess.STDOUT,
                             start_new_session=True)
    state_file = env / "runs" / "doomed" / "state.json"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and p.poll() is None and not _rendered_some(state_file):
            time.sleep(0.05)
        assert _rendered_some(state_file), _why_not(p, state_file, log)
        os.killpg(p.pid, signal.SIGKILL)  # the driver and its private Ray, nothing else
    finally:
        p.wait(timeout=30)
    assert p.returncode == -signal.SIGKILL

    assert run_cli("status", "doomed", "--json") == 0
    state = json.loads(capsys.readouterr().out)
    assert state["status"].startswith("interrupted")  # never marked finished, and its pid is gone
    assert json.loads(state_file.read_text())["status"] == "running"  # what the dead driver last wrote
    assert state["pid"] == p.pid and state["run_id"] == "doomed"
    job = state["jobs"]["slow"]
    assert job["status"] == "pending" and 0 < job["clips_rendered"] < job["clips"]
    assert json.loads(state_file.read_text())["updated"] <= time.time()
    assert not (tmp_path / "out" / "slow.mp4").exists()

    assert run_cli("status") == 0  # the latest run, as a table
    assert "run doomed (interrupted" in capsys.readouterr().err


def test_ctrl_c_records_the_run_writes_its_report_and_sends_its_webhook(assets, tmp_path, env, run_cli, capsys):
    """Ctrl-C mid-render (SIGINT to the driver's process group, as a terminal sends it): the run records itself as
    interrupted, writes its report, posts run.finished to a loopback receiver, says how to resume and exits 130.
    Once, typer turned the interrupt into a silent exit 130: state.json stayed "running", no report, no webhook."""
    from test_webhook import Receiver

    pcm, _ = media.speech([(9.0, 0.6), (9.0, 0)], seed=11)
    wav = media.write_wav(tmp_path / "long.wav", pcm)
    m = media.write_manifest(tmp_path / "m.yaml", [{"id": "slow", "audio": str(wav), "seed": 1}],
                             {"image": str(assets["image"]), "size": "96*96", "backend": "faults",
                              "output": str(tmp_path / "out"), "max_scene_s": 25})
    rec = Receiver((200,))
    run_env = {**os.environ, "S2V_GPUS": "1", "S2V_FAULTS_DIR": str(tmp_path / "faults"),
               "S2V_FAULTS": json.dumps([{"action": "slow", "seconds": 2.0}]), "S2V_WEBHOOK_URL": rec.url}
    # a shell without job control starts its background children with SIGINT ignored, and Python keeps an
    # ignored SIGINT: give the driver the handler a terminal's foreground Python has. Set in the child after exec,
    # not by preexec_fn: a fork of this multi-threaded test process once hung in preexec_fn on a lock another
    # thread held at fork time, and the whole suite with it.
    prelude = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
               "sys.argv = ['s2v', *sys.argv[1:]]; runpy.run_module('orchestrator.cli', run_name='__main__')")
    p = subprocess.Popen([sys.executable, "-c", prelude, "render", str(m), "--no-progress",
                          "--run-id", "stopped"], cwd=ROOT, env=run_env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    state_file = env / "runs" / "stopped" / "state.json"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and p.poll() is None and not _rendered_some(state_file):
            time.sleep(0.05)
        if not _rendered_some(state_file):
            os.killpg(p.pid, signal.SIGKILL)
            out, _ = p.communicate(timeout=30)
            raise AssertionError(_why_not(p, state_file) + out[-3000:])
        os.killpg(p.pid, signal.SIGINT)
        out, _ = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)
        rec.stop()
    assert p.returncode == 130, out
    assert "rerun the same command to resume" in out and "Traceback" not in out
    state = json.loads(state_file.read_text())
    assert state["status"] == "interrupted"
    assert state["jobs"]["slow"]["status"] == "interrupted" and state["jobs"]["slow"]["clips_rendered"] >= 1
    report = json.loads((env / "runs" / "stopped" / "report.json").read_text())
    assert report["totals"]["interrupted"] == 1 and report["jobs"]["slow"]["status"] == "interrupted"
    finished = [json.loads(body) for _, headers, body in rec.requests if headers.get("X-S2V-Event") == "run.finished"]
    assert len(finished) == 1 and finished[0]["run"]["status"] == "interrupted"
    assert finished[0]["run"]["run_id"] == "stopped" and finished[0]["run"]["interrupted"] == 1
    assert not (tmp_path / "out" / "slow.mp4").exists()

    assert run_cli("status", "stopped") == 0
    assert "run stopped (interrupted)" in capsys.readouterr().err


def test_a_repost_interrupted_by_ctrl_c_ends_interrupted_never_posting(ray_local, assets, settings, tmp_path):
    """Two published jobs whose renditions changed rerun their post step alone ("posting"). Ctrl-C lands as the
    first one finishes: the other must be recorded as interrupted in the state file and the report (it once stayed
    "posting": the Ctrl-C handler, the final sweep and the report's statuses knew only pending and stitching)."""
    from core.errors import InterruptedRun
    from orchestrator.run.results import Progress
    from orchestrator.run.runner import render

    out = tmp_path / "out"
    rows = [{"id": f"j{i}", "audio": str(assets["speech4"]), "seed": i} for i in range(2)]
    base = {"image": str(assets["image"]), "size": "96*96", "output": str(out)}
    assert render(str(media.write_manifest(tmp_path / "m.yaml", rows, base)), settings).exit_code == 0
    m = media.write_manifest(tmp_path / "m.yaml", rows, {**base, "renditions": [{"name": "small", "height": 64}]})

    class CtrlC(Progress):
        def job(self, job_id: str, status: str) -> None:
            raise KeyboardInterrupt

    with pytest.raises(InterruptedRun):
        render(str(m), settings, progress=CtrlC(), run_id="reposting")
    state = json.loads((Path(settings.work) / "runs" / "reposting" / "state.json").read_text())
    statuses = sorted(j["status"] for j in state["jobs"].values())
    assert statuses == ["interrupted", "published"], statuses
    report = json.loads((Path(settings.work) / "runs" / "reposting" / "report.json").read_text())
    assert report["totals"]["interrupted"] == 1 and report["totals"]["published"] == 1
    assert sum(report["totals"][s] for s in ("published", "skipped", "failed", "invalid", "interrupted")) == 2
