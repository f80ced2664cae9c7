"""Quality notes of a published job, from its sidecar: what a reviewer should look at first (stretches near the
black and frozen gates, long silences where the presenter idles), worst first."""

from __future__ import annotations

from pipeline.web.transcript import clock

WARN, INFO = "warning", "note"
FROZEN_NOTE_S = 2.0  # without a gate: a still picture this long is worth a look (a presenter never stands still)


def notes(meta: dict) -> list[dict]:
    """[{severity, score, text}], worst first; [] for a sidecar without quality measurements."""
    q = (meta or {}).get("quality") or {}
    out = []
    frozen, limit = q.get("longest_frozen_s") or 0, q.get("max_frozen_s") or 0
    if frozen >= (0.5 * limit if limit else FROZEN_NOTE_S):
        out.append({"severity": WARN, "score": frozen / (limit or 2 * FROZEN_NOTE_S),
                    "text": f"a frozen stretch of {frozen:.1f} s" + (f" (the gate stops a job at {limit:g} s)"
                                                                    if limit else "")})
    black, limit = q.get("longest_black_s") or 0, q.get("max_black_s") or 0
    if black:
        out.append({"severity": WARN, "score": 1.0 + (black / limit if limit else 0.0),
                    "text": f"{black:.1f} s of black frames" + (f" (the gate stops a job at {limit:g} s)"
                                                                 if limit else "")})
    for a, b in q.get("long_silences") or []:
        out.append({"severity": INFO, "score": min(0.49, (b - a) / 60),
                    "text": f"{b - a:.1f} s without speech at {clock(a)}: the presenter idles there"})
    return sorted(out, key=lambda n: -n["score"])


def worst(notes_: list[dict]) -> float:
    """A job's worst score: how the report orders jobs (0 without notes)."""
    return max((n["score"] for n in notes_), default=0.0)
