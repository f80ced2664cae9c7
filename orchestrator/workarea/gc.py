"""`s2v gc`: what a work area no longer needs (old runs, abandoned jobs, superseded tails, stale temps, old cache
entries), listed as a dry run or removed — never anything a running run holds."""

from __future__ import annotations

import json
import posixpath
import re
import time
from dataclasses import dataclass, field

from infra.storage import Uri, parse, storage_for
from infra.storage.base import is_stale_temp
from orchestrator.workarea import liveness
from core.errors import InputError
from orchestrator.workarea.layout import DONE_RE, LEGACY_TAIL_SUFFIX, MARKER, TAIL_SUFFIX, WorkArea

DAY_S = 86400.0
# A run on another machine counts as running while its state was written within this window: its driver writes
# after every clip and every job, and a run waiting for GPU nodes or loading a model is silent for far less.
RUN_SILENT_S = 24 * 3600.0
TAIL_RE = re.compile(r"(scene-\d{4}/clip-)(\d{4})(" + re.escape(LEGACY_TAIL_SUFFIX) + "|" + re.escape(TAIL_SUFFIX) + ")$")
# What s2v writes, by name: gc removes nothing else, even inside a marked work area.
RUN_FILES = frozenset({"state.json", "report.json", "report.html"})
JOB_KEY_RE = re.compile(r"[0-9a-f]{24}\Z")
JOB_FILE_RE = re.compile(r"(?:scene-\d{4}/clip-\d{4}(?:\.mp4|\.tail|\.tail\.npy|\.done\.json)|audio\.m4a)\Z")
OUR_FOLDERS = ("jobs/", "runs/", "publishing/", "inputs/", "manifests/", "leases/", "asr/")


@dataclass
class Finding:
    """One thing to remove: a run, a job's checkpoints, a superseded tail, a temp object, or cache entries."""

    kind: str  # run | job | tail | temp | cache
    what: str
    objects: list  # Uri (storage) or Path (cache)
    bytes: int
    age_s: float
    why: str
    key: str | None = None  # job key, for the re-check before removing
    run: str | None = None


@dataclass
class GcPlan:
    work: WorkArea
    now: float  # the moment collect() judged ages against (tests look into the future with it)
    days: float
    made: float = field(default_factory=time.time)
    findings: list[Finding] = field(default_factory=list)
    held: set[str] = field(default_factory=set)  # job keys that running runs hold
    live_runs: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # what apply() left because a run took it meanwhile

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.findings)

    def summary(self) -> dict:
        return {"work": str(self.work.root), "removable_bytes": self.bytes, "live_runs": self.live_runs,
                "held_jobs": sorted(self.held), "kept": self.kept,
                "findings": [{"kind": f.kind, "what": f.what, "objects": len(f.objects), "bytes": f.bytes,
                              "age_h": round(f.age_s / 3600, 2), "why": f.why} for f in self.findings]}


def driver_alive(state: dict) -> bool | None:
    """True/False when the run's driver ran on this machine (its pid and start time tell); None when it ran
    elsewhere."""
    return liveness.alive(state)


def run_is_live(state: dict | None, now: float) -> bool:
    if not state or state.get("status") != "running":
        return False
    alive = driver_alive(state)
    if alive is not None:
        return alive
    return now - float(state.get("updated") or 0) < RUN_SILENT_S


def _runs(work: WorkArea, infos: list) -> dict[str, list]:
    out: dict[str, list] = {}
    base = work.root.join("runs", "").key
    for i in infos:
        rest = i.uri.key[len(base):] if i.uri.key.startswith(base) else None
        if rest and "/" in rest:
            out.setdefault(rest.split("/", 1)[0], []).append(i)
    return out


def _states(work: WorkArea, run_ids) -> dict[str, dict | None]:
    st, out = work.storage, {}
    for rid in run_ids:
        u = work.run_dir(rid).join("state.json")
        try:
            out[rid] = json.loads(st.read_bytes(u)) if st.exists(u) else None
        except (ValueError, UnicodeDecodeError):
            out[rid] = None  # unreadable: it cannot claim to be running
    return out


def _held(states: dict[str, dict | None], now: float) -> tuple[list[str], set[str]]:
    live = sorted(rid for rid, s in states.items() if run_is_live(s, now))
    keys = {j.get("key") for rid in live for j in (states[rid].get("jobs") or {}).values() if j.get("key")}
    return live, keys


def not_a_work_area(work: WorkArea) -> InputError:
    return InputError(f"{work.root} is not an s2v work area (no {MARKER} in it): gc removes nothing there. Check "
                      f"--work / S2V_WORK; a work area from before s2v wrote that file is marked by its next run, or "
                      f"now by `s2v gc --adopt --work {work.root}`, which checks its layout first")


def adopt(work: WorkArea) -> None:
    """Mark a work area written before the marker existed, once its layout proves it is one: a run's state of ours
    (run id, jobs) under runs/."""
    infos = list(work.storage.list_info(work.root.join("runs")))
    states = _states(work, _runs(work, infos))
    if not any(_is_our_state(rid, s) for rid, s in states.items()):
        raise InputError(f"{work.root} holds no run state of s2v's (runs/<id>/state.json): not marking it as a work "
                         "area; check the path")
    work.ensure_marker()


def _is_our_state(rid: str, s) -> bool:
    return isinstance(s, dict) and s.get("run_id") == rid and isinstance(s.get("jobs"), dict)


