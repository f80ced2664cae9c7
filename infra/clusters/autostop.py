"""Idle auto-stop, run on the head: when no job runs and no GPU is busy for metadata.s2v.idle_stop_minutes,
terminate the workers, then the head itself (like SkyPilot's autostop), so a nightly cluster does not bill all day.

`python -m infra.clusters.autostop start` (a head start command) replaces any previous watcher with a detached
one; `run` is the watcher's loop. Busy means: a Ray job PENDING or RUNNING, or a live actor holding a GPU (a
render started with `ray.init` outside the Jobs API). Idle is evidence — no job and no GPU actor, read from the
dashboard — for the whole window: a dashboard that does not answer is not idle (a restarting head, or an
overloaded one, may be rendering), so the watcher says so in its log, loudly, and stops nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import yaml

log = logging.getLogger("s2v.autostop")
STATE_DIR = Path(".s2v")
PID_FILE = "autostop.pid"
LOG_FILE = "autostop.log"
BOOTSTRAP = "~/ray_bootstrap_config.yaml"


def busy_reason(dashboard: str, timeout_s: float = 10.0) -> str | None:
    """Why the cluster is not idle (a job, a GPU actor, or a state nobody can read), or None when it is."""
    from ray.job_submission import JobStatus, JobSubmissionClient
    from ray.util.state import list_actors

    try:
        for job in JobSubmissionClient(dashboard).list_jobs():
            if job.status in (JobStatus.PENDING, JobStatus.RUNNING):
                return f"job {job.submission_id or job.job_id} is {job.status.value}"
        actors = list_actors(address=dashboard, filters=[("state", "=", "ALIVE")], detail=True, timeout=int(timeout_s),
                             raise_on_missing_output=False)
    except Exception as e:  # noqa: BLE001 — connection refused, timeouts, HTTP errors: the state is unknown
        log.error("dashboard %s unreachable (%s): the cluster's state is unknown, so it is not stopped — it keeps "
                  "running (and billing) until the dashboard answers; look with `s2v cluster status`, or stop it "
                  "with `s2v cluster down`", dashboard, type(e).__name__)
        return f"state unknown: the dashboard does not answer ({type(e).__name__})"
    for a in actors:
        gpus = (getattr(a, "required_resources", None) or {}).get("GPU", 0)
        if gpus:
            return f"actor {a.class_name} holds {gpus:g} GPU"
    return None


class IdleWatcher:
    """Calls on_idle once the cluster has been idle for idle_s without a break."""

    def __init__(self, check: Callable[[], str | None], idle_s: float, on_idle: Callable[[], None],
                 poll_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.check, self.idle_s, self.on_idle, self.poll_s, self.clock = check, idle_s, on_idle, poll_s, clock
        self.idle_since: float | None = None

    def step(self) -> bool:
        """One look; True when it stopped the cluster."""
        reason = self.check()
        now = self.clock()
        if reason:
            if self.idle_since is not None:
                log.info("busy again: %s", reason)
            self.idle_since = None
            return False
        if self.idle_since is None:
            self.idle_since = now
            log.info("idle; stopping the cluster after %.0f s without work", self.idle_s)
        if now - self.idle_since >= self.idle_s:
            log.info("idle for %.0f s: stopping the cluster", now - self.idle_since)
            self.on_idle()
            return True
        return False

    def run(self) -> None:
        while not self.step():
            time.sleep(self.poll_s)


def stop_cluster(config: dict) -> list[str]:
    """Terminate every worker, then the head, through the cluster's own node provider (the same calls the
    autoscaler makes). Returns the node ids it terminated, head last."""
    from ray.autoscaler._private.providers import _get_node_provider
    from ray.autoscaler.tags import NODE_KIND_HEAD, NODE_KIND_WORKER, TAG_RAY_NODE_KIND

    provider = _get_node_provider(config["provider"], config["cluster_name"])
    workers = provider.non_terminated_nodes({TAG_RAY_NODE_KIND: NODE_KIND_WORKER})
    if workers:
        log.info("terminating workers %s", workers)
        provider.terminate_nodes(workers)
    heads = provider.non_terminated_nodes({TAG_RAY_NODE_KIND: NODE_KIND_HEAD})
    log.info("terminating the head %s", heads)
    if heads:
        provider.terminate_nodes(heads)
    return list(workers) + list(heads)


def _load(config_path: str) -> dict:
    return yaml.safe_load(Path(os.path.expanduser(config_path)).read_text())


def _settings(config: dict) -> tuple[int, int]:
    meta = ((config.get("metadata") or {}).get("s2v") or {})
    return int(meta.get("idle_stop_minutes", 30)), int(meta.get("dashboard_port", 8265))


def run(config_path: str, poll_s: float = 30.0) -> None:
    config = _load(config_path)
    minutes, port = _settings(config)
    dashboard = f"http://127.0.0.1:{port}"
    IdleWatcher(lambda: busy_reason(dashboard), minutes * 60.0, lambda: stop_cluster(config), poll_s).run()


def _previous_pid_cmdline(pid: int) -> bool | None:
    """True: pid runs this module; False: it does not (yet); None: no such process."""
    try:
        return b"infra.clusters.autostop" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None


def _previous(state: Path) -> int | None:
    try:
        pid = int((state / PID_FILE).read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"infra.clusters.autostop" in cmdline else None  # a recycled pid is somebody else's process


def start(config_path: str, home: Path | None = None) -> int | None:
    """Replace the running watcher (if any) with a detached one for this config; no watcher when disabled."""
    state = Path(home or Path.home()) / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    old = _previous(state)
    if old:
        os.kill(old, signal.SIGTERM)
    minutes, _port = _settings(_load(config_path))
    if minutes <= 0:
        print("idle auto-stop is off (metadata.s2v.idle_stop_minutes: 0)")
        return None
    with open(state / LOG_FILE, "ab") as out:
        p = subprocess.Popen([sys.executable, "-m", "infra.clusters.autostop", "run", "--config", config_path],
                             stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 10
    while _previous_pid_cmdline(p.pid) is False and time.monotonic() < deadline:
        time.sleep(0.05)  # until exec: the next `start` recognises its predecessor by its command line
    (state / PID_FILE).write_text(str(p.pid))
    print(f"idle auto-stop after {minutes} min (pid {p.pid}, log {state / LOG_FILE})")
    return p.pid


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m infra.clusters.autostop", description=__doc__.splitlines()[0])
    ap.add_argument("cmd", choices=["start", "run"])
    ap.add_argument("--config", default=BOOTSTRAP, help="the cluster config on the head")
    ap.add_argument("--poll-s", type=float, default=30.0)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if a.cmd == "start":
        start(a.config)
    else:
        run(a.config, a.poll_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
