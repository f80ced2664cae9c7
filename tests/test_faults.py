"""Real-Ray runs that survive faults: an actor killed mid-clip, killed before its checkpoint's marker, the driver
SIGKILLed and rerun, NaN output, the budget. Outputs must match a fault-free run byte for byte; redone clips are
counted from the faults backend's record of every render start. What the scheduler and pool decide about faults
(lost nodes, the watchdog, blocklists, retries elsewhere, notices, the elastic pool) is tested on the in-process
runtime: tests/test_policy.py."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import media
from orchestrator.run.runner import render

# the test that needs Ray absent, or a cluster of its own, stops the shared local Ray (conftest)
STOPS_SHARED_RAY = True

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def drill(tmp_path_factory, assets):
    """Two jobs with multi-clip chains (the faults backend renders exactly like draft)."""
    d = tmp_path_factory.mktemp("drill")
    pcm, _ = media.speech([(9.0, 0.6), (9.0, 0)], seed=11)
    long_wav = media.write_wav(d / "long.wav", pcm)
    jobs = [{"id": "alpha", "audio": str(long_wav), "seed": 1}, {"id": "beta", "audio": str(long_wav), "seed": 2}]
    m = media.write_manifest(d / "m.yaml", jobs, {"image": str(assets["image"]), "size": "96*96",
                                                  "backend": "faults", "max_scene_s": 25})
    return m


def _with(settings, tmp_path, name, faults=(), **kw):
    out = tmp_path / name
    return settings.model_copy(update={"work": str(out / "work"), "faults": list(faults),
                                       "faults_dir": str(out / "faults"), **kw}), out / "outputs"


def _render_to(manifest: Path, s, out: Path, **kw):
    return render(str(manifest), s, cli_defaults={"output": str(out)}, **kw)


def _starts(s, what: str = "starts") -> collections.Counter:
    """Render starts (or finishes) per clip, from the faults backend's records."""
    names = os.listdir(Path(s.faults_dir) / what)
    return collections.Counter(n.rsplit(".", 2)[0] for n in names)


def _times(s, what: str, clip: str) -> list[int]:
    return sorted(int(n.rsplit(".", 1)[1]) for n in os.listdir(Path(s.faults_dir) / what) if n.startswith(clip + "."))


def _outputs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.mp4"))}


@pytest.fixture(scope="module")
def baseline(drill, tmp_path_factory):
    """A fault-free run of the drill manifest: the bytes every faulty run must reproduce."""
    from conftest import start_local_ray
    from core.settings import Settings

    start_local_ray()
    tmp = tmp_path_factory.mktemp("baseline")
    s, out = _with(Settings(gpus=2), tmp, "clean")
    res = _render_to(drill, s, out)
    assert res.exit_code == 0
    return _outputs(out), {j: r.clips for j, r in res.jobs.items()}


def test_actor_killed_mid_clip_resumes_from_checkpoint(ray_local, drill, baseline, settings, tmp_path):
    s, out = _with(settings, tmp_path, "kill", [{"action": "kill", "job": "alpha", "clip": 2, "times": 1}])
    res = _render_to(drill, s, out)
    assert res.exit_code == 0
    assert _outputs(out) == baseline[0]
    starts, finished = _starts(s), _starts(s, "finished")
    assert starts["alpha.s0.c2"] == 2  # the killed clip was rendered again
    # clip 1's checkpoint may still have been on its way (written while clip 2 rendered): at most that one
    # finished render is done twice; everything before it was checkpointed
    assert {c: n for c, n in finished.items() if n > 1} in ({}, {"alpha.s0.c1": 2})
    assert res.jobs["alpha"].retries == 1 and res.jobs["alpha"].status == "published"
    loads = [a["loads"] for a in res.actors if "loads" in a]  # an actor still restarting has no answer yet
    assert loads and all(x == {"faults": 1} for x in loads)  # each live actor process loaded once


