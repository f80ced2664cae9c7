"""What the user sees: rich progress while rendering, tables for plan/validate/status, report.json + report.html."""

from __future__ import annotations

import html
import json
import os
import posixpath
import time
from urllib.parse import quote

from rich import box
from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from orchestrator.run.runner import Progress as RunProgress

# Markup and emoji codes off: ids, paths, headers and reasons come from manifests, and a "[/x]" or
# "[link=…]" in them must print as written, never as markup. Our own styling uses Text and style=.
def make_console(**kw) -> Console:
    return Console(markup=False, emoji=False, highlight=False, **kw)


console = make_console(stderr=True)
STATUS_STYLE = {"published": "green", "skipped": "cyan", "failed": "red", "invalid": "red", "interrupted": "yellow"}


def safe(value, newlines: bool = False) -> str:
    """User data made inert for a terminal: control characters (ESC sequences, bidi overrides, CR) are shown
    escaped, so a value cannot move the cursor, draw a link or hide text; newlines kept only if asked."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or (newlines and c == "\n") else c.encode("unicode_escape").decode("ascii")
                   for c in text)


def styled(*parts) -> Text:
    """Text from (text, style) pairs and plain strings; every piece goes through safe()."""
    out = Text()
    for part in parts:
        text, style = part if isinstance(part, tuple) else (part, "")
        out.append(safe(text, newlines=True), style=style)
    return out


class RichProgress(RunProgress):
    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.p = None

    def start(self, jobs: int, clips: int) -> None:
        if not self.enabled:
            return
        self.p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False)
        self.p.start()
        self.t_jobs = self.p.add_task("jobs ", total=jobs)
        self.t_clips = self.p.add_task("clips", total=clips)

    def clip(self, job_id: str) -> None:
        if self.p:
            self.p.advance(self.t_clips)

    def job(self, job_id: str, status: str) -> None:
        if self.p:
            self.p.advance(self.t_jobs)
            if status != "published":
                self.p.console.print(styled(("✗ ", "red"), (job_id, "red"), f": {status}"))

    def stop(self) -> None:
        if self.p:
            self.p.stop()


def _place(where: str, base: str) -> str:
    """A problem's place without the manifest's path, which the title already names."""
    if base and where.startswith(base):
        rest = where[len(base):].strip()
        if rest.startswith(":"):
            return "line " + rest[1:]
        return rest or "the file"
    return where


def problems_view(problems, title: str, ids: dict[str, str] | None = None, base: str = "") -> Group:
    """Problems grouped by row: the row's place and id on one line, then field, reason and hint beneath it,
    wrapped inside their column, so the view reads well at 80 columns and in a wide terminal alike."""
    ids = ids or {}
    groups: dict[str, list] = {}
    for p in problems:
        groups.setdefault(p.where, []).append(p)
    parts = [styled(("✗ ", "bold red"), (title, "bold"))]
    width = min(18, max((len(safe(p.field or "")) for p in problems), default=1))  # one field column for all rows
    for where, items in groups.items():
        head = styled((_place(where, base), "bold"))
        if ids.get(where):
            head.append_text(styled("  ", ("id ", "dim"), (ids[where], "cyan")))
        grid = Table.grid(padding=(0, 1))
        grid.add_column(width=1)
        grid.add_column(style="yellow", width=width, overflow="fold")
        grid.add_column(ratio=1, overflow="fold")
        for p in items:
            text = styled(p.reason)
            if p.hint:
                text.append_text(styled("\n→ ", (p.hint, "dim")))
            grid.add_row("", Text(safe(p.field or "")), text)
        parts += [Text(""), head, grid]
    return Group(*parts)


def problems_plain(problems, title: str, ids: dict[str, str] | None = None) -> list[str]:
    """One line per problem, for CI logs and grep: `FILE:LINE (row N): id X: field: reason — hint`."""
    ids = ids or {}
    lines = [safe(title)]
    for p in problems:
        line = safe(p.where)
        if ids.get(p.where):
            line += f": id {safe(ids[p.where])}"
        line += (f": {safe(p.field)}" if p.field else "") + f": {safe(p.reason)}"
        lines.append(line + (f" — {safe(p.hint)}" if p.hint else ""))
    return lines


def problems_json(problems, ids: dict[str, str] | None = None) -> list[dict]:
    ids = ids or {}
    return [{"where": p.where, "id": ids.get(p.where), "field": p.field, "reason": p.reason, "hint": p.hint}
            for p in problems]


def print_problems(problems, title: str, ids: dict[str, str] | None = None, base: str = "", *,
                   con: Console | None = None) -> None:
    """Rich when the console is a terminal, plain lines otherwise (CI logs)."""
    con = con or console
    if con.is_terminal:
        con.print(problems_view(problems, title, ids, base))
    else:
        for line in problems_plain(problems, title, ids):
            con.print(Text(line), soft_wrap=True)


def plan_table(est: dict) -> Table:
    tot = est["total"]
    silence = any(r["silence_s"] for r in est["jobs"])
    t = Table(title="Plan", box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False, caption=(
        "trimmed: share of the rendered frames cut off at scene ends; s/clip: measured on this GPU type (* = the "
        f"settings default, nothing measured yet); silent: time in stretches of ≥ {tot.get('long_silence_s', 0):g} s "
        "without speech (each 5 s costs a clip of a silent presenter). --json has every figure."))
    t.add_column("job", overflow="fold", min_width=8)
    for col in ("scenes", "clips", "audio", "trimmed", "s/clip", "GPU-h", "USD") + (("silent",) if silence else ()):
        t.add_column(col, justify="right")

    def secs(x: float) -> str:
        return f"{x:.1f}" if x < 10 else f"{x:.0f}"

    def clock(x: float) -> str:
        h, m, sec = int(x // 3600), int(x % 3600 // 60), int(round(x % 60))
        return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"

    for r in est["jobs"]:
        star = "" if r["clip_s_source"] == "measured" else "*"
        t.add_row(Text(safe(r["id"])), str(r["scenes"]), str(r["clips"]), clock(r["duration_s"]),
                  f"{r['trimmed_share']:.1%}", f"{secs(r['clip_s'])}{star}",
                  f"{r['gpu_s'] / 3600:.1f}", f"{r['cost_usd']:.2f}",
                  *([Text(clock(r["silence_s"]), style="yellow") if r["silence_s"] else ""] if silence else []))
    t.add_section()
    t.add_row(f"total, {tot['jobs']} jobs", str(tot["scenes"]), str(tot["clips"]), "",
              f"{tot['trimmed_share']:.1%}", "", f"{tot['gpu_s'] / 3600:.1f}",
              f"{tot['cost_usd']:.2f}", *([clock(tot["silence_s"])] if silence else []))
    return t


def results_table(jobs: dict) -> Table:
    t = Table(title="Run")
    for col in ("job", "status", "clips", "retries", "GPU-s", "output / reason"):
        t.add_column(col, overflow="fold")
    for j in jobs.values():
        d = j if isinstance(j, dict) else j.model_dump()
        st = d["status"]
        t.add_row(Text(safe(d["id"])), Text(safe(st), style=STATUS_STYLE.get(st, "yellow")),
                  f"{d['clips_rendered']}/{d['clips']}", str(d["retries"]), f"{d['gpu_s']:.1f}",
                  Text(safe(d["reason"] or d["output"] or "")))
    return t


STATUSES = ("published", "skipped", "failed", "invalid", "interrupted")


def report_doc(result, jobs: dict | None = None, scope: str = "run") -> dict:
    """The run's report; with `jobs`, only those (an output folder's report names no other folder's jobs, and
    carries their GPU-second cost only: node-hours are the whole run's)."""
    from orchestrator.run.runner import run_cost

    whole = jobs is None
    jobs = {k: v.model_dump() for k, v in (result.jobs if whole else jobs).items()}
    cost = (getattr(result, "cost", {}) or {}) if whole else {}
    jobs_cost = round(sum(j["cost_usd"] for j in jobs.values()), 6)
    totals = {"jobs": len(jobs), **{s: sum(1 for j in jobs.values() if j["status"] == s) for s in STATUSES},
              "gpu_s": round(sum(j["gpu_s"] for j in jobs.values()), 3),
              # a cluster's spend is its node-hours (head and idle included); the jobs' share is GPU-seconds
              "cost_usd": round(run_cost(result.jobs, cost), 6) if whole else jobs_cost,
              "jobs_cost_usd": jobs_cost, "cost_source": cost.get("source", "gpu-seconds"),
              "clips_rendered": sum(j["clips_rendered"] for j in jobs.values()),
              "preemptions": sum(j["preemptions"] for j in jobs.values())}
    if "node_hours" in cost:
        totals["node_hours"] = cost["node_hours"]
        totals["node_cost_usd"] = cost["cost_usd"]
    if cost.get("note"):
        totals["cost_note"] = cost["note"]
    doc = {"run_id": result.run_id, "manifest": result.manifest, "scope": scope,
           "wall_s": round(result.wall_s, 3), "exit_code": result.exit_code,
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "totals": totals,
           "jobs": jobs, "problems": [p.__dict__ for p in result.problems] if whole else []}
    if whole:  # what ran where, and what it cost: model loads per actor (== actors), nodes and their hours
        doc.update(cost=cost, capacity=getattr(result, "capacity", {}) or {}, actors=list(result.actors or []))
    return doc


