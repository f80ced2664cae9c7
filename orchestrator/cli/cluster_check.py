"""`s2v cluster check CONFIG [--manifest M]`: the preflight (infra/clusters/preflight.py) — and the gate `up` passes
first. Merged into the `s2v cluster` group."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from core.errors import NotReady
from orchestrator.cli.common import CONFIG_ARG, checked, errors_to_exit, settings

app = typer.Typer()
SKIP_FLAG = "--skip-check"
_COLOURS = {"ok": typer.colors.GREEN, "warn": typer.colors.YELLOW, "FAIL": typer.colors.RED}


@app.command()
@errors_to_exit
def check(config: Path = CONFIG_ARG,
          manifest: Optional[str] = typer.Option(None, "--manifest", "-m", help="Also check the buckets this "
                                                 "manifest reads and writes (the nodes' grants and the buckets)."),
          ) -> None:
    """Check, before anything is launched, that the cluster would come up and run: credentials, roles and what they
    allow, the spot service-linked role, buckets, GPU quotas, images, libraries, SSH keys and ports. Exits 2 when
    anything would fail (each finding says what to do), 0 when all is ready."""
    findings = preflight(config, manifest)
    for f in findings:
        typer.secho(str(f), fg=_COLOURS.get(f.status))
    refuse_on_failures(config, findings, f"`s2v cluster check {config}` again")
    typer.echo(f"ready: {len(findings)} checks, none would fail")


def gate(config: Path) -> None:
    """What `up` runs first: the findings that are not OK, then a refusal when any would fail."""
    findings = preflight(config)
    for f in findings:
        if f.status in ("warn", "FAIL"):
            typer.secho(str(f), fg=_COLOURS[f.status], err=True)
    refuse_on_failures(config, findings, f"`s2v cluster up {config}` again, or pass {SKIP_FLAG} to launch anyway")


def refuse_on_failures(config: Path, findings, then: str) -> None:
    from infra.clusters.preflight import failed

    bad = failed(findings)
    if bad:
        raise NotReady(f"{len(bad)} of {len(findings)} checks of {config} would fail ({', '.join(f.check for f in bad)}):"
                       f" fix what each says, then run {then}")


def preflight(config: Path, manifest: str | None = None):
    """The findings for a config (validated first: a malformed one is its list of problems, exit 2)."""
    from infra.clusters.preflight import needs_of, run_checks
    from orchestrator.remote.tunnel import quiet_launcher

    with quiet_launcher():  # Ray's validator logs its defaults ("setting max workers…"): the findings say enough
        cfg = checked(config)
    found, read, write = manifest_findings(manifest, cfg, str(config)) if manifest else ([], set(), set())
    return found + run_checks(cfg, str(config), needs_of(cfg, read, write))


def manifest_findings(manifest: str, cfg: dict, config: str):
    """(findings, buckets read, buckets written) of a manifest's rows: the locations of its fields in s3:// or
    gs://, and the rows whose buckets the config's grants do not cover (as `render --cluster` refuses them)."""
    from infra.clusters.preflight import FAIL, OK, WARN, Finding
    from infra.storage import parse
    from orchestrator.intake.manifest import load_manifest
    from orchestrator.remote.stage import STAGED_FIELDS, bucket_problems

    m = load_manifest(manifest, None, settings())
    read, write = set(), set()
    for job in m.jobs:
        for name in (*STAGED_FIELDS, "model_dir", "output"):
            v = getattr(job, name, None)
            if v and v != "auto" and parse(v).scheme in ("s3", "gs"):
                (write if name == "output" else read).add(parse(v).bucket)
    out = [Finding(f"manifest {manifest}", WARN if m.bad else OK, f"{len(m.jobs)} job(s)" + (
        f"; {len(m.bad)} row(s) with problems (`s2v render` names them)" if m.bad else "") + (
        f"; buckets read {', '.join(sorted(read)) or '-'}, written {', '.join(sorted(write)) or '-'}"))]
    for p in bucket_problems(m.jobs, cfg, config):
        out.append(Finding(f"{p.where} {p.field}", FAIL, p.reason, p.hint or ""))
    return out, read, write
