"""Load and validate a CSV or YAML manifest into frozen JobSpec records, reporting every problem at once."""

from __future__ import annotations

import csv
import difflib
import io
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from infra.storage import uri as uris
from core.errors import ManifestError, Problem, ProblemList

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SIZE_RE = re.compile(r"^\s*(\d{2,5})\s*[*xX×]\s*(\d{2,5})\s*$")
LOCATION_FIELDS = ("audio", "image", "pose", "output", "model_dir")


class JobSpec(BaseModel):
    """One row of a manifest: one output video. Frozen; locations are resolved URIs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    audio: str
    image: str
    prompt: str = ""
    negative_prompt: str = ""
    pose: str | None = None
    seed: int = Field(0, ge=0, lt=2**31)
    backend: str = "draft"
    size: str = "832*480"
    output: str = "out"
    max_scene_s: float = Field(60.0, gt=0, le=600)
    min_scene_s: float = Field(2.0, ge=0)
    min_pause_s: float = Field(0.2, gt=0, le=10)
    priority: int = 0
    tags: tuple[str, ...] = ()
    steps: int | None = Field(None, ge=1, le=200)
    guidance: float | None = Field(None, ge=0, le=30)
    shift: float | None = Field(None, gt=0, le=30)
    model_dir: str | None = None
    # where the row came from, for error messages; not part of the job's identity
    source: str = Field("", exclude=True)

    @field_validator("id")
    @classmethod
    def _safe_id(cls, v: str) -> str:
        if not ID_RE.match(v) or ".." in v:
            raise ValueError(
                "must be 1-128 characters of letters, digits, '.', '_' or '-', start with a letter or digit, "
                "and contain no '..' or '/' (it names output files)"
            )
        return v

    @field_validator("size")
    @classmethod
    def _size(cls, v: str) -> str:
        m = SIZE_RE.match(str(v))
        if not m:
            raise ValueError("must look like WIDTH*HEIGHT, e.g. 832*480 (an area budget)")
        w, h = int(m.group(1)), int(m.group(2))
        if w < 64 or h < 64 or w * h > 4096 * 4096:
            raise ValueError("each side must be ≥ 64 and the area at most 4096*4096")
        return f"{w}*{h}"

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, v: Any) -> Any:
        if v is None:
            return ()
        if isinstance(v, str):
            return tuple(t.strip() for t in re.split(r"[;|]", v) if t.strip())
        return v

    @field_validator("prompt", "negative_prompt", mode="before")
    @classmethod
    def _text(cls, v: Any) -> Any:
        return "" if v is None else v

    @property
    def area(self) -> tuple[int, int]:
        w, h = self.size.split("*")
        return int(w), int(h)

    def check_scene_policy(self) -> list[tuple[str, str]]:
        out = []
        if self.min_scene_s >= self.max_scene_s:
            out.append(("min_scene_s", f"{self.min_scene_s} must be below max_scene_s ({self.max_scene_s})"))
        return out


FIELDS = tuple(n for n in JobSpec.model_fields if n != "source")


class Manifest(BaseModel):
    """A loaded manifest: the valid jobs and every problem found (invalid rows are left out of jobs)."""

    model_config = ConfigDict(frozen=True)

    location: str
    jobs: tuple[JobSpec, ...]
    problems: tuple[Problem, ...] = ()
    bad_rows: tuple[str, ...] = ()  # ids (or row labels) of rows that could not become jobs
    bad_sources: tuple[str, ...] = ()  # where each of bad_rows is (file:line), to match its problems exactly


def _suggest(name: str) -> str | None:
    close = difflib.get_close_matches(name, FIELDS, n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else f"known fields: {', '.join(FIELDS)}"


def _read_text(location: str, settings=None) -> str:
    u = uris.parse(location)
    if u.scheme == "file":
        p = Path(u.key)
        if not p.is_file():
            raise ManifestError(f"manifest {location} not found", [Problem(location, None, "no such file")])
        raw = p.read_bytes()
    else:
        from infra.storage import open_storage

        from core.retry import retrying

        raw = retrying("storage")(open_storage(str(u), settings).read_bytes, u)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ManifestError(
            f"manifest {location} is not UTF-8 text",
            [Problem(location, None, f"byte {e.start} is not UTF-8", "save the file as UTF-8")],
        ) from None


def _yaml_rows(text: str, location: str, problems: ProblemList) -> tuple[dict, list[tuple[str, dict]]]:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{location}:{mark.line + 1}" if mark else location
        problems.add(where, None, f"not valid YAML: {getattr(e, 'problem', e)}", "check indentation and quoting")
        return {}, []
    if data is None:
        problems.add(location, None, "the manifest is empty", "add a 'jobs:' list")
        return {}, []
    if not isinstance(data, dict) or "jobs" not in data:
        problems.add(location, None, "a YAML manifest must be a mapping with a 'jobs:' list (and optional 'defaults:')")
        return {}, []
    unknown_top = set(data) - {"defaults", "jobs"}
    for k in sorted(map(str, unknown_top)):
        problems.add(location, k, "unknown top-level key", "only 'defaults' and 'jobs' are allowed")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        problems.add(location, "defaults", "must be a mapping of field: value")
        defaults = {}
    jobs = data.get("jobs")
    if not isinstance(jobs, list) or not jobs:
        problems.add(location, "jobs", "must be a non-empty list of jobs")
        return defaults, []
    job_nodes = next((v.value for k, v in root.value if k.value == "jobs"), [])
    rows = []
    for i, (job, node) in enumerate(zip(jobs, job_nodes)):
        where = f"{location}:{node.start_mark.line + 1} (job #{i + 1})"
        if not isinstance(job, dict):
            problems.add(where, None, "a job must be a mapping of field: value")
            continue
        rows.append((where, job))
    return defaults, rows


def _csv_rows(text: str, location: str, problems: ProblemList) -> list[tuple[str, dict]]:
    if not text.strip():
        problems.add(location, None, "the manifest is empty", "the first row must name the fields")
        return []
    try:
        dialect = csv.Sniffer().sniff(text.splitlines()[0], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text), dialect)
    try:
        header = [h.strip() for h in next(reader)]
    except (csv.Error, StopIteration) as e:
        problems.add(f"{location}:1", None, f"unreadable header row: {e}")
        return []
    for col, name in enumerate(header, 1):
        if not name:
            problems.add(f"{location}:1", f"column {col}", "empty column name in the header row")
        elif name not in FIELDS:
            problems.add(f"{location}:1", name, "unknown column", _suggest(name))
    dup = {h for h in header if header.count(h) > 1 and h}
    for name in sorted(dup):
        problems.add(f"{location}:1", name, "column appears more than once in the header")
    rows = []
    row_no = 0
    while True:
        start_line = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            problems.add(f"{location}:{start_line}", None, f"malformed CSV: {e}", "check quoting")
            break
        row_no += 1
        if not any(c.strip() for c in cells):
            continue
        where = f"{location}:{start_line} (row {row_no})"
        if len(cells) != len(header):
            problems.add(where, None, f"has {len(cells)} cells but the header has {len(header)}",
                         "quote cells that contain the delimiter")
            continue
        row = {h: c.strip() for h, c in zip(header, cells) if h in FIELDS and c.strip() != ""}
        rows.append((where, row))
    return rows


def _resolve_locations(row: dict, base: str, where: str, problems: ProblemList) -> bool:
    ok = True
    for f in LOCATION_FIELDS:
        v = row.get(f)
        if v is None or v == "":
            row.pop(f, None)  # an empty location means "not given"
            continue
        if not isinstance(v, str):
            problems.add(where, f, f"must be a path or URI, got {type(v).__name__}")
            ok = False
            continue
        try:
            row[f] = str(uris.parse(v, base))
        except Exception as e:  # noqa: BLE001 - any parse failure is a user input problem
            problems.add(where, f, str(e))
            ok = False
    return ok


def load_manifest(location: str, cli_defaults: dict[str, Any] | None = None, settings=None) -> Manifest:
    """Read a manifest; never raises for row problems (they are collected), only for an unreadable file."""
    problems = ProblemList()
    text = _read_text(location, settings)
    base = uris.folder_of(location)
    is_yaml = location.lower().endswith((".yaml", ".yml"))
    if is_yaml:
        file_defaults, rows = _yaml_rows(text, location, problems)
    elif location.lower().endswith((".csv", ".tsv", ".txt")):
        file_defaults, rows = {}, _csv_rows(text, location, problems)
    else:
        raise ManifestError(
            f"cannot tell the format of {location}",
            [Problem(location, None, "unknown extension", "name it .yaml, .yml or .csv")],
        )
    defaults: dict[str, Any] = {}
    for k, v in (file_defaults or {}).items():
        if k == "id":
            problems.add(f"{location} defaults", "id", "an id cannot have a default")
        elif k not in FIELDS:
            problems.add(f"{location} defaults", str(k), "unknown field", _suggest(str(k)))
        else:
            defaults[k] = v
    defaults.update(cli_defaults or {})  # the command line wins over the file's defaults

    jobs: list[JobSpec] = []
    bad: list[str] = []
    bad_where: list[str] = []
    seen: dict[str, str] = {}
    for where, row in rows:
        merged = {**{k: v for k, v in defaults.items() if k in FIELDS}, **row}
        label = str(row.get("id", where))
        unknown = [k for k in row if k not in FIELDS]
        for k in unknown:
            problems.add(where, str(k), "unknown field", _suggest(str(k)))
            merged.pop(k, None)
        row_ok = not unknown and _resolve_locations(merged, base, where, problems)
        for req in ("id", "audio", "image"):
            if req not in merged:
                problems.add(where, req, "is required", None if req == "id" else "give a path or URI")
                row_ok = False
        rid = merged.get("id")
        if isinstance(rid, (int, float)):
            merged["id"] = rid = str(rid)
        if isinstance(rid, str) and rid in seen:
            problems.add(where, "id", f"duplicate id '{rid}' (first at {seen[rid]})", "ids must be unique")
            row_ok = False
        elif isinstance(rid, str):
            seen[rid] = where
        try:
            job = JobSpec(**merged, source=where)
        except ValidationError as e:
            # a field already reported for this row (missing, not a path) is not reported twice
            said = {p.field for p in problems.items if p.where == where}
            for err in e.errors():
                field = ".".join(str(x) for x in err["loc"]) or None
                if field not in said:
                    problems.add(where, field, err["msg"].replace("Value error, ", ""), _hint_for(field, err))
            bad.append(label)
            bad_where.append(where)
            continue
        for field, reason in job.check_scene_policy():
            problems.add(where, field, reason)
            row_ok = False
        if row_ok:
            jobs.append(job)
        else:
            bad.append(label)
            bad_where.append(where)
    return Manifest(location=location, jobs=tuple(jobs), problems=tuple(problems.items), bad_rows=tuple(bad),
                    bad_sources=tuple(bad_where))


def _hint_for(field: str | None, err: dict) -> str | None:
    if err.get("type") == "extra_forbidden" and field:
        return _suggest(field)
    if field in ("seed", "priority", "steps"):
        return "use a whole number"
    if field in ("max_scene_s", "min_scene_s", "min_pause_s", "guidance", "shift"):
        return "use a number of seconds" if field.endswith("_s") else "use a number"
    return None


def parse_defaults(pairs: list[str], defaults_file: str | None) -> dict[str, Any]:
    """Defaults from `--defaults FILE.yaml` and `--set key=value` (the latter wins)."""
    out: dict[str, Any] = {}
    if defaults_file:
        try:
            data = yaml.safe_load(Path(defaults_file).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ManifestError(f"cannot read defaults file {defaults_file}: {e}") from None
        if isinstance(data, dict) and "defaults" in data:
            data = data["defaults"]
        if not isinstance(data, dict):
            raise ManifestError(f"defaults file {defaults_file} must be a mapping of field: value")
        out.update(data)
    for pair in pairs:
        if "=" not in pair:
            raise ManifestError(f"--set {pair!r}: expected FIELD=VALUE")
        k, v = pair.split("=", 1)
        out[k.strip()] = yaml.safe_load(v) if v else v
    bad = [k for k in out if k not in FIELDS or k == "id"]
    if bad:
        raise ManifestError("unknown default field(s)", [Problem("defaults", k, "unknown field", _suggest(k)) for k in bad])
    return out
