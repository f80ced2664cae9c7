"""Captions: parse and validate SRT/WebVTT, normalise to WebVTT, style for burn-in (ASS), build cues from words."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

from core.errors import Problem

MAX_CHARS = 42  # per line: BBC, Netflix and DCMP caption guides
MAX_LINES = 2
MIN_CUE_S = 1.0
MAX_CUE_S = 7.0
PAUSE_S = 0.5  # a silence this long between words ends a cue
END_TOLERANCE_S = 0.1  # decoders disagree on audio length by a few ms (AAC priming): not a user error
MAX_PROBLEMS = 20  # per file: the first ones say enough to fix it

_TS = r"(?:(\d+):)?(\d{1,2}):(\d{1,2})[,.](\d{1,3})"
TIMING_RE = re.compile(rf"^\s*{_TS}\s*-->\s*{_TS}(?:[ \t]+(.*))?$")
SENTENCE_END = (".", "?", "!", "…", "。", "？", "！")
CLAUSE_END = (",", ";", ":", "،", "、", "，")
NO_SPACE_LANGS = {"zh", "ja", "th", "lo", "km", "my", "yue", "bo"}
_TAG_RE = re.compile(r"<(/?)([a-zA-Z]+)(?:[ .][^>]*)?>")
_ASS_OVERRIDE_RE = re.compile(r"\{\\[^}]*\}")


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    text: str  # WebVTT payload: lines joined by "\n", markup limited to <b> <i> <u>, entities escaped
    line: int = 0  # where it started in its file (0 when built)


@dataclass(frozen=True)
class Word:
    text: str
    start: float
    end: float


# ---------- parsing and validation ----------

def parse_captions(data: bytes, name: str, audio_s: float | None = None) -> tuple[list[Cue], list[Problem]]:
    """Cues of an SRT or WebVTT file and every problem found, each Problem(where='name:line', field=None, …).
    audio_s: cues must end before it (within END_TOLERANCE_S)."""
    problems: list[Problem] = []

    def bad(line: int | None, reason: str, hint: str | None = None) -> None:
        problems.append(Problem(f"{name}:{line}" if line else name, None, reason, hint))

    text = _decode(data, bad)
    if text is None:
        return [], problems
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    first = next((i for i, ln in enumerate(lines) if ln.strip()), None)
    if first is None:
        bad(None, "the caption file is empty", "export the captions again")
        return [], problems
    head = lines[first].lstrip("\ufeff")
    is_vtt = head.startswith("WEBVTT")
    if is_vtt and len(head) > 6 and head[6] not in " \t":
        bad(first + 1, f"header {head[:20]!r} must be 'WEBVTT' alone or followed by a space", None)
    if not is_vtt and name.lower().endswith(".vtt"):
        bad(first + 1, "a WebVTT file must start with a 'WEBVTT' line", "add 'WEBVTT' and a blank line at the top")
        return [], problems
    if not is_vtt and not name.lower().endswith(".srt") and not any("-->" in ln for ln in lines[first:first + 3]):
        bad(first + 1, "neither SubRip (SRT) nor WebVTT: no timing line ('00:00:01,000 --> 00:00:03,000') "
            "at the start", "give an .srt or .vtt file")
        return [], problems
    cues = _vtt_cues(lines, first, bad) if is_vtt else _srt_cues(lines, first, bad)
    if not cues and not problems:
        bad(None, "the caption file has no cues")
    _check_timing(cues, audio_s, bad)
    if len(problems) > MAX_PROBLEMS:
        more = len(problems) - MAX_PROBLEMS
        problems = problems[:MAX_PROBLEMS] + [Problem(name, None, f"… and {more} more problem(s)")]
    return cues, problems


def _decode(data: bytes, bad) -> str | None:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        bad(1, "the file is UTF-16 text", "save it as UTF-8")
        return None
    if b"\x00" in data[:4096]:
        bad(None, "binary data, not a caption file", "give an .srt or .vtt text file")
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        bad(line, f"byte 0x{data[e.start]:02X} is not UTF-8 (the file looks like Latin-1 / Windows-1252)",
            "save the file as UTF-8")
        return None


def _blocks(lines: list[str], start: int):
    """(first line number, lines) of each block separated by blank lines."""
    block: list[str] = []
    at = 0
    for i in range(start, len(lines)):
        ln = lines[i]
        if ln.strip():
            if not block:
                at = i + 1
            block.append(ln)
        elif block:
            yield at, block
            block = []
    if block:
        yield at, block


def _timing(line: str, at: int, bad) -> tuple[float, float] | None:
    m = TIMING_RE.match(line)
    if not m:
        bad(at, f"bad timing line {line.strip()[:60]!r}", "write it as 00:00:01.000 --> 00:00:03.500")
        return None
    g = m.groups()
    out = []
    for h, mi, s, ms in (g[0:4], g[4:8]):
        if int(mi) >= 60 or int(s) >= 60:
            bad(at, f"bad timestamp in {line.strip()[:60]!r}: minutes and seconds must be below 60")
            return None
        if len(ms) != 3:
            bad(at, f"bad timestamp in {line.strip()[:60]!r}: milliseconds need three digits")
            return None
        out.append(int(h or 0) * 3600 + int(mi) * 60 + int(s) + int(ms) / 1000)
    return out[0], out[1]


def _srt_cues(lines: list[str], first: int, bad) -> list[Cue]:
    cues = []
    for at, block in _blocks(lines, first):
        if "-->" in block[0]:
            timing_at, rest = at, block  # the cue number is missing: common, and harmless
        else:
            if not block[0].strip().isdigit():
                bad(at, f"expected a cue number, found {block[0].strip()[:40]!r}",
                    "each cue is: number, timing line, text, blank line")
                continue
            if len(block) < 2:
                bad(at, f"cue {block[0].strip()} has no timing line")
                continue
            timing_at, rest = at + 1, block[1:]
        cues += _cue(rest, timing_at, bad, _srt_payload)
    return cues


def _cue(rest: list[str], timing_at: int, bad, text) -> list[Cue]:
    """The cue of a block from its timing line (rest[0]) on; none, after saying why, when it is broken."""
    t = _timing(rest[0], timing_at, bad)
    if t is None:
        return []
    if len(rest) < 2:
        bad(timing_at, "cue has no text", "delete the cue or give it text")
        return []
    return [Cue(t[0], t[1], text(rest[1:]), timing_at)]


def _vtt_cues(lines: list[str], first: int, bad) -> list[Cue]:
    cues = []
    blocks = list(_blocks(lines, first))
    for n, (at, block) in enumerate(blocks):
        if n == 0:
            continue  # the header block (WEBVTT and its metadata lines)
        head = block[0].strip()
        if head.split(" ")[0] in ("NOTE", "STYLE", "REGION") and "-->" not in head:
            continue
        if "-->" in block[0]:
            timing_at, rest = at, block
        elif len(block) >= 2 and "-->" in block[1]:
            timing_at, rest = at + 1, block[1:]  # the first line was the cue identifier
        else:
            bad(at, f"expected a timing line, found {head[:40]!r}", "write it as 00:00:01.000 --> 00:00:03.500")
            continue
        cues += _cue(rest, timing_at, bad, lambda text: "\n".join(ln.strip() for ln in text))
    return cues


def _check_timing(cues: list[Cue], audio_s: float | None, bad) -> None:
    prev: Cue | None = None
    for c in cues:
        if c.end < c.start:
            bad(c.line, f"cue ends ({ts(c.end)}) before it starts ({ts(c.start)})")
        elif c.end == c.start:
            bad(c.line, f"cue has zero length (starts and ends at {ts(c.start)})", "give it at least one second")
        if prev is not None:
            if c.start < prev.start:
                bad(c.line, f"cue starts at {ts(c.start)}, before the previous cue (line {prev.line}, "
                    f"{ts(prev.start)})", "cues must be in time order")
            elif c.start < prev.end:
                bad(c.line, f"cue starts at {ts(c.start)}, while the previous cue (line {prev.line}) is still "
                    f"shown (until {ts(prev.end)})", "end the previous cue before this one starts")
        if audio_s is not None and c.end > audio_s + END_TOLERANCE_S:
            bad(c.line, f"cue ends at {ts(c.end)}, after the audio ends ({ts(audio_s)})",
                "shorten or delete it: the video ends with the audio")
        prev = c


# ---------- normalising ----------

def _srt_payload(lines: list[str]) -> str:
    """SubRip text → WebVTT payload: keep <b> <i> <u>, drop <font> and {\\ass} overrides, escape the rest."""
    out = []
    for ln in lines:
        ln = _ASS_OVERRIDE_RE.sub("", ln.strip())
        parts, pos = [], 0
        for m in _TAG_RE.finditer(ln):
            parts.append(html.escape(html.unescape(ln[pos:m.start()]), quote=False))
            if m.group(2).lower() in ("b", "i", "u"):
                parts.append(f"<{m.group(1)}{m.group(2).lower()}>")
            pos = m.end()
        parts.append(html.escape(html.unescape(ln[pos:]), quote=False))
        out.append("".join(parts))
    return "\n".join(out)


def plain_text(payload: str) -> str:
    """The words of a WebVTT payload, without markup."""
    return html.unescape(re.sub(r"<[^>]*>", "", payload))


def ts(seconds: float) -> str:
    """WebVTT timestamp, HH:MM:SS.mmm."""
    ms = max(0, int(round(seconds * 1000)))
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def write_vtt(cues: list[Cue], header: str = "") -> str:
    """A WebVTT document; header lines (e.g. X-TIMESTAMP-MAP for HLS) go right after 'WEBVTT'."""
    parts = ["WEBVTT" + (f"\n{header}" if header else "") + "\n"]
    for c in cues:
        parts.append(f"{ts(c.start)} --> {ts(c.end)}\n{c.text}\n")
    return "\n".join(parts)


def shift_window(cues: list[Cue], start: float, end: float) -> list[Cue]:
    """Cues shown in [start, end) — the cues of one HLS subtitle segment (a cue spanning two is in both)."""
    return [c for c in cues if c.end > start and c.start < end]


# ---------- burn-in style ----------

@dataclass(frozen=True)
class BurnStyle:
    """Readable open captions: size follows the frame height, an outline and shadow, inside the title-safe area."""

    font: str = "DejaVu Sans"
    size_of_height: float = 0.055  # ≈ 40 px at 720p, 59 px at 1080p
    margin_v_of_height: float = 0.06
    margin_h_of_width: float = 0.10  # title safe: lines stay within the middle 80 %

    def metrics(self, width: int, height: int) -> dict:
        # 42 characters must still fit a line on narrow (portrait) frames: an average glyph is ≈ 0.5 em
        size = max(10, round(min(height * self.size_of_height, width * (1 - 2 * self.margin_h_of_width) / 21)))
        return {"size": size, "outline": max(1, round(size * 0.08)), "shadow": max(0, round(size * 0.04)),
                "margin_v": round(height * self.margin_v_of_height), "margin_h": round(width * self.margin_h_of_width)}


def _ass_time(s: float) -> str:
    cs = max(0, int(round(s * 100)))
    return f"{cs // 360000}:{cs // 6000 % 60:02d}:{cs // 100 % 60:02d}.{cs % 100:02d}"


def _ass_text(payload: str) -> str:
    text = payload.replace("\\", "\u29f5").replace("{", "(").replace("}", ")")
    for tag, code in (("b", "b"), ("i", "i"), ("u", "u")):
        text = text.replace(f"<{tag}>", f"{{\\{code}1}}").replace(f"</{tag}>", f"{{\\{code}0}}")
    return html.unescape(re.sub(r"<[^>]*>", "", text)).replace("\n", "\\N")


def write_ass(cues: list[Cue], width: int, height: int, style: BurnStyle = BurnStyle()) -> str:
    """An ASS script at the video's own resolution (PlayRes = frame size: sizes are pixels of this output)."""
    m = style.metrics(width, height)
    head = (
        "[Script Info]\nScriptType: v4.00+\nWrapStyle: 0\nScaledBorderAndShadow: yes\n"
        f"PlayResX: {width}\nPlayResY: {height}\n\n[V4+ Styles]\n"
        "Format: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, BackColour, Bold, Italic, "
        "Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, Outline, Shadow, Alignment, MarginL, "
        "MarginR, MarginV, Encoding\n"
        f"Style: Default,{style.font},{m['size']},&H00FFFFFF,&H00FFFFFF,&H00000000,&H80000000,0,0,0,0,100,100,0,0,1,"
        f"{m['outline']},{m['shadow']},2,{m['margin_h']},{m['margin_h']},{m['margin_v']},1\n\n"
        "[Events]\nFormat: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text\n")
    events = [f"Dialogue: 0,{_ass_time(c.start)},{_ass_time(c.end)},Default,,0,0,0,,{_ass_text(c.text)}\n"
              for c in cues]
    return head + "".join(events)


