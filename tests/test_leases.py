"""Leases per job key: two runs of one manifest never render the same job at once. The primitive on local files,
SeaweedFS (S3) and fake-gcs-server (GCS) with racing runs; expiry, renewal and takeover of a crashed holder under
a controlled clock; and two real concurrent renders on the faults backend (one shared local Ray)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time


import media
from orchestrator.workarea.layout import WorkArea
from orchestrator.workarea.leases import SCHEMA, Leases, holder_gone
from storage_servers import gcs_env, gcs_server, gcs_settings, s3_env, s3_server, s3_settings, unique  # noqa: F401
from test_storage_common import backend  # noqa: F401 — local, S3 and GCS, each with an empty prefix

TTL = 60.0


class Clock:
    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def _leases(backend, run_id: str, clock, ttl: float = TTL) -> Leases:
    from core.settings import Settings

    lz = Leases(backend.root, Settings(lease_ttl_s=ttl), run_id, clock=clock)
    lz.storage = backend.storage  # the backend's own configured instance (endpoint, credentials)
    return lz


def test_racing_runs_exactly_one_holds_and_an_expired_lease_goes_to_exactly_one(backend):
    clock = Clock()
    runs = [_leases(backend, f"run-{i}", clock) for i in range(5)]
    holders: dict[str, list[str]] = {"first": [], "takeover": []}

    def race(phase: str, runs: list[Leases]) -> None:
        go = threading.Barrier(len(runs))

        def one(lz: Leases) -> None:
            go.wait()
            if lz.acquire("key1", ["job-a"]) is None:
                holders[phase].append(lz.run_id)

        threads = [threading.Thread(target=one, args=(lz,)) for lz in runs]
        [t.start() for t in threads]
        [t.join(60) for t in threads]

    race("first", runs)
    assert len(holders["first"]) == 1
    winner = next(lz for lz in runs if lz.run_id == holders["first"][0])
    other = next(lz for lz in runs if lz is not winner)
    busy = other.acquire("key1", ["job-a"])
    assert busy is not None and busy.run_id == winner.run_id and busy.pid > 0
    doc = json.loads(backend.storage.read_bytes(winner.uri("key1")))
    assert doc["schema"] == SCHEMA and doc["run_id"] == winner.run_id and doc["host"] == socket.gethostname()
    assert doc["expires"] == clock.t + TTL and doc["jobs"] == ["job-a"]

    clock.t += TTL + 1  # the winner stopped renewing (it crashed on another machine)
    race("takeover", [lz for lz in runs if lz is not winner])
    assert len(holders["takeover"]) == 1 and holders["takeover"][0] != winner.run_id
    assert winner.renew() == ["key1"] and "key1" not in winner.held  # the stalled holder learns it lost


def test_renewal_keeps_a_lease_and_release_frees_it_at_once(backend):
    clock = Clock()
    a, b = _leases(backend, "run-a", clock), _leases(backend, "run-b", clock)
    assert a.acquire("k", ["j"]) is None
    for _ in range(4):  # four lifetimes, renewed every third of one
        clock.t += TTL / 3
        assert a.renew() == []
        assert b.acquire("k", ["j"]) is not None
    a.release("k")
    assert b.acquire("k", ["j"]) is None  # no waiting for an expiry
    b.close()
    assert json.loads(backend.storage.read_bytes(b.uri("k")))["released"] is True


def test_a_crashed_holder_on_this_machine_is_taken_over_without_waiting(tmp_path):
    """A run killed with SIGKILL (or OOM) cannot release: a rerun on the same machine sees its process is gone
    and takes over at once, instead of skipping every job until the lease expires. A live process is respected."""
    from core.settings import Settings
    from infra.storage import parse

    root = parse(str(tmp_path / "work"))
    clock = Clock(time.time())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        crashed = Leases(root, Settings(), "crashed-run", clock=clock)
        crashed._me["pid"] = int(dead.stdout)  # what the killed run wrote in its lease
        crashed._me["pid_start"] = "1"
        assert crashed.acquire("k-dead", ["j"]) is None
        running = Leases(root, Settings(), "running-run", clock=clock)
        running._me["pid"] = alive.pid
        running._me["pid_start"] = __import__("orchestrator.workarea.liveness", fromlist=["x"]).pid_start(alive.pid)
        assert running.acquire("k-live", ["j"]) is None
        elsewhere = Leases(root, Settings(), "remote-run", clock=clock)
        elsewhere._me.update(host="another-host", pid=int(dead.stdout))
        assert elsewhere.acquire("k-remote", ["j"]) is None

        rerun = Leases(root, Settings(), "rerun", clock=clock)
        assert rerun.acquire("k-dead", ["j"]) is None  # its holder is gone: taken over now
        assert rerun.acquire("k-live", ["j"]).run_id == "running-run"
        assert rerun.acquire("k-remote", ["j"]).run_id == "remote-run"  # another host: only expiry frees it
        (tmp_path / "work" / "leases" / "k-junk.json").write_text("not a lease")
        assert rerun.acquire("k-junk", ["j"]) is None
        assert holder_gone({"host": socket.gethostname(), "boot_id": open("/proc/sys/kernel/random/boot_id").read()
                            .strip(), "pid": int(dead.stdout), "pid_start": "1", "pid_ns": os.readlink("/proc/self/ns/pid")})
        # the review's reproduction: a live run in a container with host networking (same host name and boot,
        # its own PID namespace) looked dead because its pid does not exist here, and was taken over
        container = Leases(root, Settings(), "container-run", clock=clock)
        container._me.update(pid=int(dead.stdout), pid_start="1", pid_ns="pid:[4026532999]")
        assert container.acquire("k-container", ["j"]) is None
        assert rerun.acquire("k-container", ["j"]).run_id == "container-run"  # only its expiry frees it
    finally:
        alive.kill()
        alive.wait(10)


def test_latest_never_flips_back_to_an_older_run(tmp_path):
    """runs/LATEST was rewritten on every state write, so an older run still writing made it point backwards."""
    from core.settings import Settings
    from orchestrator.run.state import RunState

    work = WorkArea.at(str(tmp_path / "work"), Settings())
    older, newer = RunState(work, "run-older", "m.yaml", {}), RunState(work, "run-newer", "m.yaml", {})
    older.write(force=True)
    newer.write(force=True)
    older.write(force=True)  # the older run goes on working …
    older.finish()  # … and finishes after the newer one started
    assert (tmp_path / "work" / "runs" / "LATEST").read_text() == "run-newer"
    assert work.read_state()["run_id"] == "run-newer" and work.read_state("run-older")["status"] == "finished"


def _starts(faults_dir) -> dict[str, int]:
    """How many times each clip began rendering, across every run (the faults backend records each start)."""
    out: dict[str, int] = {}
    for f in (faults_dir / "starts").iterdir():
        clip = ".".join(f.name.split(".")[:3])
        out[clip] = out.get(clip, 0) + 1
    return out


def test_two_concurrent_renders_of_one_manifest_render_each_clip_once(ray_local, assets, settings, tmp_path):
    """Run A renders (slowly); run B starts meanwhile and skips A's jobs, naming A — another version of one of them
    too, which would publish to the same output; run C starts meanwhile too but waits, and finds them published by A. Every clip rendered once; LATEST names the last run started. The
    lease lives 3 s and A renders for longer, so A's renewals are what keep B and C off."""
    from orchestrator.run.runner import render

    faults = tmp_path / "faults"
    s = settings.model_copy(update={"faults": [{"action": "slow", "seconds": 2.5}], "faults_dir": str(faults),
                                    "lease_ttl_s": 3.0})
    out = tmp_path / "out"
    m = media.write_manifest(tmp_path / "m.yaml", [{"id": "a", "audio": str(assets["speech4"])},
                                                   {"id": "b", "audio": str(assets["speech4"]), "seed": 2}],
                             {"image": str(assets["image"]), "size": "96*96", "backend": "faults", "output": str(out)})
    leases = tmp_path / "work" / "leases"
    got: dict[str, object] = {}
    run_a = threading.Thread(target=lambda: got.update(a=render(str(m), s, run_id="run-a")))
    run_a.start()
    deadline = time.monotonic() + 120
    while not list((faults / "starts").glob("*")) and run_a.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)  # until A is rendering its first clip
    assert run_a.is_alive()
    # B asks for another version of job a (another seed: another key, the same output) and the same job b
    m_b = media.write_manifest(tmp_path / "m-b.yaml", [{"id": "a", "audio": str(assets["speech4"]), "seed": 7},
                                                       {"id": "b", "audio": str(assets["speech4"]), "seed": 2}],
                               {"image": str(assets["image"]), "size": "96*96", "backend": "faults", "output": str(out)})
    res_b = render(str(m_b), s, run_id="run-b")
    assert {j.status for j in res_b.jobs.values()} == {"skipped"} and res_b.exit_code == 0
    assert all("run run-a" in j.reason and "another run is rendering it" in j.reason for j in res_b.jobs.values())
    # its key was free (B took that lease and let it go); the output's lease is what kept it off
    assert json.loads((leases / f"{res_b.jobs['a'].key}.json").read_text())["released"] is True
    run_c = threading.Thread(target=lambda: got.update(c=render(str(m), s.model_copy(update={"lease_wait_s": 120}),
                                                              run_id="run-c")))
    run_c.start()
    run_a.join(300)
    run_c.join(300)
    res_a, res_c = got["a"], got["c"]
    assert {j.status for j in res_a.jobs.values()} == {"published"}
    assert {(j.status, j.reason) for j in res_c.jobs.values()} == {("skipped", "published meanwhile by another run")}
    assert set(_starts(faults).values()) == {1}  # no clip rendered twice
    assert (tmp_path / "work" / "runs" / "LATEST").read_text() == "run-c"
    assert all(json.loads(p.read_text())["released"] for p in leases.glob("*.json"))
    state_b = json.loads((tmp_path / "work" / "runs" / "run-b" / "state.json").read_text())
    assert "run-a" in state_b["jobs"]["a"]["reason"]  # `s2v status` and the report say why


