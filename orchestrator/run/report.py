"""The run's report: report.json + report.html for the whole run in the work area, and for each output folder only
the jobs published there."""

from __future__ import annotations

import html
import json
import logging
import os
import posixpath
import time
from dataclasses import dataclass, field
from urllib.parse import quote

from orchestrator.deliver.outputs import REPORT_GENERATOR, REPORT_SCHEMA, report_problem
from orchestrator.run.results import TERMINAL, JobStatus, run_cost

log = logging.getLogger("s2v.report")
# every status a job can end a run with, in the order the report counts them
STATUSES = tuple(s.value for s in JobStatus if s in TERMINAL)


def report_doc(result, jobs: dict | None = None, scope: str = "run") -> dict:
    """The run's report; with `jobs`, only those (an output folder's report names no other folder's jobs, and
    carries their GPU-second cost only: node-hours are the whole run's)."""
    whole = jobs is None
    jobs = {k: v.model_dump(mode="json") for k, v in (result.jobs if whole else jobs).items()}
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
    totals.update(cost_basis(cost, totals["cost_usd"]) if whole else {})
    if cost.get("note"):
        totals["cost_note"] = cost["note"]
    doc = {"schema": REPORT_SCHEMA, "run_id": result.run_id, "manifest": result.manifest, "scope": scope,
           "wall_s": round(result.wall_s, 3), "exit_code": result.exit_code,
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "totals": totals,
           "jobs": jobs, "problems": [p.__dict__ for p in result.problems] if whole else []}
    if whole:  # what ran where, and what it cost: model loads per actor (== actors), nodes and their hours
        doc.update(cost=cost, capacity=getattr(result, "capacity", {}) or {}, actors=list(result.actors or []))
    return doc


def cost_basis(cost: dict, total: float) -> dict:
    """Which cost figures are measured and which projected, for the report's totals."""
    if cost.get("source") != "node-hours":
        return {"cost_measured": "estimated: GPU-seconds of the clips × the GPU price table", "cost_projected_usd": 0.0}
    if cost.get("clock", "ray") == "ray":
        return {"cost_measured": "node-hours from Ray's node table (join to leave): boot, setup, nodes that never "
                                 "joined and the idle tail are missing", "cost_projected_usd": 0.0}
    projected = (cost.get("projected") or {}).get("cost_usd", 0.0)
    return {"cost_measured": f"node-hours by the cloud's own clock ({cost['clock']}: launch to end, failed nodes "
                             "and boot/setup included)",
            "cost_projected_usd": projected,
            "cost_projected": "the idle tail of the nodes still up at the run's end (idle timeout × price)",
            "cost_with_tail_usd": round(total + projected, 6)}


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


def _player(j: dict, link) -> str:
    """A published job's player (captions, chapters track) and links to what else it published."""
    from pipeline.web import player

    d = j.get("deliverables") or {}
    lang = j.get("caption_language") or "en"
    labels = (("transcript_html", "Transcript"), ("transcript", "Transcript (text)"), ("package", "SCORM package"),
              ("hls", "HLS stream"))
    links = [(link(d[k]), label) for k, label in labels if d.get(k)]
    links += [(link(u), f"Rendition {k.split(':', 1)[1]}") for k, u in d.items() if k.startswith("rendition:")
              and u.endswith(".mp4")]
    lesson = player.Lesson(id=j["id"], title=j["id"], mp4=link(j["output"]), lang=lang,
                           poster=link(j["output"].rsplit(".", 1)[0] + ".jpg"),
                           captions=player.Track(link(d["vtt"]), lang, lang) if d.get("vtt") else None,
                           chapters_vtt=link(d["chapters"]) if d.get("chapters") else None, links=tuple(links))
    return player.fragment(lesson, heading="h3")


def _order(jobs: list[dict]) -> list[dict]:
    """Failures first, then the worst quality findings, then by id: what needs a look comes first."""
    from orchestrator.deliver.quality import worst

    return sorted(jobs, key=lambda j: (j["status"] not in ("failed", "invalid"), -worst(j.get("quality") or []),
                                       j["id"]))


