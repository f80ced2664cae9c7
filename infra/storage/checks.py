"""Pre-flight storage checks: every input object exists and every output prefix is writable, before GPU work."""

from __future__ import annotations

from pathlib import Path

from infra.storage.base import storage_for
from infra.storage.uri import Uri, parse
from core.errors import InputError, Problem, S2VError, StorageError

INPUT_FIELDS = ("audio", "image", "pose", "captions", "lora")


def _split(message: str) -> tuple[str, str | None]:
    """Our storage messages read 'what went wrong; what to check' — map them onto reason and hint."""
    reason, sep, hint = message.partition("; ")
    return reason, (hint if sep else None)


class _Checker:
    """Remembers answers so a catalog of thousands of rows sharing a few images costs a few calls, and a
    bucket that fails (no bucket, bad credentials, unreachable) is asked once, not once per row."""

    def __init__(self, settings):
        self.settings = settings
        self.objects: dict[str, tuple[str, str | None] | None] = {}
        self.buckets: dict[tuple[str, str], tuple[str, str | None]] = {}

    def object_problem(self, location: str) -> tuple[str, str | None] | None:
        if location in self.objects:
            return self.objects[location]
        try:
            uri = parse(location)
        except InputError as e:
            return self._remember(location, (str(e), None))
        bucket = (uri.scheme, uri.bucket)
        if uri.scheme != "file" and bucket in self.buckets:
            return self._remember(location, self.buckets[bucket])
        try:
            ok = storage_for(uri, self.settings).exists(uri)
        except InputError as e:
            return self._remember(location, _split(str(e)))
        except (StorageError, S2VError) as e:
            found = _split(str(e))
            if uri.scheme != "file":
                self.buckets[bucket] = found
            return self._remember(location, found)
        except Exception as e:  # noqa: BLE001 - e.g. a NUL byte or a 300-character name: this row's problem only
            return self._remember(location, (f"{uri}: cannot be checked ({type(e).__name__}: {str(e)[:200]})",
                                             "check the path or URI for stray characters and its length"))
        if ok:
            return self._remember(location, None)
        if uri.scheme == "file" and Path(uri.key).is_dir():  # exists() is False for folders: say why
            return self._remember(location, (f"{uri} is a folder, not a file", "name the file inside it"))
        what = "file" if uri.scheme == "file" else "object"
        hint = (
            "check the path (relative paths resolve against the manifest's folder)"
            if uri.scheme == "file"
            else "check the key, and that the upload finished before the run"
        )
        return self._remember(location, (f"{uri}: no such {what}", hint))

    def _remember(self, location: str, answer):
        self.objects[location] = answer
        return answer

    def output_problem(self, prefix: Uri) -> tuple[str, str | None] | None:
        try:
            storage_for(prefix, self.settings).check_writable(prefix)
        except S2VError as e:
            reason, hint = _split(str(e))
            return f"output {prefix} is not writable: {reason}", hint or "check the bucket/folder exists and the write permission"
        except Exception as e:  # noqa: BLE001 - as for inputs: the rows using this output, not the run
            return (f"output {prefix} cannot be checked ({type(e).__name__}: {str(e)[:200]})",
                    "check the path or URI for stray characters and its length")
        return None


def within_roots(prefix: Uri, roots: list[str]) -> bool:
    """True when prefix lies under one of roots (paths or URI prefixes, compared folder by folder, so /srv/v
    never admits /srv/videos; local paths are compared resolved, so a symlink cannot lead out)."""
    for root in roots:
        try:
            r = parse(root)
        except InputError:
            continue
        base = r.key.rstrip("/")
        if (r.scheme, r.bucket) == (prefix.scheme, prefix.bucket) and (
                not base or prefix.key.rstrip("/") == base or prefix.key.startswith(base + "/")):
            return True
    return False


def check_inputs(jobs, settings) -> list[Problem]:
    """Problems with the jobs' storage, one per (row, field); empty when rendering can start."""
    checker = _Checker(settings)
    problems: list[Problem] = []
    outputs: dict[str, tuple[Uri | None, str, int]] = {}
    for job in jobs:
        for field in INPUT_FIELDS:
            location = getattr(job, field, None)
            if not location or (field == "captions" and location == "auto"):  # auto: speech recognition
                continue
            found = checker.object_problem(location)
            if found:
                problems.append(Problem(where=job.source or job.id, field=field, reason=found[0], hint=found[1]))
        try:
            prefix = parse(job.output)
        except InputError as e:
            problems.append(Problem(where=job.source or job.id, field="output", reason=str(e)))
            continue
        roots = getattr(settings, "allowed_output_roots", None)
        if roots and not within_roots(prefix, roots):
            problems.append(Problem(
                where=job.source or job.id, field="output", reason=f"{prefix} is outside the allowed output roots "
                f"({', '.join(roots)})", hint="write under one of them; the roots are this deployment's "
                "allowed_output_roots setting (S2V_ALLOWED_OUTPUT_ROOTS)"))
            continue
        key = str(prefix)
        first = outputs.get(key)
        outputs[key] = (prefix, first[1] if first else (job.source or job.id), (first[2] if first else 0) + 1)
    for _, (prefix, where, n) in outputs.items():
        found = checker.output_problem(prefix)
        if found:
            reason = found[0] + (f" (used by {n} jobs)" if n > 1 else "")
            problems.append(Problem(where=where, field="output", reason=reason, hint=found[1]))
    return problems
