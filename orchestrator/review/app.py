"""`s2v review`: the review page, a small Starlette app served on 127.0.0.1 only — every job with its latest
render in the lesson player, the plan's figures, quality notes, and Approve / Request changes stored in the
review file. Requests must name a loopback host (no DNS rebinding) and forms carry a per-server token (no
cross-site posts from other pages the reviewer has open)."""

from __future__ import annotations

import html
import secrets
from pathlib import Path
from urllib.parse import quote

from core.errors import InputError
from orchestrator.intake.inputs import local_path
from orchestrator.deliver.lesson import language_name, spans, title
from orchestrator.review.catalog import Catalog, Entry
from orchestrator.review.store import APPROVED, CHANGES
from pipeline.web import player
from pipeline.web.transcript import clock

LOOPBACK = ("127.0.0.1", "localhost")
STATE = {"current": "render shows the current content", "older": "render is of an earlier version of this row: "
         "render a draft again before deciding", "unknown": "render predates content keys: render a draft again",
         "none": "no render yet: render a draft (`s2v render MANIFEST --set backend=draft`)"}


def _e(v) -> str:
    return html.escape(str(v), quote=True)


def job_section(e: Entry, cat: Catalog, token: str, reviewer: str) -> str:
    job, d = e.plan.job, cat.decision(e)
    status = "awaiting review" if d is None else d.decision
    lesson = player.Lesson(
        id=e.id, title=title(e.plan), mp4=f"/media/{e.id}/mp4", lang=job.caption_language,
        poster=f"/media/{e.id}/jpg" if "jpg" in e.media else None,
        captions=player.Track(f"/media/{e.id}/vtt", job.caption_language, language_name(job.caption_language))
        if "vtt" in e.media else None,
        chapters_vtt=f"/media/{e.id}/chapters" if "chapters" in e.media else None, chapters=tuple(spans(e.plan)),
        links=((f"/media/{e.id}/transcript", "Transcript"),) if "transcript" in e.media else ())
    f = e.figures
    figures = (f"<dl class=fig><dt>Length</dt><dd>{clock(e.plan.duration_s)}</dd><dt>Scenes</dt><dd>{len(e.plan.scenes)}"
               f"</dd><dt>Clips</dt><dd>{e.plan.clips}</dd><dt>GPU estimate</dt><dd>{f.get('gpu_s', 0) / 3600:.2f} h, "
               f"${f.get('cost_usd', 0):.2f}</dd><dt>Backend</dt><dd>{_e(job.backend)}</dd></dl>")
    notes = "".join(f"<li><strong>{_e(n['severity'])}:</strong> {_e(n['text'])}</li>" for n in e.notes())
    history = "".join(f"<li>{_e(h.at)} — {_e(h.reviewer)}: {_e(h.decision)}" + (f" — “{_e(h.note)}”" if h.note else "")
                      + ("" if h.content == e.content else " <em>(earlier content)</em>") + "</li>"
                      for h in reversed(cat.history(e.id)))
    sid = player.anchor("job", e.id)
    video = player.fragment(lesson, heading="h3") if e.render_state != "none" else ""
    return f"""<section class="job" id="{sid}" aria-labelledby="{sid}-h">
<h2 id="{sid}-h">{_e(title(e.plan))} <small>({_e(e.id)}, {_e(job.where)})</small></h2>
<p class="status" data-status="{_e(status)}">Review: <strong>{_e(status)}</strong>. {_e(STATE[e.render_state])}.</p>
{video}{figures}<h3>Quality notes</h3>{f"<ul>{notes}</ul>" if notes else "<p>None.</p>"}
<form method="post" action="/decide"><input type="hidden" name="token" value="{token}">
<input type="hidden" name="job" value="{_e(e.id)}"><input type="hidden" name="content" value="{e.content}">
<p><label for="{sid}-who">Reviewer</label> <input id="{sid}-who" name="reviewer" required value="{_e(reviewer)}"></p>
<p><label for="{sid}-note">Note (required to request changes)</label><br>
<textarea id="{sid}-note" name="note" rows="3" cols="60"></textarea></p>
<p><button type="submit" name="decision" value="{APPROVED}">Approve</button>
<button type="submit" name="decision" value="{CHANGES}">Request changes</button></p></form>
{f"<h3>History</h3><ul>{history}</ul>" if history else ""}</section>"""


