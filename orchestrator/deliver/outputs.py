"""The names a job publishes under, and whose they are: its output URIs, our sidecar's record of every file it
published, the job key already published there, folder reports, and why publishing would replace a file s2v did
not write."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from core.errors import RenderError, S2VError
from core.settings import Settings
from infra.storage import Uri, parse, storage_for
from orchestrator.plan.records import JobPlan
from orchestrator.workarea.layout import WorkArea

# Marks a sidecar as ours. Its `id` is the job's lineage: a re-render of the same id (any key) may replace the
# files it records; anything else at those names is not ours to replace.
SIDECAR_SCHEMA = "s2v-batch/sidecar"
_LEGACY_SIDECAR_KEYS = {"id", "job_key", "backend", "inputs", "plan"}  # sidecars written before the marker
REPORT_SCHEMA = "s2v-batch/report"
REPORT_GENERATOR = '<meta name="generator" content="s2v-batch">'
_LEGACY_REPORT_KEYS = {"run_id", "manifest", "totals", "jobs"}
_LEGACY_REPORT_HTML = '<!doctype html><html><head><meta charset="utf-8"><title>s2v run '
HINT = "move it away, or choose another output folder or job id"


def output_uris(plan: JobPlan) -> dict[str, Uri]:
    base = parse(plan.job.output)
    return {ext: base.join(f"{plan.job.id}.{ext}") for ext in ("mp4", "jpg", "json")}


def hls_tree(plan: JobPlan) -> Uri:
    """The prefix of the job's HLS tree (with its slash: `talk.hls-old/` is not in the tree of `talk`)."""
    return parse(plan.job.output).join(f"{plan.job.id}.hls/")


def lease_names(plan: JobPlan) -> list[str]:
    """The leases a run takes to render or repost the job: its key (its checkpoints) and its output (two versions
    of a job, different keys, publish to the same names)."""
    return [plan.key, "out-" + hashlib.sha256(str(output_uris(plan)["json"]).encode()).hexdigest()[:24]]


def known_names(plan: JobPlan) -> list[Uri]:
    """Every name the job will publish that is known before it renders (HLS segment names are not: the tree is
    listed instead)."""
    base, job = parse(plan.job.output), plan.job
    names = list(output_uris(plan).values())
    if job.captions:
        names.append(base.join(f"{job.id}.vtt"))
    names += [base.join(f"{job.id}.{r.name}.mp4") for r in job.renditions if r.format == "mp4"]
    from orchestrator.deliver.lesson import names as lesson_names, wanted

    return names + [lesson_names(plan)[n] for n in wanted(plan)]


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


def recorded_files(meta: dict, plan: JobPlan) -> tuple[set[str], str | None]:
    """(URIs a sidecar of ours says s2v published, a tree prefix it owns whole): a sidecar lists every file it and
    the publishes before it wrote; one written before that list owns its outputs and, if it had HLS, its tree."""
    files = {str(output_uris(plan)[k]) for k in ("mp4", "jpg", "json")}
    if isinstance(meta.get("files"), list):
        return files | {str(f) for f in meta["files"]}, None
    outputs = meta.get("outputs")
    files |= {str(v) for v in outputs.values()} if isinstance(outputs, dict) else set()
    return files, (str(hls_tree(plan)) if meta.get("hls") else None)


def claim_uri(wa: WorkArea, uris: dict[str, Uri]) -> Uri:
    """Where a publish in progress says which files it is writing: if it is cut short before the sidecar, the
    next run recognises those files as its own."""
    return wa.root.join("publishing", hashlib.sha256(str(uris["json"]).encode()).hexdigest()[:32] + ".json")


def _read_json(st, uri: Uri):
    try:
        return json.loads(st.read_bytes(uri))
    except (ValueError, S2VError, OSError):  # absent, not JSON or not readable: proves nothing
        return None


def _owned(plan: JobPlan, settings: Settings, work: str, sidecar) -> tuple[set[str], list[str]]:
    """(URIs s2v published for this job id, tree prefixes it owns): from our sidecar and from a claim left by a
    publish of this job that was cut short."""
    uris = output_uris(plan)
    files, prefixes = set(), []
    if is_our_sidecar(sidecar) and sidecar.get("id") == plan.job.id:
        files, prefix = recorded_files(sidecar, plan)
        prefixes += [prefix] if prefix else []
    wa = WorkArea.at(work, settings)
    claim = _read_json(wa.storage, claim_uri(wa, uris))
    if isinstance(claim, dict) and claim.get("id") == plan.job.id:
        outputs, listed = claim.get("outputs"), claim.get("files")
        if outputs == {k: str(u) for k, u in uris.items()}:
            files |= {str(f) for f in (listed if isinstance(listed, list) else outputs.values())}
    return files, prefixes


def _present(st, plan: JobPlan, dests: list[Uri] | None) -> list[Uri]:
    if dests is not None:
        return [u for u in dests if st.exists(u)]
    present = [u for u in known_names(plan) if st.exists(u)]
    if any(r.format == "hls" for r in plan.job.renditions):
        present += list(st.list(hls_tree(plan)))
    return present


