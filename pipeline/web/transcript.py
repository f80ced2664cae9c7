"""A lesson's transcript from its captions: paragraphs at pauses and chapter starts, as plain text and as an
accessible HTML page (WCAG 2.1 asks for a transcript beside captions)."""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from pipeline.captions import Cue, plain_text

PARAGRAPH_PAUSE_S = 2.0  # a silence this long between cues starts a new paragraph


@dataclass
class Paragraph:
    start: float
    text: str


@dataclass
class Section:
    title: str | None  # the chapter's title; None before the first chapter (or without chapters)
    start: float
    paragraphs: list[Paragraph] = field(default_factory=list)


def clock(t: float) -> str:
    """m:ss, or h:mm:ss past an hour: how players show a time."""
    s = int(t)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def sections(cues: list[Cue], chapters: list[tuple[float, float, str]]) -> list[Section]:
    """The cues' words grouped by chapter, then into paragraphs at long pauses."""
    out = [Section(None, 0.0)] if not chapters or chapters[0][0] > 0 else []
    out += [Section(title, a) for a, _, title in chapters]
    prev_end = 0.0
    for c in cues:
        words = " ".join(plain_text(c.text).split())
        if not words:
            continue
        sec = next(s for s in reversed(out) if s.start <= c.start + 1e-6 or s is out[0])
        if not sec.paragraphs or c.start - prev_end >= PARAGRAPH_PAUSE_S:
            sec.paragraphs.append(Paragraph(c.start, words))
        else:
            sec.paragraphs[-1].text += " " + words
        prev_end = c.end
    return [s for s in out if s.paragraphs or s.title]


def transcript_text(title: str, secs: list[Section]) -> str:
    lines = [title, "=" * len(title), ""]
    for s in secs:
        if s.title:
            lines += [f"[{clock(s.start)}] {s.title}", ""]
        lines += [f"{p.text}\n" for p in s.paragraphs]
    return "\n".join(lines).rstrip() + "\n"


def transcript_fragment(secs: list[Section], seek: bool) -> str:
    """The transcript as HTML sections; seek: times are buttons that move the player there (the player page)."""
    def at(t: float) -> str:
        label = clock(t)
        if seek:
            return (f'<button type="button" class="s2v-seek" data-t="{t:.3f}" aria-label="Play from {label}">'
                    f'{label}</button> ')
        return f'<span class="s2v-time">{label}</span> '

    parts = []
    for s in secs:
        body = "".join(f"<p>{at(p.start)}{html.escape(p.text)}</p>" for p in s.paragraphs)
        head = f"<h3>{at(s.start)}{html.escape(s.title)}</h3>" if s.title else ""
        parts.append(f"<section>{head}{body}</section>")
    return "".join(parts)


def transcript_page(title: str, lang: str, secs: list[Section]) -> str:
    """A standalone, accessible transcript page (no script: it reads the same in any browser or reader)."""
    t = html.escape(title)
    return (f'<!doctype html><html lang="{html.escape(lang)}"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>Transcript: {t}</title>'
            '<style>body{font:1.05rem/1.6 system-ui,sans-serif;max-width:42rem;margin:2rem auto;padding:0 1rem;'
            'color:#111;background:#fff}.s2v-time{color:#555;font-variant-numeric:tabular-nums}</style></head>'
            f'<body><main><h1>Transcript: {t}</h1>{transcript_fragment(secs, seek=False)}</main></body></html>\n')
