"""Leases in the work area, per job key and per output: two runs never render the same job, nor publish two versions
of a job to one place, at the same time.

A lease is one small object, `<work>/leases/<name>.json` (the job key, or `out-` and a digest of the output), created only if absent (local O_EXCL under a folder
lock, GCS generation-0 create, S3 `If-None-Match: *`) and renewed or released only by compare-and-swap on the
version the holder last wrote (GCS generation, S3 `If-Match` ETag). It names its holder (a random id per run,
with run id, host, pid and pid namespace for people and for `liveness`) and an expiry; the holder renews it every third of its lifetime. A lease that was released, or expired, or whose
holder ran on this very machine and is gone, is taken over by compare-and-swap, so of several runs racing for
it exactly one wins. Expiry compares the holder's clock with the reader's: keep hosts NTP-synced.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from infra.storage import Uri, storage_for
from core.errors import S2VError, StorageError
from infra.storage.base import temp_name
from orchestrator.workarea import liveness

log = logging.getLogger("s2v.leases")
SCHEMA = "s2v-batch/lease"
LEASE_DIR = "leases"


def holder_gone(doc: dict) -> bool:
    """True only when the holder ran on this machine (same host name and boot) and its process no longer exists."""
    return liveness.alive(doc) is False


def parallel(fn, items: list) -> list:
    """fn over items on a few threads: one request per lease, so thousands of jobs stay within a renewal period."""
    if len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(16, len(items)), thread_name_prefix="s2v-lease") as pool:
        return list(pool.map(fn, items))


@dataclass(frozen=True)
class Holder:
    """Another run that holds a lease."""

    run_id: str
    host: str
    pid: int
    expires: float

    def describe(self) -> str:
        until = time.strftime("%H:%M:%S", time.localtime(self.expires))
        return f"run {self.run_id} on {self.host} (pid {self.pid}; its lease runs until {until} unless renewed)"


class Leases:
    """The leases one run holds, renewed by a background thread until released."""

    def __init__(self, root: Uri, settings, run_id: str, *, clock=time.time):
        self.root, self.settings, self.run_id, self.clock = root, settings, run_id, clock
        self.ttl_s = float(settings.lease_ttl_s)
        self.holder = uuid.uuid4().hex
        self.storage = storage_for(root, settings)
        self.held: dict[str, tuple[str, dict]] = {}  # key → (version we last wrote, the document)
        self.taken_over: set[str] = set()
        self.lost: list[str] = []
        self.enabled = True
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._me = {"holder": self.holder, "run_id": run_id, **liveness.this_process()}

    def uri(self, key: str) -> Uri:
        return self.root.join(LEASE_DIR, f"{key}.json")

    # -- one lease ----------------------------------------------------------------------------------------------

    def _doc(self, key: str, jobs: list[str], **extra) -> dict:
        now = self.clock()
        return {"schema": SCHEMA, **self._me, "key": key, "jobs": sorted(jobs), "renewed": now,
                "expires": now + self.ttl_s, "ttl_s": self.ttl_s, "released": False, "nonce": uuid.uuid4().hex,
                **extra}

    def _free(self, doc: dict | None) -> bool:
        """Released, expired, left by a process of this machine that is gone, or not a lease at all."""
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
            return True
        return bool(doc.get("released")) or self.clock() > float(doc.get("expires", 0)) or holder_gone(doc)

    @staticmethod
    def _parse(raw: bytes) -> dict | None:
        try:
            doc = json.loads(raw)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    def _key_lock(self, key: str) -> threading.Lock:
        """One lock per key: renewing and releasing one lease never race, while different leases go in parallel."""
        with self._lock:
            return self._locks.setdefault(key, threading.Lock())

    def acquire(self, key: str, jobs: list[str]) -> Holder | None:
        """Take the lease on a job key: None when this run holds it now, else the run that does."""
        if not self.enabled:
            return None
        uri, written = self.uri(key), set()
        with self._key_lock(key):
            if key in self.held:
                return None
            for _ in range(8):
                doc = self._doc(key, jobs, acquired=self.clock())
                written.add(doc["nonce"])
                data = json.dumps(doc, sort_keys=True).encode()
                ver = self.storage.create_exclusive(uri, data)
                if ver is None:
                    cur = self.storage.read_versioned(uri)
                    if cur is None:
                        continue  # removed between our two calls: create again
                    other = self._parse(cur[0])
                    if other is not None and (other.get("nonce") in written or other.get("holder") == self.holder):
                        ver, doc = cur[1], other  # our own write, whose reply was lost
                    elif not self._free(other):
                        return Holder(str(other.get("run_id")), str(other.get("host")), int(other.get("pid") or 0),
                                      float(other.get("expires") or 0))
                    else:
                        ver = self.storage.replace_if(uri, data, cur[1])
                        if ver is None:
                            continue  # another run took it over first, or ours landed and its reply was lost
                        if other is not None and not other.get("released"):
                            log.warning("took over the lease on %s from run %s (expired or its process is gone)",
                                        key, other.get("run_id"))
                    self.taken_over.add(key)  # another run held it before: it may have published meanwhile
                with self._lock:
                    self.held[key] = (ver, doc)
                return None
            raise StorageError(f"{uri}: the lease kept changing while we tried to take it; try again")

    def _renew_one(self, key: str) -> bool:
        """False when the lease was lost to another run."""
        with self._key_lock(key):
            entry = self.held.get(key)
            if entry is None:
                return True  # released meanwhile
            ver, doc = entry
            new = self._doc(key, doc.get("jobs", []), acquired=doc.get("acquired"))
            try:
                got = self.storage.replace_if(self.uri(key), json.dumps(new, sort_keys=True).encode(), ver)
                if got is None:
                    cur = self.storage.read_versioned(self.uri(key))
                    if cur is not None and (self._parse(cur[0]) or {}).get("nonce") == new["nonce"]:
                        got = cur[1]  # it landed; the reply was lost
            except S2VError as e:  # the store is down: try again next time (the lease lasts ttl_s)
                log.warning("could not renew the lease on %s: %s", key, e)
                return True
            with self._lock:
                if got is None:
                    del self.held[key]
                    self.lost.append(key)
                else:
                    self.held[key] = (got, new)
        if got is None:
            log.warning("lost the lease on %s to another run (this run stalled past its expiry); both may render "
                        "it now", key)
        return got is not None

    def renew(self) -> list[str]:
        """Push every held lease's expiry forward, in parallel (a conditional PUT each); returns the keys lost to
        another run (this run stalled past their expiry)."""
        keys = list(self.held)
        return [k for k, ok in zip(keys, parallel(self._renew_one, keys)) if not ok]

    def release(self, key: str) -> None:
        """Mark the lease released (by compare-and-swap: never over a lease another run took since)."""
        with self._key_lock(key):
            with self._lock:
                entry = self.held.pop(key, None)
            if entry is None:
                return
            ver, doc = entry
            gone = {**doc, "released": True, "expires": self.clock(), "nonce": uuid.uuid4().hex}
            try:
                self.storage.replace_if(self.uri(key), json.dumps(gone, sort_keys=True).encode(), ver)
            except S2VError as e:  # it will expire by itself
                log.warning("could not release the lease on %s: %s", key, e)

    # -- the renewing thread -----------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None and self.held:
            self._thread = threading.Thread(target=self._renew_loop, name="s2v-leases", daemon=True)
            self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            self.renew()

    def close(self) -> None:
        """Stop renewing and release everything still held."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        parallel(self.release, list(self.held))

    def check_store(self) -> None:
        """Object stores that ignore conditional headers (old SeaweedFS, some S3-compatibles) would let two runs
        both "win" every lease: find out once, and turn leases off with a warning rather than pretend."""
        if self.root.scheme == "file":
            return
        probe = self.root.join(LEASE_DIR, temp_name("probe"))
        try:
            first = self.storage.create_exclusive(probe, b"probe")
            second = self.storage.create_exclusive(probe, b"probe again")
        finally:
            self.storage.delete(probe)
        if first is None or second is not None:
            self.enabled = False
            log.warning("the work area's store (%s) ignores conditional writes: leases are off, and two runs of "
                        "one manifest may render the same jobs at once", self.root)


