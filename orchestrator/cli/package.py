"""`s2v package MANIFEST`: the whole catalog as one SCORM package (one SCO per lesson) from what is published."""

from __future__ import annotations

from typing import List, Optional

import typer

from orchestrator.cli.common import DefaultsOpt, SetOpt, defaults as _defaults, settings as _settings


def package(manifest: str = typer.Argument(..., help="Manifest path or URI (.yaml/.yml/.csv)."),
            defaults: Optional[str] = DefaultsOpt, set_: Optional[List[str]] = SetOpt,
            kind: str = typer.Option("scorm2004", help="scorm12 (SCORM 1.2) or scorm2004 (4th edition)."),
            output: Optional[str] = typer.Option(None, help="Where the zip goes (default: the first job's output "
                                                 "folder, <manifest name>.<kind>.zip)."),
            title: Optional[str] = typer.Option(None, help="The course title in the LMS (default: the manifest's "
                                                "name).")) -> int:
    """Package every published lesson of a catalog for an LMS: no render, no GPU. Refuses when a lesson is not
    published yet (exit 2), naming it."""
    from core.errors import InputError
    from infra.storage import parse
    from orchestrator.deliver.catalog_package import build, default_destination
    from orchestrator.intake.admission import admit
    from pipeline.web.scorm import VERSIONS

    if kind not in VERSIONS:
        raise InputError(f"--kind {kind!r}: use scorm12 or scorm2004")
    settings = _settings()
    adm = admit(manifest, settings, _defaults(defaults, set_, settings))
    if adm.problems or not adm.jobs:
        raise InputError(f"{manifest} has {len(adm.problems)} problem(s) and {len(adm.jobs)} valid job(s): "
                         f"run `s2v validate {manifest}` and fix them first")
    dest = parse(output) if output else default_destination(manifest, adm.jobs, kind)
    info = build(manifest, list(adm.jobs), kind, dest, settings, title)
    typer.echo(f"{info['uri']}: SCORM {info['version']} package of {info['lessons']} lesson(s), "
               f"{info['bytes'] / 1e6:.1f} MB")
    return 0