# ---------- cues from word timestamps (captions: auto) ----------

def layout(words: list[str], joiner: str = " ", max_chars: int = MAX_CHARS,
           max_lines: int = MAX_LINES) -> list[str] | None:
    """Lines for a cue's words, or None when they do not fit. Two lines break after punctuation where possible,
    else where the lines are most even (the bottom line the longer: a 'pyramid')."""
    text = joiner.join(words)
    if len(text) <= max_chars:
        return [text]
    if max_lines < 2:
        return None
    best, best_score = None, None
    for k in range(1, len(words)):
        top, bottom = joiner.join(words[:k]), joiner.join(words[k:])
        if len(top) > max_chars or len(bottom) > max_chars:
            continue
        score = abs(len(top) - len(bottom)) + (0 if len(bottom) >= len(top) else 3)
        if top.endswith(SENTENCE_END + CLAUSE_END):
            score -= 12
        if best_score is None or score < best_score:
            best, best_score = [top, bottom], score
    return best


def _split_long(w: Word, max_chars: int) -> list[Word]:
    if len(w.text) <= max_chars:
        return [w]
    n = -(-len(w.text) // max_chars)
    step = (w.end - w.start) / n
    return [Word(w.text[i * max_chars:(i + 1) * max_chars], w.start + i * step, w.start + (i + 1) * step)
            for i in range(n)]


def clean_words(words: list[Word], audio_s: float, max_chars: int = MAX_CHARS) -> list[Word]:
    """Printable text, times inside the audio and in order, words longer than a line split."""
    out: list[Word] = []
    last = 0.0
    for w in words:
        text = " ".join("".join(ch for ch in w.text if ch.isprintable() and ch != "\ufffd").split())
        if not text:
            continue
        start = min(max(w.start, last, 0.0), audio_s)
        end = min(max(w.end, start), audio_s)
        if start >= audio_s:
            break
        last = start
        out.extend(_split_long(Word(text, start, end), max_chars))
    return out


def cues_from_words(words: list[Word], audio_s: float, language: str = "en", *, max_chars: int = MAX_CHARS,
                    max_lines: int = MAX_LINES, min_s: float = MIN_CUE_S, max_s: float = MAX_CUE_S,
                    pause_s: float = PAUSE_S) -> list[Cue]:
    """Caption cues from timed words, as caption style guides ask: ≤ max_lines lines of ≤ max_chars characters,
    min_s–max_s on screen, a new cue after a pause or a sentence, a clause break once a cue is well filled."""
    joiner = "" if language.split("-")[0].lower() in NO_SPACE_LANGS else " "
    words = clean_words(words, audio_s, max_chars)
    groups: list[list[Word]] = []
    cur: list[Word] = []
    for w in words:
        if cur:
            texts = [x.text for x in cur]
            filled = len(joiner.join(texts)) >= 0.6 * max_chars * max_lines
            if (w.start - cur[-1].end >= pause_s or w.end - cur[0].start > max_s
                    or layout(texts + [w.text], joiner, max_chars, max_lines) is None
                    or (texts[-1].endswith(SENTENCE_END) and cur[-1].end - cur[0].start >= min_s)
                    or (filled and texts[-1].endswith(CLAUSE_END))):
                groups.append(cur)
                cur = []
        cur.append(w)
    if cur:
        groups.append(cur)
    timed = [[g[0].start, max(g[-1].end, g[0].start), g] for g in groups]
    # on screen at least min_s: later cues wait for earlier ones, then everything is pulled inside the audio
    for i, t in enumerate(timed):
        if i:
            t[0] = max(t[0], timed[i - 1][1])
        t[1] = min(max(t[1], t[0] + min_s), t[0] + max_s)
    limit = audio_s
    for t in reversed(timed):
        t[1] = min(t[1], limit)
        t[0] = max(0.0, min(t[0], t[1] - min_s))
        limit = t[0]
    cues = []
    for start, end, g in timed:
        if end - start <= 0:
            continue
        lines = layout([w.text for w in g], joiner, max_chars, max_lines) or [joiner.join(w.text for w in g)]
        text = "\n".join(html.escape(ln, quote=False) for ln in lines)
        cues.append(Cue(round(start, 3), round(end, 3), text))
    return cues
