"""Published jobs whose captions or renditions changed: rerun only their post step, as CPU Ray tasks (no GPU,
no clips), from the published master — or, when that master has captions burned in, from the checkpointed clips."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from core.errors import RenderError, TransientError
from core.retry import retrying
from core.settings import Settings
from infra.storage import storage_for
from orchestrator.workarea.layout import WorkArea
from orchestrator.plan.planner import JobPlan
from orchestrator.deliver.post import STATS_KEYS, deliver, deliverables



def _clips_complete(plan: JobPlan, work: WorkArea) -> bool:
    done = work.done_clips(plan.key)
    return all(len(done.get(s.index, ())) >= len(s.clips) for s in plan.scenes)


def repost(plan: JobPlan, settings: Settings, work: str) -> dict:
    """Runs as a Ray task: the post step alone for a published job. Returns the new sidecar."""
    from orchestrator.deliver.publish import output_uris, stitch_and_publish

    t0 = time.monotonic()
    uris = output_uris(plan)
    st = storage_for(uris["json"], settings)
    previous = json.loads(retrying("storage")(st.read_bytes, uris["json"]))
    if (previous.get("captions") or {}).get("burned"):
        # the published master has open captions: a clean one comes from the clips, by stream copy
        wa = WorkArea.at(work, settings)
        if not _clips_complete(plan, wa):
            raise RenderError("the published master has burned-in captions and the job's clips are no longer in "
                              f"the work area {work}: rerun with --force to render the job again")
        return stitch_and_publish(plan, settings, work, {k: previous[k] for k in STATS_KEYS if k in previous})
    with tempfile.TemporaryDirectory(prefix=f"s2v-post-{plan.job.id}-") as tmp:
        tmpd = Path(tmp)
        master = tmpd / "published.mp4"
        retrying("storage")(st.download, uris["mp4"], master)
        d = deliver(plan, settings, work, master, tmpd, previous=previous)
        meta = {k: v for k, v in previous.items() if k not in ("captions", "renditions", "hls", "post", "delivered")}
        meta.update(d.meta)
        meta["outputs"] = {k: v for k, v in (previous.get("outputs") or {}).items()
                           if k in ("mp4", "jpg", "json")} | d.meta.get("delivered", {})
        meta["timings"] = {**(previous.get("timings") or {}), "post_s": round(time.monotonic() - t0, 3)}
        side = tmpd / f"{plan.job.id}.json"
        side.write_text(json.dumps(meta, indent=1, sort_keys=True))
        files = ([(d.master, uris["mp4"])] if d.master else []) + d.files + [(side, uris["json"])]
        retrying("storage")(st.publish, files)
    return meta


def run_reposts(plans: list[JobPlan], settings: Settings, work: str, results: dict, notify, progress) -> None:
    """Post steps of published jobs, in parallel on the cluster's CPUs; each job's outcome lands in results."""
    if not plans:
        return
    import ray

    task = ray.remote(repost).options(num_cpus=settings.stitch_cpus, num_gpus=0, max_retries=2,
                                      retry_exceptions=[TransientError])
    pending = {task.remote(p, settings, work): p for p in plans}
    for p in plans:
        results[p.job.id].status = "posting"
    deadline = time.monotonic() + 3600
    while pending and time.monotonic() < deadline:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=5.0)
        for ref in ready:
            p = pending.pop(ref)
            r = results[p.job.id]
            try:
                meta = ray.get(ref, timeout=60)
                r.status, r.reason = "published", None
                r.deliverables = deliverables(meta)
            except Exception as e:  # noqa: BLE001 - one job's failure never stops the others
                r.status, r.reason = "failed", f"post step: {getattr(e, 'cause', None) or e}"
            notify(r)
            progress.job(p.job.id, r.status)
    for p in pending.values():
        results[p.job.id].status, results[p.job.id].reason = "failed", "post step did not finish within an hour"
