"""Load and validate a CSV or YAML manifest into frozen JobSpec records, reporting every problem at once."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from infra.storage import uri as uris
from core.errors import InputError, ManifestError, Problem, ProblemList
from orchestrator.intake import safe_yaml
from orchestrator.intake.delivery_fields import AUTO, DeliveryFields  # delivery: captions + renditions fields
from orchestrator.intake.files import YAMLError, csv_rows, key_text, read_text, suggest, yaml_rows

# validators use fullmatch: `$` also matches before a trailing newline, so "evil\n" passed a match() with `$`
ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SIZE_RE = re.compile(r"\s*(\d{2,5})\s*[*xX×]\s*(\d{2,5})\s*")
LOCATION_FIELDS = ("audio", "image", "pose", "output", "model_dir", "captions", "lora")
ID_RULE = ("1-128 characters of letters, digits, '.', '_' or '-', starting with a letter or digit, with no '..' "
           "or '/'")
# A negative prompt of exactly this word (any case) means "none at all", as does "" in YAML; a missing field (or an
# empty CSV cell: CSV cannot tell empty from missing, hence the word) means the backend's default, upstream's for
# wan-s2v.
NO_NEGATIVE_PROMPT = "none"


def is_safe_name(value: object) -> bool:
    """A job or run id: it names files and folders, so no separators, no '..', no control characters."""
    return isinstance(value, str) and ID_RE.fullmatch(value) is not None and ".." not in value


def check_run_id(value: str) -> str:
    """A run id names a folder of the work area: the same rule as job ids (no '../../' out of it)."""
    if not is_safe_name(value):
        raise InputError(f"run id (--run-id) {value!r} is not allowed: use {ID_RULE}")
    return value


class JobSpec(DeliveryFields):
    """One row of a manifest: one output video. Frozen; locations are resolved URIs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    audio: str
    image: str
    prompt: str = ""
    negative_prompt: str | None = None  # None = the backend's default; "" = none (written `none`)
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
    lora: str | None = None  # LoRA weights (.safetensors) applied to the model for this job (wan-s2v)
    lora_scale: float = Field(1.0, ge=-4, le=4)
    # where the row came from, for error messages; not part of the job's identity
    source: str = Field("", exclude=True)

    @field_validator("id")
    @classmethod
    def _safe_id(cls, v: str) -> str:
        if not is_safe_name(v):
            raise ValueError(f"must be {ID_RULE} (it names output files)")
        return v

    @field_validator("size")
    @classmethod
    def _size(cls, v: str) -> str:
        m = SIZE_RE.fullmatch(str(v))
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

    @field_validator("seed", "priority", "steps", "max_scene_s", "min_scene_s", "min_pause_s", "guidance", "shift",
                     mode="before")
    @classmethod
    def _not_bool(cls, v: Any) -> Any:
        if isinstance(v, bool):  # pydantic would take `seed: yes` as 1
            raise ValueError("must be a number, got a YAML boolean (yes/no/on/off/true/false)")
        return v

    @field_validator("prompt", mode="before")
    @classmethod
    def _text(cls, v: Any) -> Any:
        return "" if v is None else v

    @field_validator("negative_prompt", mode="before")
    @classmethod
    def _negative(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().lower() in ("", NO_NEGATIVE_PROMPT):
            return ""
        return v

    @property
    def where(self) -> str:
        """Where the row came from (file:line), or its id for a job made in code: what its problems name."""
        return self.source or self.id

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


class BadRow(BaseModel):
    """A row that does not become a job (or a job that admission turned away), carried as one record to the run's
    result: where it is, the id it gave (None when it gave no usable one), and its problems."""

    model_config = ConfigDict(frozen=True)

    where: str  # file:line (row N) or file:line (job #N)
    id: str | None = None
    problems: tuple[Problem, ...] = ()

    @property
    def label(self) -> str:
        """Its id when it gave one, else its place."""
        return self.where if self.id is None else self.id

    def reason(self) -> str:
        return "; ".join(str(p) for p in self.problems) or "invalid row (see problems)"


class Manifest(BaseModel):
    """A loaded manifest: the valid jobs and every problem found (invalid rows are left out of jobs)."""

    model_config = ConfigDict(frozen=True)

    location: str
    jobs: tuple[JobSpec, ...]
    problems: tuple[Problem, ...] = ()
    bad: tuple[BadRow, ...] = ()  # rows that could not become jobs

    def ids_by_source(self) -> dict[str, str]:
        """Row place (file:line) → the row's id, for every row that has one (to show next to its problems)."""
        return ids_by_source(self.jobs, self.bad)


def ids_by_source(jobs, bad) -> dict[str, str]:
    ids = {j.where: j.id for j in jobs}
    ids.update((b.where, b.id) for b in bad if b.id)
    return ids


def _suggest(name: str) -> str:
    return suggest(name, FIELDS)


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
        if f == "captions" and v.strip().lower() == AUTO:  # delivery: speech recognition, not a file
            row[f] = AUTO
            continue
        try:
            row[f] = str(uris.parse(v, base))
        except Exception as e:  # noqa: BLE001 - any parse failure is a user input problem
            problems.add(where, f, str(e))
            ok = False
    return ok


def _row_id(row: dict, where: str, problems: ProblemList) -> tuple[str | None, bool]:
    """(the row's id as text or None, whether it is usable). Never str() of a list or mapping: an alias bomb
    makes that gigabytes."""
    rid = row.get("id")
    if rid is None or isinstance(rid, str):
        return rid, True
    if isinstance(rid, (int, float)) and not isinstance(rid, bool):
        return str(rid), True
    problems.add(where, "id", f"must be text, got a {type(rid).__name__}", "write the id as plain text, e.g. lesson-01")
    return None, False


def load_manifest(location: str, cli_defaults: dict[str, Any] | None, settings) -> Manifest:
    """Read a manifest; never raises for row problems (they are collected), only for an unreadable file."""
    problems = ProblemList()
    raw = _raw_rows(location, settings, problems)
    defaults, bad_defaults = _defaults(raw, cli_defaults, problems)
    base = uris.folder_of(location)
    jobs: list[JobSpec] = []
    bad: list[tuple[str, str | None]] = []  # (where, the id it gave)
    seen: dict[str, str] = {}
    for where, row in raw.rows:
        job, rid = _job(where, row, defaults, bad_defaults, where in raw.tainted, base, seen, problems)
        if job is not None:
            jobs.append(job)
        else:
            bad.append((where, rid))
    rows = tuple(BadRow(where=w, id=rid, problems=tuple(p for p in problems.items if p.where == w)) for w, rid in bad)
    return Manifest(location=location, jobs=tuple(jobs), problems=tuple(problems.items), bad=rows)


def _raw_rows(location: str, settings, problems: ProblemList):
    text = read_text(location, settings)
    if location.lower().endswith((".yaml", ".yml")):
        return yaml_rows(text, location, problems)
    if location.lower().endswith((".csv", ".tsv", ".txt")):
        return csv_rows(text, location, FIELDS, problems)
    raise ManifestError(f"cannot tell the format of {location}",
                        [Problem(location, None, "unknown extension", "name it .yaml, .yml or .csv")])


def _defaults(raw, cli_defaults: dict[str, Any] | None, problems: ProblemList) -> tuple[dict, list]:
    """The defaults every row starts from (the command line over the file's), and the bad ones: (key, reason,
    hint), each of which makes every row invalid."""
    defaults: dict[str, Any] = {}
    bad_defaults = list(raw.bad_defaults)
    for k, v in raw.defaults.items():
        key = key_text(k)
        if k == "id":
            bad_defaults.append((key, "an id cannot have a default", "give each job its own id"))
        elif k not in FIELDS:
            bad_defaults.append((key, "unknown field", _suggest(key)))
        else:
            defaults[k] = v
    for key, reason, hint in bad_defaults:
        problems.add(raw.defaults_where, key, f"{reason} in the defaults: no job is rendered until it is fixed", hint)
    defaults.update(cli_defaults or {})  # the command line wins over the file's defaults
    return defaults, bad_defaults


def _job(where: str, row: dict, defaults: dict, bad_defaults: list, tainted: bool, base: str, seen: dict[str, str],
         problems: ProblemList) -> tuple[JobSpec | None, str | None]:
    """(the row's job, or None when it is invalid; the id the row gave, when it is usable text)."""
    merged = {**{k: v for k, v in defaults.items() if k in FIELDS}, **row}
    rid, row_ok = _row_id(merged, where, problems)
    if not row_ok:
        merged.pop("id")
    elif rid is not None:
        merged["id"] = rid
    given = rid if row_ok else None
    row_ok = row_ok and not tainted
    for key, reason, hint in bad_defaults:  # the scope of a bad default is every row: say so on each
        problems.add(where, key, f"not rendered because of the defaults: {reason}", hint)
        row_ok = False
    unknown = [k for k in row if k not in FIELDS]
    for k in unknown:
        problems.add(where, key_text(k), "unknown field", _suggest(key_text(k)))
        merged.pop(k, None)
    row_ok = not unknown and _resolve_locations(merged, base, where, problems) and row_ok
    for req in ("id", "audio", "image"):
        if req not in merged and not (req == "id" and "id" in row):
            problems.add(where, req, "is required", None if req == "id" else "give a path or URI")
            row_ok = False
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
        return None, given
    for field, reason in job.check_scene_policy():
        problems.add(where, field, reason)
        row_ok = False
    return (job if row_ok else None), given


def _hint_for(field: str | None, err: dict) -> str | None:
    if err.get("type") == "extra_forbidden" and field:
        return _suggest(field)
    if field in ("seed", "priority", "steps"):
        return "use a whole number"
    if field in ("max_scene_s", "min_scene_s", "min_pause_s", "guidance", "shift", "lora_scale"):
        return "use a number of seconds" if field.endswith("_s") else "use a number"
    return None


def parse_defaults(pairs: list[str], defaults_file: str | None, settings) -> dict[str, Any]:
    """Defaults from `--defaults FILE.yaml` and `--set key=value` (the latter wins)."""
    out: dict[str, Any] = {}
    if defaults_file:
        try:
            data = safe_yaml.safe_load(read_text(str(defaults_file), settings)) or {}
        except YAMLError as e:
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
        try:
            out[k.strip()] = safe_yaml.safe_load(v) if v else v
        except YAMLError:
            out[k.strip()] = v  # not YAML on its own (e.g. "a: b"): the text as given
    bad = [key_text(k) for k in out if k not in FIELDS or k == "id"]
    if bad:
        raise ManifestError("unknown default field(s)", [Problem("defaults", k, "unknown field", _suggest(k)) for k in bad])
    return out
