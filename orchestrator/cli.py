"""The `s2v` command: validate, plan, render, status (+ models, cluster). Builds Settings once; maps errors to exit codes."""

from __future__ import annotations

import importlib
import json
import sys
from typing import List, Optional

import click
import typer

from core.errors import InputError, S2VError, exit_code_for

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Batch speech-to-video: manifest → plan → render on Ray → stitch → publish.")

DefaultsOpt = typer.Option(None, "--defaults", help="YAML file of default field values (for CSV manifests).")
SetOpt = typer.Option(None, "--set", help="Default for a field, FIELD=VALUE (repeatable); rows still win.")


def _console():
    from orchestrator.report import console

    return console


def _settings(**overrides):
    from core.settings import Settings

    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def _defaults(defaults_file, pairs):
    from orchestrator.manifest import parse_defaults

    return parse_defaults(list(pairs or []), defaults_file)


def _check(manifest, settings, deep: bool):
    """Every problem with a manifest: fields, then inputs/outputs reachable, then media (deep)."""
    from orchestrator.planner import plan_jobs

    problems = list(manifest.problems)
    jobs = list(manifest.jobs)
    if jobs:
        from infra.storage.checks import check_inputs

        bad = check_inputs(jobs, settings)
        problems += bad
        jobs = [j for j in jobs if j.source not in {p.where for p in bad}]
    plans = ()
    if deep and jobs:
        res = plan_jobs(jobs, settings)
        problems += list(res.problems)
        plans = res.plans
    return problems, plans


@app.command()
def validate(manifest: str = typer.Argument(..., help="Manifest path or URI (.yaml/.yml/.csv)."),
             defaults: Optional[str] = DefaultsOpt, set_: Optional[List[str]] = SetOpt,
             deep: bool = typer.Option(True, help="Also decode every input (audio, image) to catch bad media.")) -> int:
    """Report every problem in a manifest at once (exit 2 if any)."""
    from orchestrator.manifest import load_manifest
    from orchestrator.report import problems_table

    settings = _settings()
    m = load_manifest(manifest, _defaults(defaults, set_), settings)
    problems, _ = _check(m, settings, deep)
    con = _console()
    if problems:
        con.print(problems_table(problems, f"{len(problems)} problem(s) in {manifest}"))
        return 2
    con.print(f"[green]✓ {manifest}: {len(m.jobs)} job(s), no problems")
    return 0