def _ours(work: WorkArea, infos: list, states: dict) -> tuple[dict[str, list], dict[str, list]]:
    """(run id → its files, job key → its files): only the names s2v writes, in folders its layout names."""
    runs = {rid: [i for i in objs if posixpath.basename(i.uri.key) in RUN_FILES]
            for rid, objs in _runs(work, infos).items() if _is_our_state(rid, states.get(rid))}
    jobs_base, by_key = work.job_dir("").key, {}
    for i in infos:
        rest = i.uri.key[len(jobs_base):] if i.uri.key.startswith(jobs_base) else ""
        key, _, name = rest.partition("/")
        if JOB_KEY_RE.match(key) and JOB_FILE_RE.match(name):
            by_key.setdefault(key, []).append(i)
    return {k: v for k, v in runs.items() if v}, by_key


def collect(work: WorkArea, *, days: float = 7.0, temp_hours: float = 1.0, temps_in: tuple[str, ...] = (),
            cache: bool = False, settings, now: float | None = None) -> GcPlan:
    """Look, remove nothing: one listing of the work area (and of each temps_in prefix) and each run's state.
    Refuses a folder that is not a work area; within one, considers only what s2v writes (names and layout)."""
    if not work.is_marked():
        raise not_a_work_area(work)
    now = time.time() if now is None else now
    plan = GcPlan(work, now, days)
    infos = list(work.storage.list_info(work.root))
    states = _states(work, _runs(work, infos))
    run_infos, by_key = _ours(work, infos, states)
    plan.live_runs, plan.held = _held(states, now)
    latest = work.latest_run()
    for rid, objs in sorted(run_infos.items()):
        s = states.get(rid) or {}
        age = now - max([float(s.get("updated") or 0), *(i.mtime for i in objs)])
        if rid != latest and rid not in plan.live_runs and age > days * DAY_S:
            plan.findings.append(Finding("run", rid, [i.uri for i in objs], sum(i.size for i in objs), age,
                                         f"run older than {days:g} days", run=rid))
    gone: set[Uri] = set()
    for key, objs in sorted(by_key.items()):
        if key in plan.held:
            continue
        age = now - max(i.mtime for i in objs)
        if age > days * DAY_S:
            plan.findings.append(Finding("job", key, [i.uri for i in objs], sum(i.size for i in objs), age,
                                         f"checkpoints untouched for {days:g} days", key=key))
            gone |= {i.uri for i in objs}
            continue
        done = {m.group(0) for i in objs if (m := DONE_RE.search(i.uri.key))}
        for i in objs:
            m = TAIL_RE.search(i.uri.key)
            if m and f"{m.group(1)}{int(m.group(2)) + 1:04d}.done.json" in done:
                plan.findings.append(Finding("tail", str(i.uri), [i.uri], i.size, now - i.mtime,
                                             "superseded: the next clip is done", key=key))
                gone.add(i.uri)
    root = work.root.join("").key
    for prefix, listing in [(work.root, infos), *[(parse(p), None) for p in temps_in]]:
        inside = listing is not None  # the work area's own listing (temps_in point into users' output folders)
        if listing is None:
            listing = list(storage_for(prefix, settings).list_info(prefix))
        for i in listing:
            # only names the storages write (infra.storage.base's temp contract); the short names of earlier
            # versions only inside the work area's own folders, where nothing but s2v writes
            legacy = inside and i.uri.key[len(root):].startswith(OUR_FOLDERS)
            if i.uri not in gone and is_stale_temp(i.uri.key, i.mtime, temp_hours * 3600, now, legacy):
                plan.findings.append(Finding("temp", str(i.uri), [i.uri], i.size, now - i.mtime,
                                             f"temp object older than {temp_hours:g} h (an interrupted write)"))
                gone.add(i.uri)
    if cache:
        from infra.storage.cache import cache_root, prune

        entries = prune(settings, days * DAY_S, dry_run=True, now=now)
        if entries:
            plan.findings.append(Finding("cache", str(cache_root(settings)), [p for p, _ in entries],
                                         sum(n for _, n in entries), days * DAY_S,
                                         f"{len(entries)} input cache file(s) unused for {days:g} days"))
    return plan


def apply(plan: GcPlan, settings) -> int:
    """Remove what collect() found, after asking the runs again (one may have started since); returns bytes."""
    work = plan.work
    runs = list(work.storage.list_info(work.root.join("runs")))
    live, held = _held(_states(work, _runs(work, runs)), plan.now + (time.time() - plan.made))
    freed = 0
    for f in plan.findings:
        if (f.key and f.key in held) or (f.run and f.run in live):
            plan.kept.append(f.what)
            continue
        if f.kind == "cache":
            from infra.storage.cache import prune

            freed += sum(n for _, n in prune(settings, plan.days * DAY_S, now=plan.now))
            continue
        _deleter(f.objects[0], work, settings).delete_objects(f.objects)
        freed += f.bytes
    return freed


def _deleter(u: Uri, work: WorkArea, settings) -> WorkArea:
    """A work area rooted where the objects are (the work area itself, or a --temps-in prefix)."""
    if (u.scheme, u.bucket) == (work.root.scheme, work.root.bucket) and u.key.startswith(work.root.key):
        return work
    return WorkArea(Uri(u.scheme, u.bucket, posixpath.dirname(u.key)), settings)
