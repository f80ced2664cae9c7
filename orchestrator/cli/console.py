"""What the user sees in a terminal: rich progress while rendering, problems grouped by row, and the tables of
plan, validate, render and status. User data is printed inert (no markup, no control characters)."""

from __future__ import annotations

from rich import box
from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from orchestrator.run.results import Progress as RunProgress

# Markup and emoji codes off: ids, paths, headers and reasons come from manifests, and a "[/x]" or
# "[link=…]" in them must print as written, never as markup. Our own styling uses Text and style=.
def make_console(**kw) -> Console:
    return Console(markup=False, emoji=False, highlight=False, **kw)


console = make_console(stderr=True)
STATUS_STYLE = {"published": "green", "skipped": "cyan", "failed": "red", "invalid": "red", "interrupted": "yellow",
                "awaiting-review": "magenta"}


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