def test_a_run_that_loses_its_lease_stops_the_job_publishes_nothing_and_keeps_the_checkpoints(
        ray_local, assets, settings, tmp_path):
    """The review's reproduction: a run that stalled past its lease's expiry went on rendering after another run
    took the lease over, and then deleted the checkpoints that run was using. Here another run takes A's lease
    over while A renders (its clock is past A's expiry); A learns at its next renewal, stops the job, publishes
    nothing and leaves the checkpoints; the lease stays the other run's."""
    from core.settings import Settings
    from orchestrator.run.runner import render

    faults = tmp_path / "faults"
    s = settings.model_copy(update={"faults": [{"action": "slow", "seconds": 1.5}], "faults_dir": str(faults),
                                    "lease_ttl_s": 3.0})
    out, work = tmp_path / "out", tmp_path / "work"
    m = media.write_manifest(tmp_path / "m.yaml", [{"id": "a", "audio": str(assets["speech4"])}],
                             {"image": str(assets["image"]), "size": "96*96", "backend": "faults", "output": str(out)})
    got: dict[str, object] = {}
    run_a = threading.Thread(target=lambda: got.update(a=render(str(m), s, run_id="run-a")))
    run_a.start()
    deadline = time.monotonic() + 120
    while not list((faults / "starts").glob("*")) and run_a.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    key = next(p.stem for p in (work / "leases").glob("*.json") if not p.name.startswith("out-"))
    thief = Leases(WorkArea.at(str(work), s).root, Settings(lease_ttl_s=600), "run-b", clock=lambda: time.time() + 10)
    assert thief.acquire(key, ["a"]) is None  # A's lease looks expired to B: taken over
    run_a.join(300)
    a = got["a"].jobs["a"]
    assert a.status == "failed" and "lost its lease" in a.reason, a.reason
    assert not (out / "a.mp4").exists() and not (out / "a.json").exists()
    assert list((work / "jobs" / key).rglob("clip-*.done.json"))  # B resumes from them
    doc = json.loads((work / "leases" / f"{key}.json").read_text())
    assert doc["run_id"] == "run-b" and not doc["released"]  # A's release never wrote over B's lease


