"""Submit a render to a cluster's Jobs API through the SSH tunnel, follow it, list and stop runs, remember them."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

from core.errors import ClusterError, ConfigError, Problem
from orchestrator.remote import forward, tunnel
from orchestrator.intake.manifest import check_run_id  # run ids also name secrets folders on the head and Ray jobs

COMMAND = ["python", "-m", "orchestrator.cli", "render"]  # the wheel installed on every node provides it
_JOBS_FILE = Path.home() / ".s2v" / "runs.json"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")

Echo = Callable[[str], None]
Confirm = Callable[[str], "bool | None"]  # None: nobody to ask (not a terminal)


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


# --- runs this machine submitted (so `s2v status RUN` and `s2v cluster stop RUN` need no config) -----------

@dataclass
class RemoteRun:
    job_id: str  # the Ray submission id: the run id, or run id + '.N' when the run is submitted again
    run_id: str
    config: str  # absolute path of the cluster config: the tunnel is opened from it each time
    work: str
    manifest: str
    submitted: float


def _runs() -> dict[str, dict]:
    try:
        return json.loads(_JOBS_FILE.read_text())
    except (OSError, ValueError):
        return {}


def remember(run: RemoteRun) -> None:
    try:
        _JOBS_FILE.parent.mkdir(parents=True, exist_ok=True)
        data = _runs()
        data[run.job_id] = asdict(run)
        fd, tmp = tempfile.mkstemp(dir=_JOBS_FILE.parent, prefix=".runs-")
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1)
        os.replace(tmp, _JOBS_FILE)
    except OSError:
        pass  # a convenience: the run id and the config are printed anyway


def recall(name: str) -> RemoteRun | None:
    """The latest submission with this job id or run id."""
    found = [RemoteRun(**v) for v in _runs().values() if name in (v.get("job_id"), v.get("run_id"))]
    return max(found, key=lambda r: r.submitted) if found else None


def resolve(name: str, config: str | None) -> tuple[str, str]:
    """(job id, config) for a run named on the command line."""
    check_run_id(name)  # it goes into Jobs API paths and, for secrets, a path on the head
    run = recall(name)
    if config:
        return (run.job_id if run and Path(run.config) == Path(config).resolve() else name), config
    if run is None:
        raise ConfigError(f"this machine has not submitted a run named {name}; pass the cluster config with -c")
    return run.job_id, run.config


def _check_cpu_tasks_fit(cfg: dict, config: str, settings) -> None:
    """A CPU task may run only where the CPU-work marker is (the head): one asking for more CPUs than that node has
    would wait forever, and the run with it."""
    from infra.clusters.config import cpu_work_cpus

    room = cpu_work_cpus(cfg)
    for name in ("stitch_cpus", "asr_cpus"):
        want = float(getattr(settings, name))
        if room and want > room:
            raise ConfigError(f"{name} = {want:g} but the nodes of {config} that take a run's CPU work (the head) "
                              f"have {room:g} CPUs: such a task could never start; set S2V_{name.upper()} to at "
                              f"most {room:g}, or give the head type a larger instance")


def _with_work(cfg: dict, work_uri) -> dict:
    """The config as this run uses it: the work area given on the command line is the run's, and its bucket is
    covered like the config's own (the staged inputs go there)."""
    meta = dict((cfg.get("metadata") or {}).get("s2v") or {})
    outputs = list(meta.get("output_buckets") or [])
    if work_uri.bucket:
        outputs.append(work_uri.bucket)
    return {**cfg, "metadata": {**(cfg.get("metadata") or {}), "s2v": {**meta, "output_buckets": outputs}}}


# --- the Jobs API, through the tunnel -------------------------------------------------------------------

@contextmanager
def jobs_api(config: str, head: tunnel.Head | None = None) -> Iterator:
    """A JobSubmissionClient talking to the head through an SSH tunnel that lives as long as the block."""
    from ray.job_submission import JobSubmissionClient

    logging.getLogger("ray.dashboard.modules.job.sdk").setLevel(logging.WARNING)  # "WebSocket closed …" at INFO
    head = head or tunnel.find_head(config)
    with tunnel.jobs_tunnel(head) as url:
        try:
            yield JobSubmissionClient(url)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ClusterError(f"the Jobs API of {config} failed: {e}") from e


def _free_job_id(client, run_id: str) -> str:
    """The run id, unless a job of that name already ran (a resubmitted run resumes: run id + '.N')."""
    taken = {j.submission_id: str(j.status) for j in client.list_jobs()}
    if run_id in taken and not taken[run_id].endswith(TERMINAL):
        raise ConfigError(f"run {run_id} is still running on this cluster; follow it with "
                          f"`s2v cluster logs {run_id} --follow` or choose another --run-id")
    n, job_id = 1, run_id
    while job_id in taken:
        n += 1
        job_id = f"{run_id}.{n}"
    return job_id


