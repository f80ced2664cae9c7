"""What the user sees: rich progress while rendering, tables for plan/validate/status, report.json + report.html."""

from __future__ import annotations

import html
import json
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from orchestrator.runner import Progress as RunProgress

console = Console(stderr=True)


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
                self.p.console.print(f"[red]✗ {job_id}: {status}")

    def stop(self) -> None:
        if self.p:
            self.p.stop()


def problems_table(problems, title: str = "Problems") -> Table:
    t = Table(title=title, show_lines=False)
    for col in ("where", "field", "problem", "what to do"):
        t.add_column(col, overflow="fold")
    for p in problems:
        t.add_row(p.where, p.field or "", p.reason, p.hint or "")
    return t


def plan_table(est: dict) -> Table:
    t = Table(title="Plan")
    for col in ("job", "scenes", "clips", "frames", "audio s", "GPU-s", "USD"):
        t.add_column(col, justify="right" if col != "job" else "left")
    for r in est["jobs"]:
        t.add_row(r["id"], str(r["scenes"]), str(r["clips"]), str(r["frames"]), f"{r['duration_s']:.1f}",
                  f"{r['gpu_s']:.0f}", f"{r['cost_usd']:.2f}")
    tot = est["total"]
    t.add_section()
    t.add_row(f"total ({tot['jobs']} jobs)", str(tot["scenes"]), str(tot["clips"]), str(tot["frames"]), "",
              f"{tot['gpu_s']:.0f}", f"{tot['cost_usd']:.2f}")
    return t


def results_table(jobs: dict) -> Table:
    t = Table(title="Run")
    for col in ("job", "status", "clips", "retries", "GPU-s", "output / reason"):
        t.add_column(col, overflow="fold")
    colour = {"published": "green", "skipped": "cyan", "failed": "red", "invalid": "red"}
    for j in jobs.values():
        st = j["status"] if isinstance(j, dict) else j.status
        d = j if isinstance(j, dict) else j.model_dump()
        t.add_row(d["id"], f"[{colour.get(st, 'yellow')}]{st}", f"{d['clips_rendered']}/{d['clips']}",
                  str(d["retries"]), f"{d['gpu_s']:.1f}", d["reason"] or d["output"] or "")
    return t


def report_doc(result) -> dict:
    from orchestrator.runner import run_cost

    jobs = {k: v.model_dump() for k, v in result.jobs.items()}
    cost = getattr(result, "cost", {}) or {}
    totals = {"jobs": len(jobs), **{s: sum(1 for j in jobs.values() if j["status"] == s)
                                    for s in ("published", "skipped", "failed", "invalid")},
              "gpu_s": round(sum(j["gpu_s"] for j in jobs.values()), 3),
              # a cluster's spend is its node-hours (head and idle included); the jobs' share is GPU-seconds
              "cost_usd": round(run_cost(result.jobs, cost), 6),
              "jobs_cost_usd": round(sum(j["cost_usd"] for j in jobs.values()), 6),
              "cost_source": cost.get("source", "gpu-seconds"),
              "clips_rendered": sum(j["clips_rendered"] for j in jobs.values()),
              "preemptions": sum(j["preemptions"] for j in jobs.values())}
    if "node_hours" in cost:
        totals["node_hours"] = cost["node_hours"]
        totals["node_cost_usd"] = cost["cost_usd"]
    if cost.get("note"):
        totals["cost_note"] = cost["note"]
    return {"run_id": result.run_id, "manifest": result.manifest, "wall_s": round(result.wall_s, 3),
            "exit_code": result.exit_code, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "totals": totals, "cost": cost, "capacity": getattr(result, "capacity", {}) or {},
            "jobs": jobs, "problems": [p.__dict__ for p in result.problems]}


def report_html(doc: dict) -> str:
    """Self-contained HTML (posters referenced by their published URIs, no external assets)."""
    rows = []
    for j in doc["jobs"].values():
        poster = (j["output"] or "").rsplit(".", 1)[0] + ".jpg" if j["status"] in ("published", "skipped") else ""
        img = f'<img src="{html.escape(poster)}" height="72">' if poster else ""
        rows.append(
            f"<tr class='{html.escape(j['status'])}'><td>{img}</td><td>{html.escape(j['id'])}</td>"
            f"<td>{html.escape(j['status'])}</td><td>{j['duration_s']:.1f}</td><td>{j['scenes']}</td>"
            f"<td>{j['clips_rendered']}/{j['clips']}</td><td>{j['retries']}</td><td>{j['preemptions']}</td>"
            f"<td>{j['gpu_s']:.1f}</td><td>{j['cost_usd']:.4f}</td><td>{html.escape(j['reason'] or '')}</td></tr>")
    t = doc["totals"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>s2v run {html.escape(doc['run_id'])}</title>
<style>body{{font:14px system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:4px 8px}}tr.failed,tr.invalid{{background:#fee}}tr.published{{background:#efe}}</style></head><body>
<h1>Run {html.escape(doc['run_id'])}</h1><p>{html.escape(doc['manifest'])} — {t['published']} published,
{t['skipped']} skipped, {t['failed']} failed, {t['invalid']} invalid; {t['clips_rendered']} clips,
{t['gpu_s']:.1f} GPU-s, ${t['cost_usd']:.4f} ({html.escape(t.get('cost_source', 'gpu-seconds'))}{
f", {t['node_hours']:.3f} node-hours" if 'node_hours' in t else ''}), {t['preemptions']} preemptions; wall
{doc['wall_s']:.1f}s</p>{f"<p>{html.escape(t['cost_note'])}</p>" if t.get('cost_note') else ''}
<table><tr><th>poster</th><th>job</th><th>status</th><th>audio s</th><th>scenes</th><th>clips</th><th>retries</th>
<th>preemptions</th><th>GPU-s</th><th>USD</th><th>failure</th></tr>{''.join(rows)}</table></body></html>"""


def write_reports(result, settings) -> list[str]:
    """report.json + report.html in the run's folder of the work area and next to each output prefix."""
    from infra.storage import parse, storage_for
    from orchestrator.checkpoints import WorkArea

    doc = report_doc(result)
    data, page = json.dumps(doc, indent=1).encode(), report_html(doc).encode()
    targets = {str(WorkArea.at(settings.work, settings).run_dir(result.run_id))}
    for j in result.jobs.values():
        if j.output:
            targets.add(str(parse(j.output).parent()))
    written = []
    for t in sorted(targets):
        base = parse(t)
        st = storage_for(base, settings)
        try:
            st.write_bytes(base.join("report.json"), data)
            st.write_bytes(base.join("report.html"), page)
            written.append(str(base.join("report.html")))
        except Exception as e:  # noqa: BLE001 - a report that cannot be written must not fail the run
            console.print(f"[yellow]could not write report to {t}: {e}")
    return written