def index_page(cat: Catalog, token: str, reviewer: str, message: str = "") -> str:
    counts = cat.counts()
    summary = ", ".join(f"{n} {k}" for k, n in counts.items())
    problems = "".join(f"<li>{_e(p)}</li>" for p in cat.problems)
    toc = "".join(f'<li><a href="#{player.anchor("job", e.id)}">{_e(title(e.plan))}</a>'
                  f' — {_e(getattr(cat.decision(e), "decision", "awaiting review"))}</li>'
                  for e in cat.entries.values())
    body = "".join(job_section(e, cat, token, reviewer) for e in cat.entries.values())
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>Review of {_e(Path(cat.manifest).name)}</title>
<style>body{{font:1rem/1.5 system-ui,sans-serif;margin:1rem auto;max-width:64rem;padding:0 1rem;color:#111}}
section.job{{border-top:2px solid #ccc;margin-top:2rem}}dl.fig{{display:grid;grid-template-columns:max-content 1fr;
gap:0 1rem}}dt{{font-weight:600}}button{{font:inherit;padding:.3em .8em}}:focus-visible{{outline:3px solid #0b57d0}}
{player.CSS}</style></head><body><main><h1>Review of {_e(cat.manifest)}</h1>
{f'<p role="alert">{_e(message)}</p>' if message else ""}<p>{_e(summary)}. Decisions go to
<code>{_e(cat.review.path)}</code>; <code>s2v render --approved-only</code> renders only approved rows.</p>
{f"<h2>Problems</h2><ul>{problems}</ul>" if problems else ""}<nav aria-label="Jobs"><ul>{toc}</ul></nav>{body}
</main><script>{player.script()}</script></body></html>"""


def make_app(cat: Catalog, reviewer: str):
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.responses import FileResponse, HTMLResponse, PlainTextResponse, RedirectResponse
    from starlette.routing import Route

    token = secrets.token_urlsafe(24)

    def index(request):
        cat.refresh()
        return HTMLResponse(index_page(cat, token, reviewer, request.query_params.get("said", "")))

    def media(request):
        e = cat.entries.get(request.path_params["job"])
        kind = request.path_params["kind"]
        if e is None or kind not in e.media:
            return PlainTextResponse("not found", status_code=404)
        # a local file in place; a bucket's through the input cache, by version (a new draft is fetched anew)
        return FileResponse(local_path(e.media[kind], cat.settings))

    def _said(message: str):
        return RedirectResponse("/?said=" + quote(message), status_code=303)

    async def decide(request):
        form = await request.form()
        if not secrets.compare_digest(str(form.get("token", "")), token):
            return PlainTextResponse("this form is not from this review page: reload it", status_code=403)
        cat.refresh()
        e = cat.entries.get(str(form.get("job", "")))
        if e is None:
            return PlainTextResponse("no such job in the manifest", status_code=404)
        if form.get("content") != e.content:
            return _said(f"The row {e.id} changed since the page was loaded: review it again.")
        try:
            cat.review.add(e.id, e.content, str(form.get("decision", "")), str(form.get("reviewer", "")),
                           str(form.get("note", "")), e.plan.job.where)
        except InputError as err:
            return _said(f"{e.id}: {err}")
        return RedirectResponse(f"/#{player.anchor('job', e.id)}", status_code=303)

    app = Starlette(routes=[Route("/", index), Route("/media/{job}/{kind}", media),
                            Route("/decide", decide, methods=["POST"])],
                    middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=list(LOOPBACK))])
    return app


def serve(cat: Catalog, reviewer: str, port: int, echo=print) -> None:
    """Serve until Ctrl-C, on 127.0.0.1 only (docs/delivery.md: share it through SSH or a proxy with auth)."""
    import uvicorn

    cat.refresh()  # a manifest that cannot be read fails here, before the page is up
    echo(f"review page: http://127.0.0.1:{port}/ (Ctrl-C stops it; decisions go to {cat.review.path})")
    uvicorn.run(make_app(cat, reviewer), host="127.0.0.1", port=port, log_level="warning")
