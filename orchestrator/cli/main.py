"""The `s2v` command: validate, plan, render, status, gc, review, package (+ models, cluster). Builds Settings once; maps
errors to exit codes."""

from __future__ import annotations

import importlib
import json
import sys
from typing import List, Optional

import click
import typer
from pydantic import ValidationError

from core.errors import InputError, S2VError, exit_code_for

from orchestrator.cli.common import DefaultsOpt, SetOpt, ask, console, defaults as _defaults, settings as _settings
from orchestrator.cli.common import styled as _styled

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Batch speech-to-video: manifest → plan → render on Ray → stitch → publish.")


def _check(location: str, settings, cli_defaults, deep: bool):
    """Every problem with a manifest: fields, then inputs/outputs reachable, then media (deep). Returns the
    admission, every problem, and the plans (deep only)."""
    from orchestrator.intake.admission import admit
    from orchestrator.plan.planner import plan_jobs

    adm = admit(location, settings, cli_defaults)
    problems, plans = list(adm.problems), ()
    if deep and adm.jobs:
        res = plan_jobs(adm.jobs, settings)
        problems += list(res.problems)
        plans = res.plans
    return adm, problems, plans


@app.command()
def validate(manifest: str = typer.Argument(..., help="Manifest path or URI (.yaml/.yml/.csv)."),
             defaults: Optional[str] = DefaultsOpt, set_: Optional[List[str]] = SetOpt,
             deep: bool = typer.Option(True, help="Also decode every input (audio, image) to catch bad media."),
             as_json: bool = typer.Option(False, "--json", help="Print the findings as JSON on stdout.")) -> int:
    """Report every problem in a manifest at once, on stdout (exit 2 if any). Creates nothing."""
    from orchestrator.cli.console import make_console, print_problems, problems_json, styled

    settings = _settings()
    adm, problems, _ = _check(manifest, settings, _defaults(defaults, set_, settings), deep)
    ids = adm.ids_by_source()
    failing = {p.where for p in problems}
    valid = sum(1 for j in adm.jobs if j.where not in failing)
    rows = adm.rows
    if as_json:
        typer.echo(json.dumps({"manifest": manifest, "ok": not problems, "rows": rows, "valid": valid,
                               "problems": problems_json(problems, ids)}, indent=1))
        return 2 if problems else 0
    out = make_console()  # stdout: the findings are this command's output
    if not problems:
        out.print(styled(("✓ ", "green"), (manifest, "green"), (f": {valid} job(s), no problems", "green")),
                  soft_wrap=True)
        return 0
    print_problems(problems, f"{len(problems)} problem(s) in {manifest}", ids, base=manifest, con=out)
    out.print(styled(f"{valid} of {rows} job(s) valid; the others are not rendered"), soft_wrap=True)
    return 2


