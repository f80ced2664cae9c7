"""What a plan will cost: seconds per clip that learn (measured per backend, GPU type, size, steps and CFG, kept in
the work area), GPU-seconds and USD per job, and the frames a plan throws away."""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass

from core.settings import Settings
from orchestrator.plan.records import JobPlan, expected_clip_s
from pipeline import audio as audio_mod
from pipeline.backends import backend_spec

log = logging.getLogger("s2v.estimates")

FILE = "estimates.json"
KEEP = 64  # newest samples kept per key: old hardware, drivers or library versions age out
VERSION = 1


@dataclass(frozen=True)
class Estimate:
    seconds: float  # expected GPU-seconds per clip
    source: str  # "measured" or "default"
    jobs: int = 0  # samples behind a measured figure
    clips: int = 0


def key_for(backend: str, gpu_type: str, width: int, height: int, steps: int | None, guidance: float | None) -> str:
    """What a clip's time depends on: the model, the card, the token count (size), the steps, and whether CFG
    doubles every step (guidance 1 runs one pass). `gpu_type` is the price-table key the user renders on."""
    cfg = "cfg1" if guidance == 1 else "cfg"
    return f"{backend}|{gpu_type}|{width}x{height}|steps={steps if steps is not None else 'default'}|{cfg}"


def plan_key(plan, settings) -> str:
    return key_for(plan.job.backend, settings.gpu_type, plan.width, plan.height, plan.job.steps, plan.job.guidance)


def weighted_median(values: list[float], weights: list[float]) -> float:
    """The value below which half the weight lies: one slow or fast job (a cold cache, a throttled card) cannot
    drag it the way a mean or the last value would."""
    pairs = sorted(zip(values, weights))
    half, acc = sum(w for _, w in pairs) / 2, 0.0
    for v, w in pairs:
        acc += w
        if acc >= half:
            return v
    return pairs[-1][0]