def submit_run(config: str, manifest: str, settings, *, work: str | None = None, run_id: str | None = None,
               gpus: int | None = None, budget: float | None = None, force: bool = False, detach: bool = False,
               cli_defaults: dict | None = None, command: list[str] | None = None, echo: Echo = print,
               confirm: Confirm | None = None, on_problems: Callable[[list[Problem]], None] | None = None,
               gate: Callable | None = None) -> int:
    """Stage the manifest and submit `s2v render` for it on the cluster; follow it unless detached. gate: job →
    None to submit it, or why it waits (`--approved-only`: only approved rows are staged and rendered).

    Returns the exit code: the driver's when followed, 2 when rows were left out, 130 when interrupted."""
    from infra.clusters.launch import run_settings_env, shaped_config
    from orchestrator.remote import stage

    run_id = check_run_id(run_id) if run_id else new_run_id()
    config = str(Path(config).resolve())
    if not Path(config).is_file():
        raise ConfigError(f"no cluster config at {config}; create one with `s2v cluster init`")
    # everything that can be refused here is refused before the cluster is touched or anything uploaded
    cfg = shaped_config(Path(config))
    _check_cpu_tasks_fit(cfg, config, settings)
    work_uri = stage.work_area(work, cfg, config, os.environ.get("S2V_WORK"))
    jobs, problems = stage.validate(manifest, settings, cli_defaults, cluster=(_with_work(cfg, work_uri), config))
    if problems and on_problems:
        on_problems(problems)
    if gate:
        waiting = {j.id: why for j in jobs if (why := gate(j))}
        for jid, why in waiting.items():
            echo(f"{jid}: {why}")
        jobs = [j for j in jobs if j.id not in waiting]
        if not jobs:
            echo("nothing approved to render: no run submitted")
            return 2 if problems else 0
    head = tunnel.find_head(config)
    staged = stage.stage(jobs, manifest, work_uri, settings, echo)
    gpus = gpus or forward.default_gpus(head.config)
    budget = budget if budget is not None else settings.budget_usd
    argv = [*(command or COMMAND), str(staged.manifest), "--work", str(work_uri), "--run-id", run_id,
            "--gpus", str(gpus), *(["--budget", str(budget)] if budget is not None else []),
            *(["--force"] if force else []), "--no-progress"]
    # what the cluster's config says every run there needs (its weights, its node prices with metadata.s2v.prices
    # laid over the table), then the user's own S2V_* settings over that
    env = {**run_settings_env(head.config), **forward.forwarded_env()}
    if note := forward.travel_note():
        echo(note)
    secrets = forward.secret_values(settings)
    if secrets:
        env[forward.SECRETS_ENV] = forward.secrets_dir(run_id)  # the folder's path only, never a value
    delivered = submitted = ended = False
    try:
        with jobs_api(config, head) as client:
            job_id = _free_job_id(client, run_id)
            if secrets:
                try:
                    forward.deliver_secrets(head, run_id, secrets)
                except (Exception, SystemExit) as e:  # noqa: BLE001 — rsync/ssh errors come as click/process errors
                    from infra.clusters.hostkeys import changed_hint

                    hint = changed_hint(str(e), config)
                    raise ClusterError(f"cannot deliver the run's secrets to the head of {config}: {e}"
                                       + (f"; {hint}" if hint else "")) from e
                delivered = True
            try:
                client.submit_job(entrypoint=shlex.join(argv), submission_id=job_id, runtime_env={"env_vars": env},
                                  metadata={"tool": "s2v-batch", "run_id": run_id, "manifest": manifest})
            except Exception as e:  # noqa: BLE001 — HTTP failures
                raise ClusterError(f"job submission to {config} failed: {e}") from e
            submitted = True
            remember(RemoteRun(job_id, run_id, config, str(work_uri), manifest, time.time()))
            echo(f"submitted run {run_id} ({staged.jobs} job(s)) to {config} as job {job_id}; work area {work_uri}")
            if detach:
                echo(f"detached. Status: s2v status {run_id}   logs: s2v cluster logs {job_id} --follow   "
                     f"stop: s2v cluster stop {job_id}")
                return 2 if problems else 0
            code = follow(client, job_id, config, echo=echo, confirm=confirm)
            ended = str(_status(client, job_id).status).endswith(TERMINAL)
    finally:
        # A run that goes on (detached, or Ctrl-C answered "no") keeps them until its driver has read them.
        if delivered and (ended or not submitted):
            forward.remove_secrets(head, run_id)
    return 2 if problems and code in (0, 1) else code


