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
from orchestrator.workarea.layout import DONE_RE, LEGACY_TAIL_SUFFIX, TAIL_SUFFIX, WorkArea

DAY_S = 86400.0
# A run on another machine counts as running while its state was written within this window: its driver writes
# after every clip and every job, and a run waiting for GPU nodes or loading a model is silent for far less.
RUN_SILENT_S = 24 * 3600.0
TAIL_RE = re.compile(r"(scene-\d{4}/clip-)(\d{4})(" + re.escape(LEGACY_TAIL_SUFFIX) + "|" + re.escape(TAIL_SUFFIX) + ")$")


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


def collect(work: WorkArea, *, days: float = 7.0, temp_hours: float = 1.0, temps_in: tuple[str, ...] = (),
            cache: bool = False, settings, now: float | None = None) -> GcPlan:
    """Look, remove nothing: one listing of the work area (and of each temps_in prefix) and each run's state."""
    now = time.time() if now is None else now
    plan = GcPlan(work, now, days)
    infos = list(list(work.storage.list_info(work.root)))
    run_infos = _runs(work, infos)
    states = _states(work, run_infos)
    plan.live_runs, plan.held = _held(states, now)
    latest = work.latest_run()
    for rid, objs in sorted(run_infos.items()):
        s = states.get(rid) or {}
        age = now - max([float(s.get("updated") or 0), *(i.mtime for i in objs)])
        if rid != latest and rid not in plan.live_runs and age > days * DAY_S:
            plan.findings.append(Finding("run", rid, [i.uri for i in objs], sum(i.size for i in objs), age,
                                         f"run older than {days:g} days", run=rid))
    gone: set[Uri] = set()
    jobs_base = work.job_dir("")
    by_key: dict[str, list] = {}
    for i in infos:
        if i.uri.key.startswith(jobs_base.key):
            by_key.setdefault(i.uri.key[len(jobs_base.key):].split("/", 1)[0], []).append(i)
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
    for prefix, listing in [(work.root, infos), *[(parse(p), None) for p in temps_in]]:
        if listing is None:
            listing = list(storage_for(prefix, settings).list_info(prefix))
        for i in listing:
            # only names the storages write (infra.storage.base's temp contract): --temps-in points into users'
            # output folders, where a look-alike name is theirs
            if i.uri not in gone and is_stale_temp(i.uri.key, i.mtime, temp_hours * 3600, now):
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
