"""Leases per job key in the work area: two runs of one manifest never render the same job at the same time.

A lease is one small object, `<work>/leases/<job key>.json`, created only if absent (local O_EXCL under a folder
lock, GCS generation-0 create, S3 `If-None-Match: *`) and renewed or released only by compare-and-swap on the
version the holder last wrote (GCS generation, S3 `If-Match` ETag). It names its holder (run id, host, pid) and
an expiry; the holder renews it every third of its lifetime. A lease that was released, or expired, or whose
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


class RunLeases:
    """What the runner needs: take the leases of the jobs to render (waiting or skipping), release each when its
    job is done, release the rest at the end."""

    def __init__(self, work, run_id: str, settings):
        self.leases = Leases(work.root, settings, run_id)
        self.wait_s = float(settings.lease_wait_s)
        self.key_of: dict[str, str] = {}
        self.open: dict[str, set[str]] = {}  # key → job ids of this run still being worked on

    def take(self, todo: list, published=None) -> tuple[list, dict[str, tuple[str, str]]]:
        """(the plans this run may render now, {job id: (status, reason)} for the others). A job another run
        holds is waited for (up to lease_wait_s) and then skipped with the holder named; one published meanwhile
        (published(plan) is True) is skipped too; one whose lease cannot be taken fails."""
        by_key: dict[str, list] = {}
        for p in todo:
            by_key.setdefault(p.key, []).append(p)
        try:
            self.leases.check_store()
        except S2VError as e:
            log.warning("could not check the work area's conditional writes (%s); taking leases anyway", e)
        busy, failed = self._attempt_all(by_key)
        keep, away = [], {}
        for key, plans in by_key.items():
            if key in failed:
                away.update((p.job.id, ("failed", failed[key])) for p in plans)
            elif key in busy:
                why = (f"another run is rendering it: {busy[key].describe()}; rerun when it is done, or set "
                       "lease_wait_s (S2V_LEASE_WAIT_S) to wait for it")
                away.update((p.job.id, ("skipped", why)) for p in plans)
            # we hold it now; if another run held it before us, it may have published it in the meantime
            elif published is not None and key in self.leases.taken_over and all(published(p) for p in plans):
                away.update((p.job.id, ("skipped", "published meanwhile by another run")) for p in plans)
                self.leases.release(key)
            else:
                self.open[key] = {p.job.id for p in plans}
                self.key_of.update({p.job.id: key for p in plans})
                keep += plans
        self.leases.start()
        return keep, away

    def _attempt_all(self, by_key: dict[str, list]) -> tuple[dict[str, Holder], dict[str, str]]:
        """Try every key at once, then the busy ones again until lease_wait_s is over: (busy, failed)."""
        busy: dict[str, Holder] = {}
        failed: dict[str, str] = {}

        def attempt(key: str) -> None:
            try:
                holder = self.leases.acquire(key, [p.job.id for p in by_key[key]])
            except S2VError as e:
                failed[key] = f"could not take its lease in the work area: {e}"
                busy.pop(key, None)
                return
            if holder is None:
                busy.pop(key, None)
            else:
                busy[key] = holder

        parallel(attempt, list(by_key))
        deadline = time.monotonic() + self.wait_s
        while busy and time.monotonic() < deadline:
            time.sleep(min(max(0.2, self.leases.ttl_s / 20), 5.0, max(0.0, deadline - time.monotonic())))
            for key in list(busy):
                attempt(key)
        return busy, failed

    def done(self, job_id: str) -> None:
        """A job of this run was published or failed: release its key once no other job of the run shares it."""
        key = self.key_of.pop(job_id, None)
        if key is None:
            return
        self.open[key].discard(job_id)
        if not self.open[key]:
            self.leases.release(key)

    def close(self) -> None:
        self.leases.close()