def replace_problem(plan: JobPlan, settings: Settings, work: str, dests: list[Uri] | None = None) -> str | None:
    """Why publishing this job would replace a file s2v did not publish (None when its names are free or ours).
    dests: the exact files about to be published; without, every name the job may publish (checked before it
    renders; the folder's run report is report_problem's, once per folder).

    Ours: a file our sidecar for the same job id records, or one a cut-short publish of this job claimed in the
    work area. A manifest can name any folder the user can write (`output: ~/.docker`, `id: config` replaced
    ~/.docker/config.json), so anything else is refused."""
    uris = output_uris(plan)
    st = storage_for(uris["json"], settings)
    try:
        present = _present(st, plan, dests)
    except S2VError as e:  # cannot tell what is there: refusing is the safe answer
        return f"cannot check what is at {uris['json'].parent()} before publishing there: {e}"
    if present:
        sidecar = _read_json(st, uris["json"]) if uris["json"] in present else None
        if uris["json"] in present and not is_our_sidecar(sidecar):
            return f"{uris['json']} exists and is not an s2v sidecar; refusing to replace a file s2v did not publish ({HINT})"
        if uris["json"] in present and sidecar.get("id") != plan.job.id:
            return (f"{uris['json']} is the sidecar of job {sidecar.get('id')!r}, not {plan.job.id!r}; refusing to "
                    f"replace another job's files ({HINT})")
        files, prefixes = _owned(plan, settings, work, sidecar)
        foreign = [u for u in present if str(u) not in files and not any(str(u).startswith(p) for p in prefixes)]
        if foreign:
            names = ", ".join(str(u) for u in foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            return (f"{names} already exist{'s' if len(foreign) == 1 else ''} and s2v did not publish "
                    f"{'it' if len(foreign) == 1 else 'them'}; refusing to replace files s2v did not publish "
                    f"({HINT}; delete them if an earlier s2v run left them there)")
    return None


# ---------- the folder's run report ----------

def is_our_report(name: str, data: bytes) -> bool:
    if name == "report.json":
        try:
            doc = json.loads(data)
        except ValueError:
            return False
        return isinstance(doc, dict) and (doc.get("schema") == REPORT_SCHEMA or _LEGACY_REPORT_KEYS <= doc.keys())
    text = data[:4096].decode("utf-8", "replace")
    return REPORT_GENERATOR in text or text.startswith(_LEGACY_REPORT_HTML)


def report_problem(folder: Uri, settings: Settings) -> str | None:
    """Why the run report of output folder `folder` would replace a file s2v did not write."""
    st = storage_for(folder, settings)
    for name in ("report.json", "report.html"):
        u = folder.join(name)
        try:
            if st.exists(u) and not is_our_report(name, st.read_bytes(u)):
                return (f"{u} exists and is not an s2v run report; refusing to replace a file s2v did not publish "
                        f"(move it away, or choose another output folder)")
        except S2VError as e:
            return f"cannot check {u} before writing the run's report there: {e}"
    return None


# ---------- publishing under a claim ----------

def publish_owned(plan: JobPlan, settings: Settings, work: str, files: list[tuple[Path, Uri]],
                  lease: str | None = None) -> None:
    """Publish the job's files (the sidecar last) after checking that each name is free or ours and, with `lease`
    (the run's lease holder id), that the run still holds the job's leases; a claim in the work area while it
    runs."""
    check_lease(plan, settings, work, lease)
    dests = [u for _, u in files]
    refused = replace_problem(plan, settings, work, dests)
    if refused:  # checked before rendering too; again here, where it counts
        raise RenderError(refused)
    uris = output_uris(plan)
    wa = WorkArea.at(work, settings)
    claim = claim_uri(wa, uris)
    wa.storage.write_bytes(claim, json.dumps({"id": plan.job.id, "key": plan.key, "outputs": {
        k: str(u) for k, u in uris.items()}, "files": [str(u) for u in dests]}).encode())
    storage_for(uris["mp4"], settings).publish(files)
    wa.storage.delete(claim)


def files_record(previous, plan: JobPlan, dests: list[Uri], settings: Settings) -> list[str]:
    """What the new sidecar records as published: this publish's files and those of the publishes before it (a
    sidecar from before that record owned its HLS tree whole: the tree's files as they are now)."""
    before: set[str] = set()
    if is_our_sidecar(previous) and previous.get("id") == plan.job.id:
        before, prefix = recorded_files(previous, plan)
        if prefix:
            before |= {str(u) for u in storage_for(hls_tree(plan), settings).list(hls_tree(plan))}
    return sorted(before | {str(u) for u in dests})


def check_lease(plan: JobPlan, settings: Settings, work: str, lease: str | None) -> None:
    """Raise when the run that holds `lease` lost one of the job's leases to another run (None: no leases)."""
    if lease is None:
        return
    from orchestrator.workarea.leases import holds

    lost = holds(WorkArea.at(work, settings).root, lease_names(plan), lease, settings)
    if lost:
        raise RenderError(f"{lost}: left the job to that run, published nothing and kept its checkpoints")