class Table:
    """The learned figures: key → newest samples {s: seconds per clip, clips, t: unix time, run}."""

    def __init__(self, entries: dict[str, list[dict]] | None = None):
        self.entries = entries or {}

    def estimate(self, key: str, default: float) -> Estimate:
        samples = self.entries.get(key) or []
        if not samples:
            return Estimate(default, "default")
        s = weighted_median([x["s"] for x in samples], [x["clips"] for x in samples])
        return Estimate(s, "measured", len(samples), sum(x["clips"] for x in samples))

    def for_plan(self, plan, settings) -> Estimate:
        return self.estimate(plan_key(plan, settings), settings.expected_clip_s(plan.job.backend))

    def merged(self, new: dict[str, list[dict]]) -> "Table":
        out = {k: list(v) for k, v in self.entries.items()}
        for k, v in new.items():
            out[k] = sorted(out.get(k, []) + v, key=lambda x: x.get("t", 0))[-KEEP:]
        return Table(out)

    def to_bytes(self) -> bytes:
        return json.dumps({"version": VERSION, "entries": self.entries}, indent=1, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Table":
        doc = json.loads(data)
        entries = doc.get("entries", {}) if isinstance(doc, dict) else {}
        clean = {k: [x for x in v if _valid(x)] for k, v in entries.items() if isinstance(v, list)}
        return cls({k: v for k, v in clean.items() if v})


def _valid(x) -> bool:
    return (isinstance(x, dict) and isinstance(x.get("s"), (int, float)) and x["s"] > 0
            and isinstance(x.get("clips"), int) and x["clips"] > 0)


def _where(settings):
    from infra.storage import parse, storage_for

    root = parse(settings.work)
    return root, root.join(FILE), storage_for(root, settings)


def load(settings) -> Table:
    """The table in settings.work; empty (defaults apply) when there is none or it cannot be read — an estimate
    never stops a plan."""
    try:
        _, uri, st = _where(settings)
        return Table.from_bytes(st.read_bytes(uri)) if st.exists(uri) else Table()
    except Exception as e:  # noqa: BLE001 - unreadable or foreign content: fall back to the defaults, say so
        log.warning("could not read learned clip times from %s: %s (using settings.seconds_per_clip)", settings.work, e)
        return Table()


@contextmanager
def _locked(root):
    """Serialise read-merge-write between runs sharing a local work area. Object stores have no lock here: two
    runs finishing in the same second may lose one run's samples, which only delays learning."""
    if root.scheme != "file":
        yield
        return
    import fcntl

    os.makedirs(root.key, exist_ok=True)
    with open(os.path.join(root.key, ".estimates.lock"), "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def record(settings, samples: dict[str, list[dict]]) -> None:
    """Merge new samples into the work area's table (read, merge, atomic write)."""
    if not samples:
        return
    root, uri, st = _where(settings)
    with _locked(root):
        current = Table()
        if st.exists(uri):
            try:
                current = Table.from_bytes(st.read_bytes(uri))
            except ValueError as e:  # a damaged file is replaced, not a reason to lose this run's figures
                log.warning("replacing unreadable %s: %s", uri, e)
        st.write_bytes(uri, current.merged(samples).to_bytes())


def record_run(settings, plans, results: dict, run_id: str) -> None:
    """After a run: one sample per job that rendered clips (its mean backend seconds per clip, weighted by its
    clips). Never raises: a run's outcome does not depend on its statistics."""
    now = time.time()
    samples: dict[str, list[dict]] = {}
    for p in plans:
        r = results.get(p.job.id)
        clips = getattr(r, "clips_rendered", 0) if r is not None else 0
        if clips > 0 and r.gpu_s > 0:
            samples.setdefault(plan_key(p, settings), []).append(
                {"s": round(r.gpu_s / clips, 4), "clips": int(clips), "t": now, "run": run_id})
    try:
        record(settings, samples)
    except Exception as e:  # noqa: BLE001 - see above
        log.warning("could not record clip times in %s: %s", settings.work, e)


# ---------- what a plan will cost ----------

def waste(plan: JobPlan) -> dict:
    """Frames the GPU renders for this plan and how many of them are thrown away: `trimmed` at scene ends (the
    last clip of a scene is rendered whole), `lead_in` at scene starts (Wan drops 3 frames of each first clip)."""
    spec = backend_spec(plan.job.backend)
    rendered = plan.clips * spec.clip_frames
    lead_in = len(plan.scenes) * (spec.clip_frames - spec.first_clip_frames)
    trimmed = sum(audio_mod.trimmed_frames(s.frames, spec.first_clip_frames, spec.clip_frames) for s in plan.scenes)
    return {"rendered_frames": rendered, "trimmed_frames": trimmed, "lead_in_frames": lead_in,
            "trimmed_share": round(trimmed / rendered, 5) if rendered else 0.0}


def estimate(plans, settings: Settings) -> dict:
    """GPU-seconds and cost per job and in total (learned seconds per clip where measured), frames thrown away,
    and long silences."""
    rows, total_s = [], 0.0
    for p in plans:
        clip_s = expected_clip_s(p, settings)
        s = p.clips * clip_s
        total_s += s
        rows.append({"id": p.job.id, "scenes": len(p.scenes), "clips": p.clips, "frames": p.frames,
                     "duration_s": round(p.duration_s, 3), **waste(p),
                     "clip_s": round(clip_s, 3), "clip_s_source": p.expected_clip_source if p.expected_clip_s else "default",
                     "gpu_s": s, "cost_usd": s / 3600 * settings.price(),
                     "silence_s": round(sum(e - a for a, e in p.silences), 3),
                     "long_silences": [[round(a, 3), round(e, 3)] for a, e in p.silences]})
    tot = {k: sum(r[k] for r in rows) for k in ("scenes", "clips", "frames", "rendered_frames", "trimmed_frames",
                                                "lead_in_frames")}
    return {"jobs": rows, "total": {"jobs": len(rows), **tot,
                                    "trimmed_share": round(tot["trimmed_frames"] / tot["rendered_frames"], 5)
                                    if tot["rendered_frames"] else 0.0,
                                    "gpu_s": total_s, "cost_usd": total_s / 3600 * settings.price(),
                                    "price_per_gpu_hour": settings.price(),
                                    "silence_s": round(sum(r["silence_s"] for r in rows), 3),
                                    "long_silence_s": settings.long_silence_s}}