def relative_href(target: str, base) -> str:
    """A link from a report in folder `base` (a Uri) to `target`: relative when both live in the same storage
    (the folder can move, or be served from a bucket), else the target's full URI."""
    from infra.storage import parse

    t = parse(target)
    if (t.scheme, t.bucket) != (base.scheme, base.bucket):
        return str(t)
    rel = (os.path.relpath(t.key, base.key) if t.scheme == "file"
           else posixpath.relpath(t.key, base.key or "."))
    return quote(rel)


def report_html(doc: dict, base=None) -> str:
    """Self-contained HTML (posters and videos linked relative to the report's folder `base`, a Uri)."""
    rows = []
    for j in doc["jobs"].values():
        img = ""
        if j["status"] in ("published", "skipped") and j["output"]:
            mp4 = j["output"]
            poster = mp4.rsplit(".", 1)[0] + ".jpg"
            link = (lambda u: relative_href(u, base)) if base is not None else (lambda u: u)
            img = (f'<a href="{html.escape(link(mp4))}"><img src="{html.escape(link(poster))}" height="72" '
                   f'alt="{html.escape(j["id"])}"></a>')
        rows.append(
            f"<tr class='{html.escape(j['status'])}'><td>{img}</td><td>{html.escape(j['id'])}</td>"
            f"<td>{html.escape(j['status'])}</td><td>{j['duration_s']:.1f}</td><td>{j['scenes']}</td>"
            f"<td>{j['clips_rendered']}/{j['clips']}</td><td>{j['retries']}</td><td>{j['preemptions']}</td>"
            f"<td>{j['gpu_s']:.1f}</td><td>{j['cost_usd']:.4f}</td><td>{html.escape(j['reason'] or '')}</td></tr>")
    t = doc["totals"]
    scope = ("" if doc.get("scope", "run") == "run" else
             "<p>Only the jobs of this run published to this folder; the run's full report is in its work area.</p>")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>s2v run {html.escape(doc['run_id'])}</title>
