"""The one admission step: load a manifest, check every row's inputs and outputs, and turn away the rows that
fail — each as a BadRow with its problems, so what the user sees names the file, the row and the field."""

from __future__ import annotations

from typing import Callable, Iterable

from pydantic import BaseModel, ConfigDict

from core.errors import Problem
from orchestrator.intake.manifest import BadRow, JobSpec, ids_by_source, load_manifest

# A check takes the jobs still admitted and the settings, and returns problems whose `where` is a job's `where`.
Check = Callable[[list[JobSpec], object], list[Problem]]


class Admission(BaseModel):
    """The jobs that may go on to planning, and everything that was turned away (rows and problems)."""

    model_config = ConfigDict(frozen=True)

    location: str
    jobs: tuple[JobSpec, ...]
    bad: tuple[BadRow, ...] = ()
    problems: tuple[Problem, ...] = ()  # every problem: rows', the header's, the defaults'

    @property
    def rows(self) -> int:
        return len(self.jobs) + len(self.bad)

    def ids_by_source(self) -> dict[str, str]:
        return ids_by_source(self.jobs, self.bad)


def storage_checks(jobs: list[JobSpec], settings) -> list[Problem]:
    """Every input exists and every output prefix is writable, before any media is decoded or GPU paid for."""
    from infra.storage.checks import check_inputs

    return check_inputs(jobs, settings)


def admit(location: str, settings, cli_defaults: dict | None = None, *, checks: Iterable[Check] = ()) -> Admission:
    """Load the manifest, then run `checks` and the storage checks in order over the rows still admitted; a row
    with a problem is turned away with it (and never checked again)."""
    m = load_manifest(location, cli_defaults, settings)
    jobs, bad, problems = list(m.jobs), list(m.bad), list(m.problems)
    for check in (*checks, storage_checks):
        if not jobs:
            break
        found: dict[str, list[Problem]] = {}
        for p in check(jobs, settings):
            found.setdefault(p.where, []).append(p)
        problems += [p for ps in found.values() for p in ps]
        bad += [BadRow(where=j.where, id=j.id, problems=tuple(found[j.where])) for j in jobs if j.where in found]
        jobs = [j for j in jobs if j.where not in found]
    return Admission(location=location, jobs=tuple(jobs), bad=tuple(bad), problems=tuple(problems))