def holds(root: Uri, names: list[str], holder: str, settings) -> str | None:
    """Why the run whose Leases carry `holder` no longer holds every lease in `names` (None while it does): checked
    by a task right before it publishes or deletes checkpoints, so a run that stalled past its leases' expiry
    never writes over the run that took them over."""
    lz = Leases(root, settings, "check")
    for name in names:
        try:
            doc = Leases._parse(lz.storage.read_bytes(lz.uri(name)))
        except S2VError as e:
            return f"could not read its lease {lz.uri(name)}: {e}"
        if not doc or doc.get("holder") != holder or doc.get("released"):
            other = f"run {doc.get('run_id')}" if doc and doc.get("holder") != holder else "nobody"
            return f"this run lost its lease {name} (it stalled past the lease's expiry; {other} holds it now)"
        if float(doc.get("expires") or 0) <= time.time():  # anyone may take it over now: not ours to act on
            return f"this run's lease {name} expired (the run stopped renewing it)"
    return None


class RunLeases:
    """What the runner needs: take the leases of the jobs to render (waiting or skipping) — one on the job key (its
    checkpoints) and one on its output (two versions of a job must not publish to one place at once) — say which
    jobs lost one, release each job's when it is done, release the rest at the end."""

    def __init__(self, work, run_id: str, settings, names=lambda plan: [plan.key]):
        self.leases = Leases(work.root, settings, run_id)
        self.root, self.settings = work.root, settings
        self.wait_s = float(settings.lease_wait_s)
        self.names_of_plan = names
        self.names: dict[str, list[str]] = {}  # job id → the leases it needs
        self.open: dict[str, set[str]] = {}  # lease name → job ids of this run still being worked on
        self._reported: set[str] = set()

    @property
    def holder(self) -> str | None:
        """What a task checks before it publishes (None when leases are off: nothing to check)."""
        return self.leases.holder if self.leases.enabled else None

    def take(self, todo: list, published=None) -> tuple[list, dict[str, tuple[str, str]]]:
        """(the plans this run may render now, {job id: (status, reason)} for the others). A job another run
        holds a lease of is waited for (up to lease_wait_s) and then skipped with the holder named; one published
        meanwhile (published(plan) is True) is skipped too; one whose lease cannot be taken fails."""
        need: dict[str, list] = {}
        for p in todo:
            for name in self.names_of_plan(p):
                need.setdefault(name, []).append(p)
        try:
            self.leases.check_store()
        except S2VError as e:
            log.warning("could not check the work area's conditional writes (%s); taking leases anyway", e)
        busy, failed = self._attempt_all(need)
        keep, away = [], {}
        for p in todo:
            names = self.names_of_plan(p)
            if bad := next((failed[n] for n in names if n in failed), None):
                away[p.job.id] = ("failed", bad)
            elif holder := next((busy[n] for n in names if n in busy), None):
                away[p.job.id] = ("skipped", f"another run is rendering it (or another version of it to the same "
                                  f"output): {holder.describe()}; rerun when it is done, or set lease_wait_s "
                                  "(S2V_LEASE_WAIT_S) to wait for it")
            # we hold them now; if another run held one before us, it may have published it in the meantime
            elif published is not None and any(n in self.leases.taken_over for n in names) and all(
                    published(q) for q in need[names[0]]):
                away[p.job.id] = ("skipped", "published meanwhile by another run")
            else:
                keep.append(p)
                self.names[p.job.id] = names
                for n in names:
                    self.open.setdefault(n, set()).add(p.job.id)
        for name in set(need) - set(self.open):  # taken for jobs that do not go ahead
            self.leases.release(name)
        self.leases.start()
        return keep, away

    def _attempt_all(self, need: dict[str, list]) -> tuple[dict[str, Holder], dict[str, str]]:
        """Try every lease at once, then the busy ones again until lease_wait_s is over: (busy, failed)."""
        busy: dict[str, Holder] = {}
        failed: dict[str, str] = {}

        def attempt(name: str) -> None:
            try:
                holder = self.leases.acquire(name, [p.job.id for p in need[name]])
            except S2VError as e:
                failed[name] = f"could not take its lease in the work area: {e}"
                busy.pop(name, None)
                return
            if holder is None:
                busy.pop(name, None)
            else:
                busy[name] = holder

        parallel(attempt, list(need))
        deadline = time.monotonic() + self.wait_s
        while busy and time.monotonic() < deadline:
            time.sleep(min(max(0.2, self.leases.ttl_s / 20), 5.0, max(0.0, deadline - time.monotonic())))
            for name in list(busy):
                attempt(name)
        return busy, failed

    def lost_jobs(self) -> dict[str, str]:
        """{job id: why} for each job of this run (not reported before) one of whose leases another run took."""
        with self.leases._lock:
            lost = set(self.leases.lost)
        out = {}
        for jid, names in self.names.items():
            gone = [n for n in names if n in lost]
            if gone and jid not in self._reported:
                self._reported.add(jid)
                out[jid] = (f"this run lost its lease {gone[0]} to another run (it stalled past the lease's "
                            "expiry): it stopped working on the job and left its checkpoints to that run")
        return out

    def done(self, job_id: str) -> None:
        """A job of this run was published or failed: release each of its leases no other job of the run shares."""
        for name in self.names.pop(job_id, []):
            self.open[name].discard(job_id)
            if not self.open[name]:
                self.leases.release(name)

    def close(self) -> None:
        self.leases.close()
