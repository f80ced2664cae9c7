"""Reading manifest files: the size cap, UTF-8, YAML (with budgets) and CSV (with header checks) into raw rows."""

from __future__ import annotations

import csv
import difflib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yaml import error as yaml_errors, nodes as yaml_nodes

from core.errors import ManifestError, Problem, ProblemList
from infra.storage import uri as uris
from orchestrator.intake import safe_yaml

YAMLError = yaml_errors.YAMLError
# YAML scalars whose written text is the id the user meant: `id: 007` is "007", not 7; `id: yes` is "yes"
_TEXT_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("int", "float", "bool", "timestamp")}


def _norm(name: str) -> str:
    return re.sub(r"[\s-]+", "_", name.strip().lower())


def suggest(name: str, fields: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(_norm(name), fields, n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else f"known fields: {', '.join(fields)}"


def key_text(key: Any) -> str:
    """A mapping key as text for messages (YAML keys are scalars: SafeLoader refuses unhashable ones)."""
    return key if isinstance(key, str) else repr(key)


def read_text(location: str, settings) -> str:
    u = uris.parse(location)
    limit = float(settings.manifest_max_mb) * 1e6
    if u.scheme == "file":
        p = Path(u.key)
        if not p.is_file():
            raise ManifestError(f"manifest {location} not found", [Problem(location, None, "no such file")])
        if p.stat().st_size > limit:  # before reading: a huge file must not be read into memory to be refused
            raise _too_big(location, p.stat().st_size, limit)
        raw = p.read_bytes()
    else:
        from infra.storage import open_storage


        raw = open_storage(str(u), settings).read_bytes(u)
    if len(raw) > limit:
        raise _too_big(location, len(raw), limit)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ManifestError(
            f"manifest {location} is not UTF-8 text",
            [Problem(location, None, f"byte {e.start} is not UTF-8", "save the file as UTF-8")],
        ) from None


def _too_big(location: str, size: float, limit: float) -> ManifestError:
    return ManifestError(f"manifest {location} is too big", [Problem(
        location, None, f"{size / 1e6:.1f} MB, above the limit of {limit / 1e6:g} MB",
        "split the catalog into several manifests, or raise the limit (S2V_MANIFEST_MAX_MB)")])


def _yaml_error(e: Exception, location: str, problems: ProblemList) -> None:
    mark = getattr(e, "problem_mark", None)
    where = f"{location}:{mark.line + 1}" if mark else location
    if isinstance(e, safe_yaml.BudgetExceeded):
        problems.add(where, None, f"refused: {e.problem}")
    else:
        problems.add(where, None, f"not valid YAML: {getattr(e, 'problem', None) or e}", "check indentation and quoting")


def _written_id(node) -> None | str:
    """The id as written, for YAML scalars that would load as a number, boolean or date."""
    for k, v in node.value if isinstance(node, yaml_nodes.MappingNode) else ():
        if isinstance(k, yaml_nodes.ScalarNode) and k.value == "id" and isinstance(v, yaml_nodes.ScalarNode):
            return v.value if v.tag in _TEXT_TAGS else None
    return None


@dataclass
class RawRows:
    """What a reader found: rows as written, plus what makes some of them (or all) invalid before any check."""

    rows: list[tuple[str, dict]] = field(default_factory=list)  # (where, row)
    tainted: set[str] = field(default_factory=set)  # rows a file-level problem makes invalid (already reported)
    defaults: dict = field(default_factory=dict)
    defaults_where: str = ""
    bad_defaults: list[tuple[str, str, str | None]] = field(default_factory=list)  # (key, reason, hint)


def _repeated_keys(node) -> list[tuple[str, list[int]]]:
    """Keys a YAML mapping gives more than once (PyYAML keeps the last one silently), with their lines."""
    seen: dict[str, list[int]] = {}
    for k, _ in node.value if isinstance(node, yaml_nodes.MappingNode) else ():
        if isinstance(k, yaml_nodes.ScalarNode) and k.value != "<<":
            seen.setdefault(k.value, []).append(k.start_mark.line + 1)
    return [(k, lines) for k, lines in seen.items() if len(lines) > 1]


def _lines(lines: list[int]) -> str:
    return f"on line {lines[0]}" if len(set(lines)) == 1 else "on lines " + " and ".join(map(str, lines))


def yaml_rows(text: str, location: str, problems: ProblemList) -> RawRows:
    """The defaults and rows of a YAML manifest; a key given twice makes its job (or, in defaults, every job)
    invalid, as a repeated CSV column does."""
    raw = RawRows(defaults_where=location)
    try:
        root, data = safe_yaml.compose_and_load(text)
    except yaml_errors.YAMLError as e:
        _yaml_error(e, location, problems)
        return raw
    if data is None:
        problems.add(location, None, "the manifest is empty", "add a 'jobs:' list")
        return raw
    if not isinstance(data, dict) or "jobs" not in data:
        problems.add(location, None, "a YAML manifest must be a mapping with a 'jobs:' list (and optional 'defaults:')")
        return raw
    keys = {k.value: k for k, _ in root.value if isinstance(k, yaml_nodes.ScalarNode)}
    nodes = {k.value: v for k, v in root.value if isinstance(k, yaml_nodes.ScalarNode)}
    for k in sorted(key_text(k) for k in data if k not in ("defaults", "jobs")):
        problems.add(location, k, "unknown top-level key", "only 'defaults' and 'jobs' are allowed")
    for k, lines in _repeated_keys(root):
        problems.add(location, k, f"top-level key given twice {_lines(lines)}: only the last would count",
                     "merge them into one")
    if "defaults" in nodes:
        raw.defaults_where = f"{location}:{keys['defaults'].start_mark.line + 1} (defaults)"
    raw.defaults = data.get("defaults") or {}
    if not isinstance(raw.defaults, dict):
        problems.add(raw.defaults_where, "defaults", "must be a mapping of field: value")
        raw.defaults = {}
    for k, lines in _repeated_keys(nodes.get("defaults")):
        raw.bad_defaults.append((k, f"given twice {_lines(lines)}", "keep one of them"))
    jobs = data.get("jobs")
    if not isinstance(jobs, list) or not jobs:
        problems.add(location, "jobs", "must be a non-empty list of jobs")
        return raw
    for i, (job, node) in enumerate(zip(jobs, nodes["jobs"].value)):
        where = f"{location}:{node.start_mark.line + 1} (job #{i + 1})"
        if not isinstance(job, dict):
            problems.add(where, None, "a job must be a mapping of field: value")
            continue
        for k, lines in _repeated_keys(node):
            problems.add(where, k, f"given twice in this job {_lines(lines)}: which one is meant?",
                         "keep one of them")
            raw.tainted.add(where)
        written = _written_id(node)
        raw.rows.append((where, {**job, "id": written} if written is not None else dict(job)))
    return raw


def _nums(cols: list[int]) -> str:
    return " and ".join(str(c + 1) for c in cols)


def csv_rows(text: str, location: str, fields: tuple[str, ...], problems: ProblemList) -> RawRows:
    """The rows of a CSV manifest. A header problem affects every row with a value under that column: such rows
    are reported and not rendered; rows without one are unaffected."""
    if not text.strip():
        problems.add(location, None, "the manifest is empty", "the first row must name the fields")
        return RawRows(defaults_where=location)
    try:
        dialect = csv.Sniffer().sniff(text.splitlines()[0], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text), dialect)
    hdr = f"{location}:1"
    try:
        header = [h.strip() for h in next(reader)]
    except (csv.Error, StopIteration) as e:
        problems.add(hdr, None, f"unreadable header row: {e}")
        return RawRows(defaults_where=location)
    cols: dict[str, list[int]] = {}
    for col, name in enumerate(header):
        cols.setdefault(name, []).append(col)
    for name, at in cols.items():
        if name and len(at) > 1:
            problems.add(hdr, name, f"column appears more than once in the header (columns {_nums(at)})",
                         "keep one of them: a row with values in more than one is not rendered")
        elif name and name not in fields:
            problems.add(hdr, name, "unknown column: rows with a value in it are not rendered", suggest(name, fields))
    rows, tainted = [], set()
    nameless_used = False
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
        row: dict[str, str] = {}
        for name, at in cols.items():
            values = [(c, cells[c].strip()) for c in at if cells[c].strip()]
            if not values:
                continue
            if not name:
                problems.add(where, f"column {values[0][0] + 1}", f"has a value in column {values[0][0] + 1}, which "
                             "has no name in the header", "name the column in the header row, or empty its cells")
                tainted.add(where)
                nameless_used = True
                continue
            if len(values) > 1:
                problems.add(where, name, f"has values in more than one '{name}' column ({_nums(at)}): which one is "
                             "meant?", "keep one of the columns")
                tainted.add(where)
            # the first value stays even then (the row keeps its id, and no "is required" follows); an unknown
            # column's value stays too: the row check names it with a did-you-mean
            row[name] = values[0][1]
        rows.append((where, row))
    if nameless_used:
        problems.add(hdr, None, "a column with values has no name in the header", "name every column that has values")
    return RawRows(rows=rows, tainted=tainted, defaults_where=location)
