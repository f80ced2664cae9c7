"""A row's content key: everything that changes what a viewer sees and hears (input bytes, prompt, seed, size,
scene policy, captions, chapters, title) and nothing about how it is rendered (backend, weights, LoRA, sampling
settings, output place, renditions, packaging) — so a review given to a CPU draft holds for the GPU render."""

from __future__ import annotations

import hashlib
import json

from orchestrator.intake.inputs import local_path, sha256_file

CONTENT_VERSION = "1"  # bump when the fields below change: every review is then asked for again
CONTENT_FIELDS = ("prompt", "negative_prompt", "seed", "size", "max_scene_s", "min_scene_s", "min_pause_s",
                  "caption_language", "captions_burn", "title")
CONTENT_FILES = ("audio", "image", "pose")


def content_key(job, settings, shas: dict[str, str | None] | None = None) -> str:
    """The key; shas: digests already known (a plan's), by field, so no file is read twice."""
    shas = dict(shas or {})
    for f in CONTENT_FILES + ("captions",):
        loc = getattr(job, f)
        if f not in shas:
            shas[f] = None if loc is None or (f == "captions" and job.captions_auto) else \
                sha256_file(local_path(loc, settings))
    doc = {"v": CONTENT_VERSION, "files": shas, "auto_captions": job.captions_auto,
           "fields": {f: getattr(job, f) for f in CONTENT_FIELDS},
           "chapters": [c.model_dump() for c in job.chapters]}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:24]


def plan_content_key(plan, settings) -> str:
    """content_key from a JobPlan, reusing its digests."""
    return content_key(plan.job, settings, {"audio": plan.audio_sha256, "image": plan.image_sha256,
                                            "pose": plan.pose_sha256})
