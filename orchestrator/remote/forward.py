"""What of the user's settings reaches a remote driver: non-secret S2V_* settings as job env vars, the GPU bound,
and secrets as 0600 files delivered through the launcher (never in the job's env, which Ray shows to anyone)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

SECRETS_ENV = "S2V_SECRETS_DIR"  # the remote CLI reads secrets from files here (pydantic-settings secrets_dir)
SECRETS_ROOT = "~/.s2v/secrets"  # on the head; one folder per run, removed once the driver has read it
# What every cluster driver gets: join the cluster it runs on. (Which spot notices its actors watch comes from the
# cluster config: infra.clusters.launch.run_settings_env.)
CLUSTER_ENV = {"S2V_ADDRESS": "auto"}


def _fields() -> dict:
    from core.settings import Settings

    return Settings.model_fields


def secret_fields() -> frozenset[str]:
    """Settings that are secrets: declared repr=False (kept out of logs) or typed SecretStr/SecretBytes."""
    from pydantic import SecretBytes, SecretStr

    out = set()
    for name, f in _fields().items():
        ann = str(f.annotation)
        if f.repr is False or SecretStr.__name__ in ann or SecretBytes.__name__ in ann:
            out.add(name)
    return frozenset(out)


def _field_of(env_name: str) -> str | None:
    """The Settings field an S2V_* variable sets (S2V_PRICES__H100_AWS__SPOT → prices), or None."""
    if not env_name.upper().startswith("S2V_"):
        return None
    top = env_name[4:].split("__", 1)[0].lower()
    return top if top in _fields() else None


def forwarded_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The user's S2V_* settings for the remote driver: only those remote/travel.py lets travel, never a secret."""
    sent, _ = sorted_env(environ)
    return {**sent, **CLUSTER_ENV}


def sorted_env(environ: dict[str, str] | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """(S2V_* variables that travel, {variable: why it stays}) of this environment; secrets are neither (files)."""
    from orchestrator.remote.travel import STAYS, TRAVELS

    environ = dict(os.environ if environ is None else environ)
    sent, kept, secret = {}, {}, secret_fields()
    for k, v in sorted(environ.items()):
        f = _field_of(k)
        if f is None or f in secret or k == SECRETS_ENV:
            continue
        if f in TRAVELS:
            sent[k] = v
        else:
            kept[k] = STAYS.get(f, "not a setting a cluster's driver takes")
    return sent, kept


def travel_note(environ: dict[str, str] | None = None) -> str | None:
    """One line for the run's log: which of this machine's S2V_* settings went along, and which stayed and why."""
    sent, kept = sorted_env(environ)
    if not sent and not kept:
        return None
    parts = [f"settings sent to the cluster's driver: {', '.join(sent) or 'none'}"]
    if kept:
        parts.append("kept on this machine: " + "; ".join(f"{k} ({why})" for k, why in kept.items()))
    return "; ".join(parts)


def secret_values(settings) -> dict[str, str]:
    """File name → content for every secret setting that is set (names as pydantic-settings looks them up)."""
    prefix = settings.model_config.get("env_prefix", "")
    out = {}
    for name in sorted(secret_fields()):
        value = getattr(settings, name, None)
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        out[f"{prefix}{name}".lower()] = value.decode() if isinstance(value, bytes) else str(value)
    return out


def secrets_dir(run_id: str) -> str:
    """The run's secrets folder on the head; the run id is checked, as it lands in shell commands there."""
    from orchestrator.intake.manifest import check_run_id

    return f"{SECRETS_ROOT}/{check_run_id(run_id)}"


def deliver_secrets(head, run_id: str, values: dict[str, str]) -> str:
    """Write the secrets to the head as files only the user can read, through the launcher (rsync over the
    config's SSH). Returns the remote folder (a `~/…` path the remote side expands)."""
    remote = secrets_dir(run_id)
    with tempfile.TemporaryDirectory(prefix="s2v-secrets-") as tmp:  # 0700
        local = Path(tmp) / run_id
        local.mkdir(mode=0o700)
        for name, value in values.items():
            fd = os.open(local / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(value)
        runner = head.runner()
        runner.run(f"mkdir -p {SECRETS_ROOT} && chmod 700 {SECRETS_ROOT} && rm -rf {remote}", with_output=True)
        runner.run_rsync_up(f"{local}/", f"{remote}/")
        runner.run(f"chmod 700 {remote} && chmod 600 {remote}/*", with_output=True)
    return remote


def remove_secrets(head, run_id: str) -> None:
    """Best effort: the driver removes them itself once read; this covers a run that never started."""
    try:
        head.runner().run(f"rm -rf {secrets_dir(run_id)}", with_output=True)
    except (Exception, SystemExit):  # noqa: BLE001 — the cluster may be gone already
        pass


def load_settings(**overrides):
    """Settings for a CLI command. With S2V_SECRETS_DIR set (a cluster driver), secrets are read from files
    there; a folder s2v delivered (under ~/.s2v/secrets/) is removed as soon as it has been read, so secrets
    rest on the head's disk only between submission and the driver's start."""
    from core.settings import Settings

    folder = os.environ.get(SECRETS_ENV)
    if not folder:
        return Settings(**overrides)
    path = Path(folder).expanduser()
    settings = Settings(_secrets_dir=path, **overrides)
    root = Path(SECRETS_ROOT).expanduser().resolve()
    if path.is_dir() and path.resolve().parent == root:
        shutil.rmtree(path, ignore_errors=True)
    return settings


def default_gpus(cfg: dict) -> int:
    """The most GPUs the config can launch (infra.clusters.config.gpu_capacity), at least one."""
    from infra.clusters.config import gpu_capacity

    return max(1, gpu_capacity(cfg))
