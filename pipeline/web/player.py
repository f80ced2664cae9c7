"""The lesson player, one HTML fragment for every place a lesson is watched (SCORM launch page, run report, review
page): an HTML5 video with its captions and chapters tracks, a chapter menu and a transcript that seek, and the
script that talks to an LMS when there is one."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from importlib import resources

from pipeline.web.transcript import Section, clock, transcript_fragment

CSS = """.s2v-lesson{max-width:60rem}.s2v-lesson video{width:100%;max-height:70vh;background:#000}
.s2v-lesson button.s2v-seek{font:inherit;border:1px solid #767676;background:#fff;border-radius:3px;padding:0 .3em;
cursor:pointer;font-variant-numeric:tabular-nums}
.s2v-lesson button.s2v-seek[aria-current]{background:#0b57d0;color:#fff}
.s2v-lesson button.s2v-seek:focus-visible,.s2v-lesson video:focus-visible{outline:3px solid #0b57d0;outline-offset:2px}
.s2v-chapters ol{padding-left:1.5em}.s2v-chapters li{margin:.2em 0}.s2v-transcript{max-height:24rem;overflow:auto;
border:1px solid #ccc;padding:0 1em}.s2v-transcript h3{font-size:1rem}"""


@dataclass(frozen=True)
class Track:
    src: str
    lang: str
    label: str


@dataclass(frozen=True)
class Lesson:
    """What the player shows; every location is a URL relative to the page (or absolute)."""

    id: str
    title: str
    mp4: str
    lang: str = "en"
    hls: str | None = None
    poster: str | None = None
    captions: Track | None = None
    chapters_vtt: str | None = None
    chapters: tuple[tuple[float, float, str], ...] = ()
    transcript: tuple[Section, ...] = ()
    links: tuple[tuple[str, str], ...] = field(default_factory=tuple)  # (href, label): transcripts, package…
    completion: float = 0.9
    scorm: str | None = None  # "1.2" or "2004": the page is a SCO and looks for that LMS API


def script() -> str:
    return resources.files("pipeline.web").joinpath("lesson.js").read_text(encoding="utf-8")


def _a(v: str) -> str:
    return html.escape(v, quote=True)


def anchor(prefix: str, job_id: str) -> str:
    """An HTML id for a job on a page of many ('job-lesson-01'): letters and digits kept, the rest '-'."""
    return prefix + "-" + "".join(ch if ch.isalnum() else "-" for ch in job_id)


def fragment(ls: Lesson, heading: str = "h2") -> str:
    """The player for one lesson (ids in it are prefixed by the lesson's id: a report holds many)."""
    pid = anchor("s2v", ls.id)
    sources = (f'<source src="{_a(ls.hls)}" type="application/vnd.apple.mpegurl">' if ls.hls else "") + \
        f'<source src="{_a(ls.mp4)}" type="video/mp4">'
    tracks = ""
    if ls.captions:
        c = ls.captions
        tracks += f'<track kind="captions" src="{_a(c.src)}" srclang="{_a(c.lang)}" label="{_a(c.label)}" default>'
    if ls.chapters_vtt:
        tracks += f'<track kind="chapters" src="{_a(ls.chapters_vtt)}" srclang="{_a(ls.lang)}" label="Chapters">'
    poster = f' poster="{_a(ls.poster)}"' if ls.poster else ""
    attrs = f' data-completion="{ls.completion:g}"' + (f' data-scorm="{_a(ls.scorm)}"' if ls.scorm else "")
    parts = [f'<div class="s2v-lesson" id="{pid}"{attrs}>',
             f'<video controls preload="metadata" playsinline{poster} '
             f'aria-label="Video: {_a(ls.title)}">{sources}{tracks}'
             f'<p>Your browser cannot play this video: <a href="{_a(ls.mp4)}">download it</a>.</p></video>',
             '<p class="s2v-status" role="status" aria-live="polite"></p>']
    if ls.chapters:
        items = "".join(f'<li><button type="button" class="s2v-seek" data-t="{a:.3f}">{clock(a)}</button> '
                        f'{html.escape(title)}</li>' for a, _, title in ls.chapters)
        parts.append(f'<nav class="s2v-chapters" aria-labelledby="{pid}-ch"><{heading} id="{pid}-ch">Chapters'
                     f'</{heading}><ol>{items}</ol></nav>')
    if ls.transcript:
        parts.append(f'<section class="s2v-transcript" aria-labelledby="{pid}-tr" tabindex="0"><{heading} '
                     f'id="{pid}-tr">Transcript</{heading}>{transcript_fragment(list(ls.transcript), seek=True)}'
                     '</section>')
    if ls.links:
        parts.append("<ul class=\"s2v-links\">" + "".join(f'<li><a href="{_a(h)}">{html.escape(t)}</a></li>'
                                                      for h, t in ls.links) + "</ul>")
    parts.append("</div>")
    return "".join(parts)


def page(ls: Lesson, script_src: str | None = None) -> str:
    """A whole page for one lesson (the SCORM launch page): the script from `script_src`, or inline."""
    js = f'<script src="{_a(script_src)}"></script>' if script_src else f"<script>{script()}</script>"
    return (f'<!doctype html><html lang="{_a(ls.lang)}"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{html.escape(ls.title)}'
            f'</title><style>body{{font:1rem/1.5 system-ui,sans-serif;margin:1rem auto;max-width:62rem;'
            f'padding:0 1rem;color:#111;background:#fff}}{CSS}</style></head><body><main>'
            f'<h1>{html.escape(ls.title)}</h1>{fragment(ls)}</main>{js}</body></html>\n')