@app.command()
def plan(manifest: str = typer.Argument(...), defaults: Optional[str] = DefaultsOpt, set_: Optional[List[str]] = SetOpt,
         price: Optional[float] = typer.Option(None, help="USD per GPU-hour (overrides the price table)."),
         gpu_type: Optional[str] = typer.Option(None, help="Key of the price table in settings."),
         spot: Optional[bool] = typer.Option(None, help="Use spot prices."),
         work: Optional[str] = typer.Option(None, help="Work area whose measured clip times the estimate uses."),
         as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON on stdout.")) -> int:
    """Scenes, clips, frames, GPU-seconds and cost per job and in total — without rendering."""
    from orchestrator.cli.console import plan_table, print_problems
    from orchestrator.plan.estimates import estimate

    settings = _settings(price_per_gpu_hour=price, gpu_type=gpu_type, spot=spot, work=work)
    adm, problems, plans = _check(manifest, settings, _defaults(defaults, set_, settings), deep=True)
    est = estimate(plans, settings)
    if as_json:
        typer.echo(json.dumps(est, indent=1))
    else:
        console().print(plan_table(est))
    if problems:
        print_problems(problems, f"{len(problems)} problem(s): these jobs are not in the plan", adm.ids_by_source(),
                       base=manifest)
        return 2
    return 0


@app.command()
def render(manifest: str = typer.Argument(...), defaults: Optional[str] = DefaultsOpt, set_: Optional[List[str]] = SetOpt,
           gpus: Optional[int] = typer.Option(None, help="Embedded local Ray: its logical GPUs (default 1). With "
                                              "--address/--cluster: the most GPUs to ask the autoscaler for "
                                              "(--cluster default: all the config can launch)."),
           address: Optional[str] = typer.Option(None, help="Join an existing Ray cluster (e.g. 127.0.0.1:6379)."),
           cluster: Optional[str] = typer.Option(None, help="Submit the run to a cluster launched from this config."),
           detach: bool = typer.Option(False, help="With --cluster: submit and return (`s2v status RUN`, "
                                       "`s2v cluster logs RUN --follow`)."),
           work: Optional[str] = typer.Option(None, help="Work area URI for checkpoints and run state (with "
                                              "--cluster: s3:// or gs://; default: the config's metadata.s2v.work)."),
           force: bool = typer.Option(False, help="Re-render jobs even if published or checkpointed."),
           budget: Optional[float] = typer.Option(None, help="Stop starting new chains past this many USD."),
           progress: bool = typer.Option(True, help="Show progress bars."),
           run_id: Optional[str] = typer.Option(None, help="Name of this run (default: a timestamp)."),
           approved_only: bool = typer.Option(False, "--approved-only", help="Render only rows whose current "
                                              "content is approved (`s2v review`); the others are reported as "
                                              "awaiting review."),
           review_file: Optional[str] = typer.Option(None, help="Review decisions (default: beside the manifest, "
                                                     "<name>.review.jsonl).")) -> int:
    """Render every job of a manifest; exit 0 all published (or awaiting review), 1 some failed, 2 bad input."""
    from orchestrator.cli.console import RichProgress, print_problems, results_table, styled
    from orchestrator.intake.manifest import check_run_id
    from orchestrator.run.report import write_reports
    from orchestrator.run.runner import render as run_render

    if run_id is not None:
        check_run_id(run_id)  # it names a folder of the work area: never '../../somewhere'
    gate = _review_gate(manifest, review_file) if approved_only else None
    if cluster:
        return _render_on_cluster(cluster, manifest, defaults, set_, gpus=gpus, address=address, detach=detach,
                                  work=work, force=force, budget=budget, run_id=run_id, gate=gate)
    settings = _settings(gpus=gpus, address=address, work=work, budget_usd=budget)
    result = run_render(manifest, settings, force=force, cli_defaults=_defaults(defaults, set_, settings),
                        progress=RichProgress(progress and sys.stderr.isatty()), run_id=run_id,
                        gate=gate and gate(settings))
    con = console()
    if result.problems:
        print_problems(result.problems, f"{len(result.problems)} input problem(s)", result.ids_by_source(),
                       base=manifest)
    con.print(results_table(result.jobs))
    reports = write_reports(result, settings)
    for path in reports.written:
        con.print(styled("report: ", path), soft_wrap=True)
    for failure in reports.failed:
        con.print(styled(("could not write report to ", "yellow"), (failure, "yellow")), soft_wrap=True)
    return result.exit_code


def _review_gate(manifest: str, review_file: str | None):
    """settings → the `--approved-only` gate over the manifest's review file (read once, when the run starts)."""
    from orchestrator.review.store import ReviewFile, gate, review_file_for

    path = review_file_for(manifest, review_file)
    return lambda settings: gate(ReviewFile(path), settings)


def _render_on_cluster(cluster, manifest, defaults, set_, *, gpus, address, detach, work, force, budget,
                       run_id, gate=None) -> int:
    """Stage the manifest to the cluster's work area and submit it through the SSH tunnel (orchestrator/remote/)."""
    from core.errors import ConfigError
    from orchestrator.cli.console import print_problems
    from orchestrator.remote import submit

    if address:
        raise ConfigError("--address and --cluster exclude each other: --cluster submits to a cluster launched "
                          "from a config, --address joins a Ray cluster this machine can reach")

    def show_problems(problems):
        print_problems(problems, f"{len(problems)} problem(s): these rows were not submitted", base=manifest)

    settings = _settings()
    return submit.submit_run(cluster, manifest, settings, work=work, run_id=run_id, gpus=gpus, budget=budget,
                             force=force, detach=detach, cli_defaults=_defaults(defaults, set_, settings),
                             echo=typer.echo, confirm=ask, on_problems=show_problems,
                             gate=gate and gate(settings))


@app.command()
def status(run: Optional[str] = typer.Argument(None, help="Run id (default: the latest)."),
           work: Optional[str] = typer.Option(None, help="Work area URI the run used."),
           as_json: bool = typer.Option(False, "--json")) -> int:
    """Show a run's state from the work area (works after the driver died, from any machine)."""
    from orchestrator.cli.console import results_table, styled
    from orchestrator.intake.manifest import check_run_id
    from orchestrator.workarea.layout import WorkArea

    if run is not None:
        check_run_id(run)
    remote = None
    if run and work is None:
        from orchestrator.remote import submit

        remote = submit.job_status(run)  # a run this machine submitted to a cluster: its config and work area
        if remote:
            work = remote[0].work
            console().print(f"run {remote[0].run_id} on {remote[0].config}: job {remote[0].job_id} {remote[1]}",
                             markup=False)
    settings = _settings(work=work)
    state = WorkArea.at(settings.work, settings).read_state(remote[0].run_id if remote else run)
    if state is None and remote:
        console().print(f"the run has written no state to {work} yet; its log: "
                         f"s2v cluster logs {remote[0].job_id} --follow", markup=False)
        return 0
    if state is None:
        raise InputError(f"no run {'named ' + run if run else 'recorded'} in work area {settings.work}",)
    if state["status"] == "running" and _driver_gone(state):
        state["status"] = "interrupted (its driver is gone: rerun the same command to resume)"
    if as_json:
        typer.echo(json.dumps(state, indent=1))
    else:
        con = console()
        con.print(styled("run ", (state["run_id"], "bold"), f" ({state['status']}), manifest ", state["manifest"]))
        con.print(results_table(state["jobs"]))
    return 0


@app.command("gc")
def gc_command(work: Optional[str] = typer.Option(None, help="Work area URI (default: settings.work)."),
               days: float = typer.Option(7.0, min=0, help="Remove runs older than this and jobs' checkpoints "
                                          "untouched this long."),
               temp_hours: float = typer.Option(1.0, min=0, help="Remove temp objects older than this."),
               temps_in: Optional[List[str]] = typer.Option(None, "--temps-in", help="Also remove stale temp "
                                                            "objects under this output location (repeatable)."),
               cache: bool = typer.Option(False, "--cache", help="Also prune this machine's input cache."),
               yes: bool = typer.Option(False, "--yes", help="Remove; without it, only list what would go."),
               adopt: bool = typer.Option(False, "--adopt", help="Mark a work area from before s2v marked them "
                                          "(its layout is checked first)."),
               as_json: bool = typer.Option(False, "--json")) -> int:
    """Clean a work area: old runs, abandoned jobs, superseded tails, stale temps. A dry run unless --yes. Only a
    folder s2v marked as a work area, and in it only what s2v wrote."""
    from orchestrator.workarea import gc
    from orchestrator.workarea.layout import WorkArea

    settings = _settings(work=work)
    if adopt:
        gc.adopt(WorkArea.at(settings.work, settings))
        typer.echo(f"marked {settings.work} as an s2v work area")
    plan = gc.collect(WorkArea.at(settings.work, settings), days=days, temp_hours=temp_hours,
                      temps_in=tuple(temps_in or ()), cache=cache, settings=settings)
    freed = gc.apply(plan, settings) if yes else None
    if as_json:
        typer.echo(json.dumps({**plan.summary(), "removed_bytes": freed, "dry_run": not yes}, indent=1))
        return 0
    for f in plan.findings:  # plain echo: URIs and ids are user data, never markup
        typer.echo(f"{'kept' if f.what in plan.kept else 'remove' if yes else 'would remove'} {f.kind:5s} "
                   f"{f.what}  {len(f.objects)} object(s), {_size(f.bytes)}, {f.age_s / 3600:.1f} h old: {f.why}")
    if plan.live_runs:
        typer.echo(f"running (left alone): {', '.join(plan.live_runs)}")
    if yes:
        typer.echo(f"removed {_size(freed or 0)} from {settings.work}")
    else:
        typer.echo(f"dry run: {_size(plan.bytes)} in {len(plan.findings)} item(s) would go from {settings.work}; "
                   "rerun with --yes to remove")
    return 0


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _driver_gone(state: dict) -> bool:
    """True only when the driver ran on this host and its process no longer exists."""
    from orchestrator.workarea.gc import driver_alive

    return driver_alive(state) is False


# sub-command groups in their own modules (each imports its heavy libraries inside its commands)
for _name, _mod in (("models", "orchestrator.cli.models"), ("cluster", "orchestrator.cli.cluster")):
    app.add_typer(importlib.import_module(_mod).app, name=_name)
app.command("review")(importlib.import_module("orchestrator.cli.review").review)
app.command("package")(importlib.import_module("orchestrator.cli.package").package)


def _settings_error(e: ValidationError) -> str:
    """Each bad setting with its variable and the reason, never the value (a webhook URL may carry a token)."""
    lines = [f"  {'.'.join(map(str, err['loc']))} (S2V_{str(err['loc'][0]).upper()}): "
             f"{err['msg'].removeprefix('Value error, ')}"
             for err in e.errors(include_input=False, include_url=False)]
    return "error: invalid settings\n" + "\n".join(lines)


# typer ≥ 0.16 carries its own copy of click: its exceptions are not click's (both kept, for either typer)
EXIT = tuple({typer.Exit, click.exceptions.Exit})
ABORT = tuple({typer.Abort, click.exceptions.Abort})
USAGE = tuple({getattr(typer, "TyperException", click.ClickException), click.ClickException})


def main(argv: list[str] | None = None) -> None:
    """Entry point: the one place where outcomes become exit codes."""
    try:
        rv = app(args=argv, prog_name="s2v", standalone_mode=False)
        code = int(rv or 0) if isinstance(rv, int) else 0
    except EXIT as e:
        code = e.exit_code
    except ABORT:  # click's name for a KeyboardInterrupt outside a run (loading, planning)
        console().print(_styled(("interrupted", "yellow")), soft_wrap=True)
        code = 130
    except USAGE as e:  # a usage error: the usage line and the reason, like every CLI (never a traceback)
        if hasattr(e, "show"):
            e.show()
        else:
            console().print(_styled(("error: ", "red"), str(e)), soft_wrap=True)
        code = int(getattr(e, "exit_code", 2) or 2)  # click's own: 2 for usage, 1 for FileError and the like
    except S2VError as e:  # an interrupted render ends here too (InterruptedRun: state, report, webhook done)
        code = exit_code_for(e)
        console().print(_styled((str(e), "yellow")) if code == 130 else _styled(("error: ", "red"), str(e)),
                         soft_wrap=True)  # a message is not wrapped mid-path: terminals and logs wrap themselves
    except ValidationError as e:  # a bad S2V_* variable or flag, caught when settings load
        if e.title != "Settings":
            raise
        console().print(_settings_error(e), markup=False)
        code = 2
    except KeyboardInterrupt:
        console().print(_styled(("interrupted", "yellow")), soft_wrap=True)
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
