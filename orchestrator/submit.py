"""Submit a render to a remote Ray cluster through the Jobs API, stream its logs, follow detached runs."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import time
from pathlib import Path
from typing import Callable

from core.errors import ClusterError, ConfigError, RenderError

DASHBOARD_PORT = 8265
# Never uploaded: VCS data, environments, local work areas and rendered media (the upload limit is 100 MiB).
EXCLUDES = [".git", ".venv", "venv", "**/__pycache__", ".s2v-work", "*.mp4", "*.mov", "*.egg-info", ".pytest_cache",
            "bench/out"]
# Flags that make sense only on the submitting side; forwarding them would make the job submit itself again.
_LOCAL_ONLY = {"--cluster", "--address", "--detach"}
_JOBS_FILE = Path.home() / ".s2v" / "jobs.json"


class RemoteRunFailed(RenderError):
    """The remote driver exited non-zero; its exit code becomes ours."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def dashboard_address(cluster_or_address: str) -> str:
    """A cluster config path → http://HEAD:8265 (via the launcher); host[:port] or http(s)://… as given."""
    value = str(cluster_or_address)
    if value.endswith((".yaml", ".yml")) or Path(value).is_file():
        if not Path(value).is_file():
            raise ConfigError(f"no cluster config at {value}")
        from ray.autoscaler import sdk

        try:
            head = sdk.get_head_node_ip(value)
        except (Exception, SystemExit) as e:  # noqa: BLE001 — "head node not found" is a RuntimeError
            raise ClusterError(f"no running cluster for {value} (run `s2v cluster up {value}`): {e}") from e
        return f"http://{head}:{DASHBOARD_PORT}"
    if value.startswith(("http://", "https://")):
        return value.rstrip("/")
    if value.startswith("ray://"):
        raise ConfigError("the Jobs API needs the dashboard address (http://HEAD:8265), not ray://")
    return f"http://{value if ':' in value else f'{value}:{DASHBOARD_PORT}'}"


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ClusterError(f"cannot reach the Ray dashboard at {address}: {e}") from e


def _strip_local_flags(args: list[str]) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name in _LOCAL_ONLY:
            skip = "=" not in a and name != "--detach"
            continue
        out.append(a)
    return out


def _manifest_arg(manifest: str, working_dir: Path) -> str:
    """URIs pass through; a local manifest must travel inside the uploaded working dir."""
    if "://" in manifest:
        return manifest
    path = Path(manifest).resolve()
    try:
        return str(path.relative_to(working_dir.resolve()))
    except ValueError:
        raise ConfigError(f"manifest {manifest} is outside the working dir {working_dir}; "
                          "put it inside the project or upload it to s3:// / gs://") from None


def _remember(job_id: str, address: str) -> None:
    try:
        _JOBS_FILE.parent.mkdir(parents=True, exist_ok=True)
        data = json.loads(_JOBS_FILE.read_text()) if _JOBS_FILE.exists() else {}
        data[job_id] = {"address": address, "submitted": time.time()}
        _JOBS_FILE.write_text(json.dumps(data, indent=1))
    except (OSError, ValueError):
        pass  # remembering is a convenience for `s2v status JOB`; the job id is printed anyway


def _address_for(job_id: str) -> str | None:
    try:
        return json.loads(_JOBS_FILE.read_text()).get(job_id, {}).get("address")
    except (OSError, ValueError):
        return None


def known_job(job_id: str) -> bool:
    """Whether this machine submitted a job with this id (so `s2v status ID` can follow it)."""
    return _address_for(job_id) is not None


def submit_run(
    cluster_or_address: str,
    manifest: str,
    args: list[str],
    detach: bool,
    *,
    working_dir: str | Path | None = None,
    command: list[str] | None = None,
    env_vars: dict[str, str] | None = None,
    echo: Callable[[str], None] = print,
) -> str:
    """Submit `s2v render MANIFEST ARGS` as a Ray job; stream logs unless detached. Returns the job id.

    Raises RemoteRunFailed (exit code = the driver's) when a followed job fails.
    """
    address = dashboard_address(cluster_or_address)
    wd = Path(working_dir or Path.cwd())
    cmd = list(command or ["python", "-m", "orchestrator.cli", "render"])
    argv = cmd + [_manifest_arg(manifest, wd)] + _strip_local_flags(list(args))
    runtime_env = {
        "working_dir": str(wd),
        "excludes": EXCLUDES,
        # The driver joins the cluster it runs on instead of starting a private local Ray.
        "env_vars": {"S2V_ADDRESS": "auto", "S2V_PREEMPTION_SOURCES": "auto", **(env_vars or {})},
    }
    client = _client(address)
    try:
        job_id = client.submit_job(entrypoint=shlex.join(argv), runtime_env=runtime_env,
                                   metadata={"tool": "s2v-batch", "manifest": manifest})
    except Exception as e:  # noqa: BLE001 — upload or HTTP failures
        raise ClusterError(f"job submission to {address} failed: {e}") from e
    _remember(job_id, address)
    echo(f"submitted {job_id} to {address}")
    if detach:
        echo(f"detached; follow with: s2v status {job_id}")
        return job_id
    code = follow(job_id, address, echo=echo, client=client)
    if code != 0:
        raise RemoteRunFailed(f"remote run {job_id} failed (exit code {code})", code)
    return job_id


def follow(job_id: str, cluster_or_address: str | None = None, *, echo: Callable[[str], None] = print,
           client=None, poll_s: float = 1.0) -> int:
    """Stream a job's logs until it ends; returns its exit code (0 ok, the driver's code, 130 stopped).

    Ctrl-C stops following, not the job.
    """
    from ray.job_submission import JobStatus

    address = (dashboard_address(cluster_or_address) if cluster_or_address else
               _address_for(job_id) or os.environ.get("RAY_DASHBOARD_ADDRESS") or os.environ.get("RAY_ADDRESS"))
    if not address:
        raise ConfigError(f"no address known for job {job_id}; pass --address or --cluster")
    client = client or _client(address)

    async def stream() -> None:
        async for chunk in client.tail_job_logs(job_id):
            echo(chunk.rstrip("\n"))

    try:
        try:
            asyncio.run(stream())
        except Exception:  # noqa: BLE001 — log streaming is best effort (websocket through proxies); poll instead
            pass
        while True:
            info = client.get_job_info(job_id)
            if info.status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
                break
            time.sleep(poll_s)
    except KeyboardInterrupt:
        echo(f"stopped following; the job goes on: s2v status {job_id}")
        return 130
    if info.status == JobStatus.SUCCEEDED:
        return 0
    if info.status == JobStatus.STOPPED:
        return 130
    echo(f"job {job_id} failed: {info.message}")
    return int(info.driver_exit_code or 1)


def stop(job_id: str, cluster_or_address: str | None = None) -> bool:
    address = dashboard_address(cluster_or_address) if cluster_or_address else _address_for(job_id)
    if not address:
        raise ConfigError(f"no address known for job {job_id}; pass --address or --cluster")
    return bool(_client(address).stop_job(job_id))
