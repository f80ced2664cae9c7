"""Idle auto-stop: the watcher reads a real Jobs API (a local `ray start --head` on 127.0.0.1), waits while a job
runs or a GPU actor lives, then tears the cluster down through the cluster's own node provider (the loopback
provider of tests/test_cluster_cli.py, whose node state we can read back)."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from pathlib import Path

import yaml

from infra.clusters.autostop import IdleWatcher, busy_reason, start, stop_cluster
from autoscaler import wait_for
from procs import ray_head

try:  # the loopback provider moves to its own module; either place works
    from loopback_cluster import LocalNodeProvider
except ImportError:
    from test_cluster_cli import LocalNodeProvider

from ray.autoscaler.tags import NODE_KIND_HEAD, NODE_KIND_WORKER, TAG_RAY_NODE_KIND

MODULE = LocalNodeProvider.__module__ + ".LocalNodeProvider"


def _cluster(tmp_path: Path) -> tuple[dict, LocalNodeProvider]:
    """A loopback cluster's config and provider with a head and two workers on record (no processes)."""
    cfg = {"cluster_name": f"t{uuid.uuid4().hex[:6]}",
           "provider": {"type": "external", "module": MODULE, "state_path": str(tmp_path / "nodes" / "state.json"),
                        "ray_address": "127.0.0.1:1"},
           "metadata": {"s2v": {"idle_stop_minutes": 1, "dashboard_port": 1}}}
    provider = LocalNodeProvider(cfg["provider"], cfg["cluster_name"])
    provider.create_node({}, {TAG_RAY_NODE_KIND: NODE_KIND_HEAD}, 1)
    provider.create_node({}, {TAG_RAY_NODE_KIND: NODE_KIND_WORKER}, 2)
    return cfg, provider


HOLDER = """
import os, sys, threading, time
import ray

release = sys.argv[1]


@ray.remote(num_gpus=1, num_cpus=0)
class Hold:
    def __init__(self):
        def leave_when_released():
            while not os.path.exists(release):
                time.sleep(0.2)
            os._exit(0)
        threading.Thread(target=leave_when_released, daemon=True).start()

    def ping(self):
        return 1


ray.init()
a = Hold.options(name="hold", namespace="t", lifetime="detached").remote()
ray.get(a.ping.remote())
time.sleep(4)
"""


def test_stops_only_after_jobs_and_gpu_actors_are_gone(tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    cfg, provider = _cluster(tmp_path)
    script, release = tmp_path / "hold.py", tmp_path / "release"
    script.write_text(HOLDER)
    with ray_head(num_cpus=1, num_gpus=1) as dashboard:
        assert busy_reason(dashboard) is None
        client = JobSubmissionClient(dashboard)
        # A job that leaves a detached actor holding the GPU behind it (work started outside the Jobs API).
        job = client.submit_job(entrypoint=f"python {script} {release}")
        wait_for(lambda: (r := busy_reason(dashboard)) and "job" in r, 300, what="the job to count as busy")

        stops: list[float] = []

        def on_idle():
            stops.append(time.time())
            stop_cluster(cfg)

        watcher = IdleWatcher(lambda: busy_reason(dashboard), idle_s=2.0, on_idle=on_idle, poll_s=0.3)
        t = threading.Thread(target=watcher.run, daemon=True)
        t.start()
        wait_for(lambda: client.get_job_status(job).is_terminal(), 300, what="the job to end")
        assert client.get_job_status(job) == JobStatus.SUCCEEDED, client.get_job_logs(job)
        # The job is over but its detached actor still holds the GPU: busy, not stopped.
        assert "holds 1 GPU" in (busy_reason(dashboard) or "")
        time.sleep(2.5)
        assert not stops and len(provider.non_terminated_nodes({})) == 3
        released = time.time()
        release.touch()
        t.join(timeout=300)
        assert stops and stops[0] > released
    assert provider.non_terminated_nodes({}) == []  # workers and head terminated through the provider


def test_start_replaces_the_running_watcher_and_honours_zero(tmp_path):
    cfg, _provider = _cluster(tmp_path)
    path = tmp_path / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(cfg))
    home = tmp_path / "home"
    pids = []
    try:
        first = start(str(path), home=home)
        pids.append(first)
        assert first and Path(f"/proc/{first}").exists()
        assert b"infra.clusters.autostop" in Path(f"/proc/{first}/cmdline").read_bytes()
        second = start(str(path), home=home)
        pids.append(second)
        wait_for(lambda: not Path(f"/proc/{first}").exists() or b"Z" in Path(f"/proc/{first}/stat").read_bytes()
                 .split(b")")[-1][:3], 300, what="the old watcher to stop")
        assert int((home / ".s2v" / "autostop.pid").read_text()) == second
        cfg["metadata"]["s2v"]["idle_stop_minutes"] = 0
        path.write_text(yaml.safe_dump(cfg))
        assert start(str(path), home=home) is None
        wait_for(lambda: not Path(f"/proc/{second}").exists() or b"Z" in Path(f"/proc/{second}/stat").read_bytes()
                 .split(b")")[-1][:3], 300, what="the watcher to stop when auto-stop is turned off")
    finally:
        for pid in pids:
            try:
                os.kill(pid, 9)
            except (ProcessLookupError, TypeError):
                pass
        for pid in pids:
            try:
                os.waitpid(pid, 0)
            except (ChildProcessError, TypeError):
                pass
    assert json.loads(json.dumps(cfg))  # the config stayed plain data


def test_an_unreachable_dashboard_is_not_idle_and_stops_nothing(caplog):
    """Nothing answering on the dashboard port once counted as idle and terminated every node: a cluster whose
    state cannot be read is not idle. The watcher stops only on evidence, and says why it does not."""
    from procs import free_ports

    (port,) = free_ports(1)
    dead = f"http://127.0.0.1:{port}"
    why = busy_reason(dead, timeout_s=2)
    assert why and why.startswith("state unknown")
    assert any("not stopped" in r.getMessage() for r in caplog.records)
    stops, now = [], [0.0]
    watcher = IdleWatcher(lambda: busy_reason(dead, timeout_s=1), idle_s=5, on_idle=lambda: stops.append(now[0]),
                          clock=lambda: now[0])
    for _ in range(4):
        assert not watcher.step()
        now[0] += 10  # four looks, 40 s of an unreadable state: past the idle window
    assert not stops
