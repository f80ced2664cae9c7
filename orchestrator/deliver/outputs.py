"""The names a job publishes under, and whose they are: its output URIs, our sidecar's mark, the job key already
published there, and why publishing would replace a file s2v did not write."""

from __future__ import annotations

import hashlib
import json

from core.errors import S2VError
from core.settings import Settings
from infra.storage import Uri, parse, storage_for
from orchestrator.plan.records import JobPlan
from orchestrator.workarea.layout import WorkArea

# Marks a sidecar as ours. Its `id` is the job's lineage: a re-render of the same id (any key) may replace the
# files it describes; anything else at those names is not ours to replace.
SIDECAR_SCHEMA = "s2v-batch/sidecar"
_LEGACY_SIDECAR_KEYS = {"id", "job_key", "backend", "inputs", "plan"}  # sidecars written before the marker


def output_uris(plan: JobPlan) -> dict[str, Uri]:
    base = parse(plan.job.output)
    return {ext: base.join(f"{plan.job.id}.{ext}") for ext in ("mp4", "jpg", "json")}


def published_key(plan: JobPlan, settings: Settings) -> str | None:
    """The job key recorded in the published sidecar, if any (the sidecar is written last, so it proves the rest)."""
    uris = output_uris(plan)
    st = storage_for(uris["json"], settings)
    try:
        if not st.exists(uris["json"]):
            return None
        meta = json.loads(st.read_bytes(uris["json"]))
    except (ValueError, OSError):
        return None
    if not is_our_sidecar(meta) or not st.exists(uris["mp4"]):
        return None
    return meta.get("job_key")


def is_our_sidecar(meta) -> bool:
    return isinstance(meta, dict) and (meta.get("schema") == SIDECAR_SCHEMA or _LEGACY_SIDECAR_KEYS <= meta.keys())


def claim_uri(wa: WorkArea, uris: dict[str, Uri]) -> Uri:
    """Where a publish in progress says which outputs it is writing: if it is cut short between the MP4 and the
    sidecar, the next run recognises the sidecar-less MP4 as its own."""
    return wa.root.join("publishing", hashlib.sha256(str(uris["json"]).encode()).hexdigest()[:32] + ".json")


def replace_problem(plan: JobPlan, settings: Settings, work: str) -> str | None:
    """Why publishing this job would replace a file s2v did not publish (None when its names are free or ours).

    Ours: a sidecar of ours for the same job id next to the files, or, with no sidecar, a claim in the work area
    left by our own publish of this job that was cut short. A manifest can name any folder the user can write
    (`output: ~/.docker`, `id: config` replaced ~/.docker/config.json), so anything else is refused."""
    uris = output_uris(plan)
    st = storage_for(uris["json"], settings)
    try:
        present = [u for u in uris.values() if st.exists(u)]
    except S2VError as e:  # cannot tell what is there: refusing is the safe answer
        return f"cannot check what is at {uris['json'].parent()} before publishing there: {e}"
    if not present:
        return None
    hint = "move it away, or choose another output folder or job id"
    if uris["json"] in present:
        try:
            meta = json.loads(st.read_bytes(uris["json"]))
        except (ValueError, S2VError):  # not JSON (or not readable): not a sidecar of ours
            meta = None
        if not is_our_sidecar(meta):
            return f"{uris['json']} exists and is not an s2v sidecar; refusing to replace a file s2v did not publish ({hint})"
        if meta.get("id") != plan.job.id:
            return (f"{uris['json']} is the sidecar of job {meta.get('id')!r}, not {plan.job.id!r}; refusing to replace "
                    f"another job's files ({hint})")
        return None
    wa = WorkArea.at(work, settings)
    try:
        claim = json.loads(wa.storage.read_bytes(claim_uri(wa, uris)))
    except (ValueError, S2VError):  # no claim (or an unreadable one): nothing says these files are ours
        claim = None
    if isinstance(claim, dict) and claim.get("id") == plan.job.id and claim.get("outputs") == {
            k: str(u) for k, u in uris.items()}:
        return None
    names = ", ".join(str(u) for u in present)
    return (f"{names} already exist{'s' if len(present) == 1 else ''} with no s2v sidecar; refusing to replace files "
            f"s2v did not publish (move them away, or delete them if an earlier s2v run left them there)")