def test_a_repost_takes_the_leases_too(ray_local, assets, settings, tmp_path):
    """A published job whose renditions changed is reposted: a CPU task that writes into its output folder, so
    it takes the job's leases like a render, and another run holding one keeps it off."""
    from orchestrator.deliver.outputs import lease_names
    from orchestrator.run.runner import render

    out = tmp_path / "out"
    jobs = [{"id": "a", "audio": str(assets["speech4"])}]
    m = media.write_manifest(tmp_path / "m.yaml", jobs, {"image": str(assets["image"]), "size": "96*96",
                                                         "output": str(out)})
    first = render(str(m), settings)
    assert first.jobs["a"].status == "published"
    media.write_manifest(m, jobs, {"image": str(assets["image"]), "size": "96*96", "output": str(out),
                                   "renditions": [{"name": "r64", "height": 64, "fps": 24}]})
    from orchestrator.plan.planner import plan_jobs
    from orchestrator.intake.manifest import load_manifest

    plan = plan_jobs(list(load_manifest(str(m), None, settings).jobs), settings).plans[0]
    other = Leases(WorkArea.at(settings.work, settings).root, settings, "run-other")
    assert other.acquire(lease_names(plan)[1], ["a"]) is None  # the output's lease
    try:
        res = render(str(m), settings, run_id="run-repost")
    finally:
        other.close()
    assert res.jobs["a"].status == "skipped" and "run run-other" in res.jobs["a"].reason
    assert not (out / "a.r64.mp4").exists()
    assert render(str(m), settings).jobs["a"].status == "published" and (out / "a.r64.mp4").exists()