def test_checkpoint_overlaps_the_next_clip_and_a_kill_before_the_marker_redoes_only_that_clip(
        ray_local, drill, baseline, settings, tmp_path):
    """Issue 11 item 2. alpha: its actor dies after rendering clip 2 and before its marker exists (the checkpoint
    being written while clip 3 renders) → clip 2 is the only finished render done twice, the bytes are the same.
    beta: clip 1's checkpoint is slow (2 s) → clip 2 started rendering before that checkpoint could end."""
    s, out = _with(settings, tmp_path, "kill-save", [
        {"action": "kill", "job": "alpha", "clip": 2, "at": "save", "times": 1},
        {"action": "slow", "job": "beta", "clip": 1, "at": "save", "seconds": 2.0, "times": 1}])
    res = _render_to(drill, s, out)
    assert res.exit_code == 0, {j: r.reason for j, r in res.jobs.items()}
    assert _outputs(out) == baseline[0]
    finished = _starts(s, "finished")
    assert {c: n for c, n in finished.items() if n > 1} == {"alpha.s0.c2": 2}
    assert res.jobs["alpha"].retries == 1
    # ns of the slow checkpoint's start + 2 s is before its marker; clip 2 started before that
    (saving,) = _times(s, "saving", "beta.s0.c1")
    assert _times(s, "starts", "beta.s0.c2")[0] < saving + 2_000_000_000
    done = [e.clip for e in res.events if e.kind == "done" and e.job == "alpha"]
    assert done == sorted(set(done))  # advanced in order, never twice (after the kill, from the markers it found)


def test_nan_output_fails_only_that_job(ray_local, drill, settings, tmp_path):
    s, out = _with(settings, tmp_path, "nan", [{"action": "nan", "job": "beta", "times": 0}])
    res = _render_to(drill, s, out)
    assert res.exit_code == 1
    assert res.jobs["alpha"].status == "published"
    assert res.jobs["beta"].status == "failed" and "NaN" in res.jobs["beta"].reason
    assert "failed after 3 attempts" in res.jobs["beta"].reason


def test_budget_stops_new_chains_and_says_so(ray_local, drill, settings, tmp_path):
    """The budget on a real run (the policy itself: tests/test_policy.py): the job that would pass it is not
    started, fails with the reason, and the other publishes. Clips take the time the estimate says (1 s), so the
    second chain is refused whether it is weighed while the first renders (committed) or after it (spent): with
    draft-fast clips, a second actor that came up late under load saw a cheap spend and started it."""
    s = settings.model_copy(update={"budget_usd": 5.0, "price_per_gpu_hour": 3600.0,
                                    "seconds_per_clip": {"faults": 1.0}, "faults_dir": str(tmp_path / "f"),
                                    "faults": [{"action": "slow", "seconds": 1.0}]})
    res = _render_to(drill, s, tmp_path / "o")
    assert res.exit_code == 1
    assert sorted(r.status for r in res.jobs.values()) == ["failed", "published"]
    stopped = next(r for r in res.jobs.values() if r.status == "failed")
    assert "budget $5.00 reached" in stopped.reason and stopped.clips_rendered == 0


def test_driver_sigkill_then_rerun_resumes(drill, baseline, tmp_path):
    """The driver (`s2v render`, its own embedded Ray, one logical GPU) is SIGKILLed mid-run; the same command
    run again publishes everything, redoing at most the one clip that was in flight."""
    import ray

    ray.shutdown()  # this test's drivers start their own local Ray
    work, faults_dir, out = tmp_path / "work", tmp_path / "faults", tmp_path / "outputs"
    env = {**os.environ, "S2V_WORK": str(work), "S2V_GPUS": "1", "S2V_FAULTS_DIR": str(faults_dir),
           "S2V_FAULTS": json.dumps([{"action": "slow", "seconds": 0.5}])}
    cmd = [sys.executable, "-m", "orchestrator.cli", "render", str(drill), "--set", f"output={out}", "--no-progress"]
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(list((work / "jobs").rglob("*.done.json"))) < 3:
            time.sleep(0.1)
        os.killpg(p.pid, signal.SIGKILL)
    finally:
        p.wait(timeout=30)
    assert len(list(out.glob("*.mp4"))) < 2  # it really died before finishing
    time.sleep(1.0)
    p2 = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=300)
    assert p2.returncode == 0, p2.stderr.decode()[-3000:]
    assert _outputs(out) == baseline[0]
    redone = {what: sum(n - 1 for n in collections.Counter(
        n.rsplit(".", 2)[0] for n in os.listdir(faults_dir / what)).values()) for what in ("starts", "finished")}
    assert redone["finished"] <= 1 and redone["starts"] <= 2  # the clip in flight and the one being checkpointed