<style>body{{font:14px system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:4px 8px}}tr.failed,tr.invalid{{background:#fee}}tr.published{{background:#efe}}</style></head><body>
<h1>Run {html.escape(doc['run_id'])}</h1>{scope}<p>{html.escape(doc['manifest'])} — {t['published']} published,
{t['skipped']} skipped, {t['failed']} failed, {t['invalid']} invalid, {t['interrupted']} interrupted;
{t['clips_rendered']} clips, {t['gpu_s']:.1f} GPU-s, ${t['cost_usd']:.4f} ({html.escape(t.get('cost_source', 'gpu-seconds'))}{
f", {t['node_hours']:.3f} node-hours" if 'node_hours' in t else ''}), {t['preemptions']} preemptions;
wall {doc['wall_s']:.1f}s</p>{f"<p>{html.escape(t['cost_note'])}</p>" if t.get('cost_note') else ''}
<table><tr><th>poster</th><th>job</th><th>status</th><th>audio s</th><th>scenes</th><th>clips</th><th>retries</th>
<th>preemptions</th><th>GPU-s</th><th>USD</th><th>failure</th></tr>{''.join(rows)}</table></body></html>"""


def write_reports(result, settings) -> list[str]:
    """report.json + report.html: the whole run in the run's folder of the work area; in each output folder,
    only the jobs published (or failed) there — one team's folder never lists another's ids, URIs or reasons."""
    from infra.storage import parse, storage_for
    from orchestrator.workarea.layout import WorkArea

    targets: list[tuple] = [(WorkArea.at(settings.work, settings).run_dir(result.run_id), None)]
    by_folder: dict[str, dict] = {}
    for k, j in result.jobs.items():
        if j.output:
            by_folder.setdefault(str(parse(j.output).parent()), {})[k] = j
    by_folder.pop(str(targets[0][0]), None)  # an output folder that is the run's folder keeps the full report
    targets += [(parse(folder), jobs) for folder, jobs in sorted(by_folder.items())]
    written = []
    for base, jobs in targets:
        doc = report_doc(result, jobs, "run" if jobs is None else "folder")
        st = storage_for(base, settings)
        try:
            st.write_bytes(base.join("report.json"), json.dumps(doc, indent=1).encode())
            st.write_bytes(base.join("report.html"), report_html(doc, base).encode())
            written.append(str(base.join("report.html")))
        except Exception as e:  # noqa: BLE001 - a report that cannot be written must not fail the run
            console.print(styled(("could not write report to ", "yellow"), (str(base), "yellow"), f": {e}"),
                          soft_wrap=True)
    return written