@app.command()
def plan(manifest: str = typer.Argument(...), defaults: Optional[str] = DefaultsOpt, set_: Optional[List[str]] = SetOpt,
         price: Optional[float] = typer.Option(None, help="USD per GPU-hour (overrides the price table)."),
         gpu_type: Optional[str] = typer.Option(None, help="Key of the price table in settings."),
         spot: Optional[bool] = typer.Option(None, help="Use spot prices."),
         as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON on stdout.")) -> int:
    """Scenes, clips, frames, GPU-seconds and cost per job and in total — without rendering."""
    from orchestrator.manifest import load_manifest
    from orchestrator.planner import estimate
    from orchestrator.report import plan_table, problems_table

    settings = _settings(price_per_gpu_hour=price, gpu_type=gpu_type, spot=spot)
    m = load_manifest(manifest, _defaults(defaults, set_), settings)
    problems, plans = _check(m, settings, deep=True)
    est = estimate(plans, settings)
    if as_json:
        typer.echo(json.dumps(est, indent=1))
    else:
        _console().print(plan_table(est))
    if problems:
        _console().print(problems_table(problems, f"{len(problems)} problem(s): these jobs are not in the plan"))
        return 2
    return 0


@app.command()
def render(manifest: str = typer.Argument(...), defaults: Optional[str] = DefaultsOpt, set_: Optional[List[str]] = SetOpt,
           gpus: Optional[int] = typer.Option(None, help="Embedded local Ray: its logical GPUs (default 1). "
                                              "With --address/--cluster: the most GPUs to ask the autoscaler for."),
           address: Optional[str] = typer.Option(None, help="Join an existing Ray cluster (e.g. 127.0.0.1:6379)."),
           cluster: Optional[str] = typer.Option(None, help="Submit the run to a cluster launched from this config."),
           detach: bool = typer.Option(False, help="With --cluster: submit and return; follow with `s2v status`."),
           work: Optional[str] = typer.Option(None, help="Work area URI for checkpoints and run state."),
           force: bool = typer.Option(False, help="Re-render jobs even if published or checkpointed."),
           budget: Optional[float] = typer.Option(None, help="Stop starting new chains past this many USD."),
           progress: bool = typer.Option(True, help="Show progress bars."),
           run_id: Optional[str] = typer.Option(None, help="Name of this run (default: a timestamp).")) -> int:
    """Render every job of a manifest; exit 0 all published, 1 some failed, 2 bad input."""
    from orchestrator.report import RichProgress, results_table, write_reports
    from orchestrator.runner import render as run_render

    if cluster:
        from orchestrator import submit

        fwd = [*(["--defaults", defaults] if defaults else []), *[a for kv in (set_ or []) for a in ("--set", kv)],
               *(["--work", work] if work else []), *(["--force"] if force else []),
               *(["--budget", str(budget)] if budget is not None else []), *(["--run-id", run_id] if run_id else []),
               "--no-progress"]
        try:
            submit.submit_run(cluster, manifest, fwd, detach)
        except submit.RemoteRunFailed as e:
            return e.exit_code
        return 0
    settings = _settings(gpus=gpus, address=address, work=work, budget_usd=budget)
    result = run_render(manifest, settings, force=force, cli_defaults=_defaults(defaults, set_),
                        progress=RichProgress(progress and sys.stderr.isatty()), run_id=run_id)
    con = _console()
    if result.problems:
        from orchestrator.report import problems_table

        con.print(problems_table(result.problems, f"{len(result.problems)} input problem(s)"))
    con.print(results_table(result.jobs))
    for path in write_reports(result, settings):
        con.print(f"report: {path}")
    return result.exit_code


@app.command()
def status(run: Optional[str] = typer.Argument(None, help="Run id (default: the latest)."),
           work: Optional[str] = typer.Option(None, help="Work area URI the run used."),
           as_json: bool = typer.Option(False, "--json")) -> int:
    """Show a run's state from the work area (works after the driver died, from any machine)."""
    from orchestrator.checkpoints import WorkArea
    from orchestrator.report import results_table

    settings = _settings(work=work)
    state = WorkArea.at(settings.work, settings).read_state(run)
    if state is None and run:
        from orchestrator import submit

        if submit.known_job(run):  # a run submitted to a cluster with --detach: follow its driver's log
            return submit.follow(run)
    if state is None:
        raise InputError(f"no run {'named ' + run if run else 'recorded'} in work area {settings.work}",)
    if state["status"] == "running" and _driver_gone(state):
        state["status"] = "interrupted (its driver is gone: rerun the same command to resume)"
    if as_json:
        typer.echo(json.dumps(state, indent=1))
    else:
        con = _console()
        con.print(f"run {state['run_id']} ({state['status']}), manifest {state['manifest']}")
        con.print(results_table(state["jobs"]))
    return 0


def _driver_gone(state: dict) -> bool:
    """True only when the driver ran on this host and its process no longer exists."""
    import os
    import socket

    if state.get("host") != socket.gethostname() or not state.get("pid"):
        return False
    try:
        os.kill(int(state["pid"]), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


# sub-command groups in their own modules (each imports its heavy libraries inside its commands)
for _name, _mod in (("models", "orchestrator.cli_models"), ("cluster", "orchestrator.cli_cluster")):
    app.add_typer(importlib.import_module(_mod).app, name=_name)


def main(argv: list[str] | None = None) -> None:
    """Entry point: the one place where outcomes become exit codes."""
    try:
        rv = app(args=argv, standalone_mode=False)
        code = int(rv or 0) if isinstance(rv, int) else 0
    except click.exceptions.Exit as e:
        code = e.exit_code
    except click.exceptions.Abort:
        code = 130
    except click.ClickException as e:
        e.show()
        code = 2
    except S2VError as e:
        _console().print(f"[red]error:[/] {e}")
        code = exit_code_for(e)
    except KeyboardInterrupt:
        _console().print("[yellow]interrupted: rerun the same command to resume")
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
