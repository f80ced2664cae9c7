"""Chapters of a lesson: the field's records and times, a WebVTT chapters track, and MP4 chapter metadata (an
ffmetadata file muxed by stream copy)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from pipeline.captions import ts

_CLOCK_RE = re.compile(r"^(?:(\d+):)?(\d{1,2}):(\d{1,2}(?:\.\d{1,3})?)$")
MAX_TITLE = 120  # a chapter menu line, not a paragraph


def seconds(v: Any) -> float:
    """A chapter time: seconds (12, 12.5, "12.5") or a clock ("mm:ss", "h:mm:ss", with optional .mmm)."""
    if isinstance(v, bool):
        raise ValueError("a time is seconds (e.g. 75) or mm:ss (e.g. 1:15), not true/false")
    if isinstance(v, (int, float)):
        t = float(v)
    elif isinstance(v, str) and (m := _CLOCK_RE.match(v.strip())):
        h, mnt, s = int(m.group(1) or 0), int(m.group(2)), float(m.group(3))
        if mnt >= 60 and m.group(1) is not None or s >= 60:
            raise ValueError(f"{v!r}: minutes and seconds must be below 60")
        t = h * 3600 + mnt * 60 + s
    else:
        try:
            t = float(str(v).strip())
        except ValueError:
            raise ValueError(f"{v!r} is not a time: give seconds (75) or mm:ss (1:15)") from None
    if not t >= 0 or t == float("inf"):
        raise ValueError(f"{v!r}: a chapter time must be 0 or more seconds")
    return round(t, 3)


class Chapter(BaseModel):
    """One chapter: where it starts and its title (the end is the next chapter's start, or the audio's end)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    at: float
    title: str

    @field_validator("at", mode="before")
    @classmethod
    def _at(cls, v: Any) -> float:
        return seconds(v)

    @field_validator("title")
    @classmethod
    def _title(cls, v: str) -> str:
        v = " ".join(v.split())
        if not v:
            raise ValueError("a chapter needs a title")
        if len(v) > MAX_TITLE:
            raise ValueError(f"a chapter title is at most {MAX_TITLE} characters (this one has {len(v)})")
        return v


def check_order(chapters: tuple[Chapter, ...]) -> tuple[Chapter, ...]:
    """Chapters strictly in time order (one start per chapter): ValueError naming the first out of place."""
    for a, b in zip(chapters, chapters[1:]):
        if b.at <= a.at:
            raise ValueError(f"chapter {b.title!r} at {b.at:g} s does not come after {a.title!r} at {a.at:g} s: "
                             "list chapters in time order, one start each")
    return chapters


def spans(chapters: tuple[Chapter, ...], duration_s: float) -> list[tuple[float, float, str]]:
    """(start, end, title) of each chapter inside the audio."""
    starts = [c.at for c in chapters] + [duration_s]
    return [(c.at, min(starts[i + 1], duration_s), c.title) for i, c in enumerate(chapters) if c.at < duration_s]


def write_chapters_vtt(chapters: tuple[Chapter, ...], duration_s: float) -> str:
    """A WebVTT chapters track (`<track kind="chapters">`): one cue per chapter, titles as plain text."""
    parts = ["WEBVTT\n"]
    for i, (a, b, title) in enumerate(spans(chapters, duration_s), 1):
        text = title.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        parts.append(f"chapter-{i}\n{ts(a)} --> {ts(b)}\n{text}\n")
    return "\n".join(parts)


def _ffmeta_escape(s: str) -> str:
    # ffmetadata: '=', ';', '#', '\' and newlines are special in keys and values (ffmpeg-formats, "Metadata")
    return re.sub(r"([=;#\\\n])", r"\\\1", s)


def write_ffmetadata(chapters: tuple[Chapter, ...], duration_s: float) -> str:
    """The ffmetadata file ffmpeg reads to write MP4 chapters (a QuickTime chapter track + Nero `chpl`)."""
    lines = [";FFMETADATA1"]
    for a, b, title in spans(chapters, duration_s):
        lines += ["[CHAPTER]", "TIMEBASE=1/1000", f"START={round(a * 1000)}", f"END={round(b * 1000)}",
                  f"title={_ffmeta_escape(title)}"]
    return "\n".join(lines) + "\n"


def with_chapters_argv(src: str, ffmetadata: str, dest: str) -> list[str]:
    """Every stream of `src` by stream copy (bit-exact), with the chapters of `ffmetadata` and none of src's."""
    return ["-nostdin", "-v", "error", "-y", "-i", src, "-f", "ffmetadata", "-i", ffmetadata,
            "-map", "0", "-map_chapters", "1", "-c", "copy",
            # bit-exact, but not media.BITEXACT: its -map_metadata -1 would drop the chapter titles and the
            # captions track's language
            "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact", "-movflags", "+faststart",
            "-f", "mp4", dest]


def chapters_of(doc: Any) -> list[dict]:
    """The chapters a sidecar records ([{at, title}]), [] when none: what the player and report show."""
    out = (doc or {}).get("chapters") if isinstance(doc, dict) else None
    return [c for c in (out or {}).get("list", []) if isinstance(c, dict)] if isinstance(out, dict) else []