def _status(client, job_id: str):
    return client.get_job_info(job_id)


def follow(client, job_id: str, config: str, *, echo: Echo = print, confirm: Confirm | None = None,
           poll_s: float = 1.0) -> int:
    """Stream a job's logs until it ends; returns 0 (succeeded), the driver's exit code, or 130 (stopped or
    interrupted). Ctrl-C asks whether to stop the remote run; with nobody to ask, the run goes on."""
    seen = 0

    async def stream() -> None:
        nonlocal seen
        async for chunk in client.tail_job_logs(job_id):
            seen += len(chunk)
            echo(chunk.rstrip("\n"))

    try:
        try:
            asyncio.run(stream())
        except KeyboardInterrupt:
            raise
        except Exception:  # noqa: BLE001 — the websocket can fail behind proxies: poll, then print the rest
            pass
        info = _status(client, job_id)
        while not str(info.status).endswith(TERMINAL):
            time.sleep(poll_s)
            info = _status(client, job_id)
        rest = client.get_job_logs(job_id)[seen:]
        if rest.strip():
            echo(rest.rstrip("\n"))
    except KeyboardInterrupt:
        return _interrupted(client, job_id, config, echo, confirm)
    status = str(info.status).rsplit(".", 1)[-1]
    if status == "SUCCEEDED":
        return 0
    if status == "STOPPED":
        echo(f"run {job_id} was stopped")
        return 130
    echo(f"run {job_id} failed: {info.message}")
    return int(info.driver_exit_code or 1)


def _interrupted(client, job_id: str, config: str, echo: Echo, confirm: Confirm | None) -> int:
    answer = None
    if confirm is not None:
        answer = confirm(f"Stop the remote run {job_id}? (its checkpoints stay; submitting again resumes it)")
    if answer:
        stop_job(client, job_id)
        echo(f"stopped run {job_id}")
        return 130
    echo(f"the run goes on on the cluster. Follow it: s2v cluster logs {job_id} --follow -c {config}   "
         f"stop it: s2v cluster stop {job_id} -c {config}")
    return 130


def stop_job(client, job_id: str, wait_s: float = 60.0) -> str:
    """Ask Ray to stop the job and wait until it has; returns its final status."""
    client.stop_job(job_id)
    deadline = time.monotonic() + wait_s
    status = str(_status(client, job_id).status)
    while not status.endswith(TERMINAL) and time.monotonic() < deadline:
        time.sleep(0.5)
        status = str(_status(client, job_id).status)
    return status.rsplit(".", 1)[-1]


def stop(name: str, config: str | None = None, echo: Echo = print) -> str:
    """`s2v cluster stop RUN`: stop the run's driver (its checkpoints stay) and remove its secrets."""
    job_id, config = resolve(name, config)
    head = tunnel.find_head(config)
    with jobs_api(config, head) as client:
        status = stop_job(client, job_id)
    run = recall(job_id)
    forward.remove_secrets(head, run.run_id if run else job_id)
    echo(f"run {job_id}: {status}")
    return status


def list_jobs(config: str) -> list[dict]:
    """Every job on the cluster, oldest first (s2v runs and others)."""
    with jobs_api(config) as client:
        jobs = client.list_jobs()
    rows = [{"job": j.submission_id or j.job_id, "status": str(j.status).rsplit(".", 1)[-1],
             "run": (j.metadata or {}).get("run_id", ""), "manifest": (j.metadata or {}).get("manifest", ""),
             "start": (j.start_time or 0) / 1000, "end": (j.end_time or 0) / 1000} for j in jobs]
    return sorted(rows, key=lambda r: r["start"])


def logs(name: str, config: str | None = None, *, follow_: bool = False, echo: Echo = print,
         confirm: Confirm | None = None) -> int:
    job_id, config = resolve(name, config)
    with jobs_api(config) as client:
        if follow_:
            return follow(client, job_id, config, echo=echo, confirm=confirm)
        try:
            echo(client.get_job_logs(job_id).rstrip("\n"))
        except RuntimeError as e:
            raise ClusterError(f"no job {job_id} on {config}: {e}") from e
    return 0


def job_status(name: str) -> tuple[RemoteRun, str] | None:
    """For `s2v status RUN`: a run this machine submitted and its job's status on the cluster (or why it is
    unknown); None for runs it did not submit."""
    run = recall(name)
    if run is None:
        return None
    try:
        with jobs_api(run.config) as client:
            info = _status(client, run.job_id)
        text = str(info.status).rsplit(".", 1)[-1] + (f" ({info.message})" if info.message else "")
    except (ClusterError, ConfigError, RuntimeError) as e:
        text = f"unknown: {e}"
    return run, text