def report_html(doc: dict, base=None) -> str:
    """Self-contained HTML (posters and videos linked relative to the report's folder `base`, a Uri): the
    totals, a table of every job, then each published job in the lesson player with its quality notes."""
    from pipeline.web import player

    link = (lambda u: relative_href(u, base)) if base is not None else (lambda u: u)
    rows, players = [], []
    for j in _order(list(doc["jobs"].values())):
        img, seen = "", j["status"] in ("published", "skipped") and j["output"]
        anchor = player.anchor("job", j["id"])
        if seen:
            img = (f'<a href="#{anchor}"><img src="{html.escape(link(j["output"].rsplit(".", 1)[0] + ".jpg"))}" '
                   f'height="72" alt="{html.escape(j["id"])}"></a>')
            notes = "".join(f"<li><strong>{html.escape(n['severity'])}:</strong> {html.escape(n['text'])}</li>"
                            for n in j.get("quality") or [])
            players.append(f'<section id="{anchor}" aria-labelledby="{anchor}-h"><h2 id="{anchor}-h">'
                           f'{html.escape(j["id"])}</h2>{f"<ul>{notes}</ul>" if notes else ""}{_player(j, link)}'
                           f'</section>')
        first_note = html.escape((j.get("quality") or [{}])[0].get("text", ""))
        rows.append(
            f"<tr class='{html.escape(j['status'])}'><td>{img}</td><td>{html.escape(j['id'])}</td>"
            f"<td>{html.escape(j['status'])}</td><td>{j['duration_s']:.1f}</td><td>{j['scenes']}</td>"
            f"<td>{j['clips_rendered']}/{j['clips']}</td><td>{j['retries']}</td><td>{j['preemptions']}</td>"
            f"<td>{j['gpu_s']:.1f}</td><td>{j['cost_usd']:.4f}</td><td>{first_note}</td>"
            f"<td>{html.escape(j['reason'] or '')}</td></tr>")
    t = doc["totals"]
    scope = ("" if doc.get("scope", "run") == "run" else
             "<p>Only the jobs of this run published to this folder; the run's full report is in its work area.</p>")
    waiting = f", {t['awaiting-review']} awaiting review" if t.get("awaiting-review") else ""
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">{REPORT_GENERATOR}<title>s2v run {html.escape(doc['run_id'])}</title>
<style>body{{font:14px system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:4px 8px}}tr.failed,tr.invalid{{background:#fee}}tr.published{{background:#efe}}{player.CSS}</style></head><body>
<main><h1>Run {html.escape(doc['run_id'])}</h1>{scope}<p>{html.escape(doc['manifest'])} — {t['published']} published,
{t['skipped']} skipped, {t['failed']} failed, {t['invalid']} invalid, {t['interrupted']} interrupted{waiting};
{t['clips_rendered']} clips, {t['gpu_s']:.1f} GPU-s, ${t['cost_usd']:.4f} ({html.escape(t.get('cost_source', 'gpu-seconds'))}{
f", {t['node_hours']:.3f} node-hours" if 'node_hours' in t else ''}), {t['preemptions']} preemptions;
wall {doc['wall_s']:.1f}s</p>{_cost_html(t)}{f"<p>{html.escape(t['cost_note'])}</p>" if t.get('cost_note') else ''}
<table><tr><th>poster</th><th>job</th><th>status</th><th>audio s</th><th>scenes</th><th>clips</th><th>retries</th>
<th>preemptions</th><th>GPU-s</th><th>USD</th><th>worst finding</th><th>failure</th></tr>{''.join(rows)}</table>
{''.join(players)}</main><script>{player.script() if players else ''}</script></body></html>"""


def _cost_html(t: dict) -> str:
    if "cost_measured" not in t:
        return ""
    out = f"<p>Measured: ${t['cost_usd']:.4f}, {html.escape(t['cost_measured'])}."
    if t.get("cost_projected"):
        out += (f" Projected: ${t['cost_projected_usd']:.4f} more, {html.escape(t['cost_projected'])}"
                f" (${t['cost_with_tail_usd']:.4f} with it).")
    return out + "</p>"


@dataclass
class Reports:
    written: list[str] = field(default_factory=list)  # report.html of each place written
    failed: list[str] = field(default_factory=list)  # "where: why" of each place that could not be written


def write_reports(result, settings) -> Reports:
    """report.json + report.html: the whole run in the run's folder of the work area; in each output folder,
    only the jobs published (or failed) there — one team's folder never lists another's ids, URIs or reasons.
    A report that cannot be written never fails the run: it is said, in `failed`; nor does one replace a
    report.json or report.html s2v did not write."""
    from infra.storage import parse, storage_for
    from orchestrator.workarea.layout import WorkArea

    targets: list[tuple] = [(WorkArea.at(settings.work, settings).run_dir(result.run_id), None)]
    by_folder: dict[str, dict] = {}
    for k, j in result.jobs.items():
        if j.output:
            by_folder.setdefault(str(parse(j.output).parent()), {})[k] = j
    by_folder.pop(str(targets[0][0]), None)  # an output folder that is the run's folder keeps the full report
    targets += [(parse(folder), jobs) for folder, jobs in sorted(by_folder.items())]
    out = Reports()
    for base, jobs in targets:
        doc = report_doc(result, jobs, "run" if jobs is None else "folder")
        st = storage_for(base, settings)
        if jobs is not None and (refused := report_problem(base, settings)):
            log.warning("%s", refused)
            out.failed.append(f"{base}: {refused}")
            continue
        try:
            st.write_bytes(base.join("report.json"), json.dumps(doc, indent=1).encode())
            st.write_bytes(base.join("report.html"), report_html(doc, base).encode())
            out.written.append(str(base.join("report.html")))
        except Exception as e:  # noqa: BLE001 - a report that cannot be written must not fail the run
            log.warning("could not write report to %s: %s", base, e)
            out.failed.append(f"{base}: {e}")
    return out
