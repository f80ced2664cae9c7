"""A published job whose captions or renditions changed: its post step alone, as a CPU task (no GPU, no clips), from
the published master — or, when that master has captions burned in, from the checkpointed clips."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from core.errors import RenderError
from core.settings import Settings
from infra.storage import storage_for
from orchestrator.workarea.layout import WorkArea
from orchestrator.plan.records import JobPlan
from orchestrator.deliver.outputs import files_record, output_uris, publish_owned
from orchestrator.deliver.post import STATS_KEYS, caption_key, deliver, master_key, rendition_key



def _clips_complete(plan: JobPlan, work: WorkArea) -> bool:
    done = work.done_clips(plan.key)
    return all(len(done.get(s.index, ())) >= len(s.clips) for s in plan.scenes)


def _needs_clean_master(plan: JobPlan, settings: Settings, previous: dict) -> bool:
    """Whether this post step encodes pictures (a new master or rendition); a change that encodes none — a
    package, a transcript, a chapters track — works from the published files and needs no clips."""
    ckey = caption_key(plan, settings)
    if (previous.get("post") or {}).get("master_key") != master_key(plan, settings, ckey):
        return True
    kept = {r.get("name"): r.get("key") for r in previous.get("renditions") or []}
    return any(kept.get(r.name) != rendition_key(plan, r, ckey, settings) for r in plan.job.renditions)


def repost(plan: JobPlan, settings: Settings, work: str, lease: str | None = None) -> dict:
    """Runs as a Ray task: the post step alone for a published job. Returns the new sidecar."""
    from orchestrator.deliver.publish import stitch_and_publish

    t0 = time.monotonic()
    uris = output_uris(plan)
    st = storage_for(uris["json"], settings)
    previous = json.loads(st.read_bytes(uris["json"]))
    if (previous.get("captions") or {}).get("burned") and _needs_clean_master(plan, settings, previous):
        # the published master has open captions: a clean one comes from the clips, by stream copy
        wa = WorkArea.at(work, settings)
        if not _clips_complete(plan, wa):
            raise RenderError("the published master has burned-in captions and the job's clips are no longer in "
                              f"the work area {work}: rerun with --force to render the job again")
        return stitch_and_publish(plan, settings, work, {k: previous[k] for k in STATS_KEYS if k in previous},
                                  lease=lease)
    with tempfile.TemporaryDirectory(prefix=f"s2v-post-{plan.job.id}-") as tmp:
        tmpd = Path(tmp)
        master = tmpd / "published.mp4"
        st.download(uris["mp4"], master)
        d = deliver(plan, settings, work, master, tmpd, previous=previous)
        meta = {k: v for k, v in previous.items() if k not in ("captions", "renditions", "hls", "post", "delivered")}
        meta.update(d.meta)
        meta["outputs"] = {k: v for k, v in (previous.get("outputs") or {}).items()
                           if k in ("mp4", "jpg", "json")} | d.meta.get("delivered", {})
        meta["timings"] = {**(previous.get("timings") or {}), "post_s": round(time.monotonic() - t0, 3)}
        files = ([(d.master, uris["mp4"])] if d.master else []) + d.files
        meta["files"] = files_record(previous, plan, [u for _, u in files] + [uris["json"]], settings)
        side = tmpd / f"{plan.job.id}.json"
        side.write_text(json.dumps(meta, indent=1, sort_keys=True))
        publish_owned(plan, settings, work, files + [(side, uris["json"])], lease)
    return meta
