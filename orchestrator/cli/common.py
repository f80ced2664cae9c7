"""What every `s2v` command shares: the options for manifest defaults, the one Settings builder, asking the person
at the terminal, and the cluster commands' config argument and error handling."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click
import typer

from core.errors import S2VError, exit_code_for

DefaultsOpt = typer.Option(None, "--defaults", help="YAML file of default field values (for CSV manifests).")
SetOpt = typer.Option(None, "--set", help="Default for a field, FIELD=VALUE (repeatable); rows still win.")
CONFIG_ARG = typer.Argument(Path("cluster.yaml"), help="Cluster config (see `s2v cluster init`).")


def settings(**overrides):
    """The one Settings object of a command: S2V_* variables, flags over them (None = not given). On a cluster's
    driver, secrets come from the files S2V_SECRETS_DIR names."""
    from orchestrator.remote.forward import load_settings

    return load_settings(**{k: v for k, v in overrides.items() if v is not None})


def defaults(defaults_file, pairs, settings):
    """--defaults FILE and --set FIELD=VALUE as one mapping (--set wins), read with the command's settings."""
    from orchestrator.intake.manifest import parse_defaults

    return parse_defaults(list(pairs or []), defaults_file, settings)


def console():
    from orchestrator.cli.console import console as con

    return con


def styled(*parts):
    from orchestrator.cli.console import styled as st

    return st(*parts)


def ask(question: str):
    """A yes/no answer from the person at the terminal; None when there is nobody to ask."""
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return None
    try:
        return typer.confirm(question, default=False, err=True)
    except (KeyboardInterrupt, click.exceptions.Abort, typer.Abort):
        return False


def errors_to_exit(fn):
    """A cluster command: run with the launcher's temp folder private to this user (infra/clusters/private_tmp.py:
    Ray trusts a config cache there), and its S2VError as `error: …` with its family's exit code (the command
    group runs without `s2v`'s own handler around it when invoked through its Typer app)."""
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        from infra.clusters.private_tmp import launcher_tmp

        try:
            with launcher_tmp():
                return fn(*a, **kw)
        except S2VError as e:
            typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
            raise typer.Exit(exit_code_for(e)) from e

    return wrapper


def project_root(given: Path | None = None) -> Path:
    """The checkout whose code the nodes run: --project, else the one this `s2v` runs from, else the cwd."""
    if given is not None:
        return given
    here = Path(__file__).resolve().parents[2]
    return here if (here / "pyproject.toml").is_file() else Path.cwd()


def checked(config: Path) -> dict:
    """Load + validate (Ray's schema and ours, placeholders refused) before any cloud call is made."""
    from infra.clusters.launch import checked_config

    return checked_config(config)
