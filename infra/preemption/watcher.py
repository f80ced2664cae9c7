"""The per-node preemption watcher: active interruptions and warnings from its sources, cleared when they pass."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable

from .metadata import WARNING_EXPIRY_S, AwsImdsSource, GcpMetadataSource
from .notice import AWS_IMDS_URL, GCP_METADATA_URL, Notice, Source
from .sigterm import SigtermSource, sigterm_flag_path

log = logging.getLogger("s2v.preemption")

# How long past its deadline a node must still be alive before its interruption counts as not carried out. AWS
# and GCP take a few seconds past the deadline to stop an instance; two minutes is well clear of that.
CLEAR_GRACE_S = 120.0


class PreemptionWatcher:
    """Polls its sources on a daemon thread; `notice()` and `warning()` never block.

    An interruption (spot instance-action, GCE preemption, SIGTERM) is active from the first poll that sees it
    until the node has outlived its deadline by `clear_grace_s`, whatever the source says then (404 again, FALSE
    again, or the same stale item): a node alive that long was not taken. A source that stops reporting it
    earlier does not end it early — a 404 must not hand work to a node seconds before it goes.
    A warning (rebalance recommendation) is active until its source stops reporting it or its deadline (the
    expiry) passes. Either way it then clears, `on_clear` fires, and the same event is never reported again; a
    new event (another instance-action time, preempted FALSE then TRUE, a newer flag) is a new notice. One that
    has already lapsed when first seen (a watcher restarted on a node that survived) is never reported.
    A source that fails to answer changes nothing, except that time still runs out for what it reported.

    `on_notice(n)` fires once per new active interruption or warning (`n.kind` says which), `on_clear(n)` once
    when it stops being active; both on the watcher thread — keep them short. With `drain=True` the watcher
    drains this Ray node when an interruption becomes active (never for a warning), before `on_notice`.
    """

    def __init__(self, sources: list, poll_s: float = 1.0, on_notice: Callable[[Notice], None] | None = None,
                 on_clear: Callable[[Notice], None] | None = None, clear_grace_s: float = CLEAR_GRACE_S,
                 drain: bool = False, clock: Callable[[], float] = time.time):
        self.sources: list = [make_source(s) if isinstance(s, str) else s for s in sources]
        self.poll_s = poll_s
        self.on_notice = on_notice
        self.on_clear = on_clear
        self.clear_grace_s = clear_grace_s
        self.drain = drain
        self.clock = clock
        self._active: dict[tuple[str, float], tuple[int, Notice]] = {}  # key → (source index, notice)
        self._spent: set[tuple[str, float]] = set()  # cleared or lapsed: never reported again
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._errors: dict[str, int] = {}

    def start(self) -> "PreemptionWatcher":
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="s2v-preemption", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5 * self.poll_s + 5)
        for s in self.sources:
            if hasattr(s, "close"):
                s.close()

    def notice(self) -> Notice | None:
        """The active interruption with the earliest deadline; None when there is none (or it cleared)."""
        with self._lock:
            found = [n for _, n in self._active.values() if n.kind == "interruption"]
        return min(found, key=lambda n: n.deadline) if found else None

    def warning(self) -> Notice | None:
        """The active early warning seen first; None when there is none (or it cleared)."""
        with self._lock:
            found = [n for _, n in self._active.values() if n.kind == "warning"]
        return min(found, key=lambda n: n.seen) if found else None

    def _lapsed(self, n: Notice, now: float) -> bool:
        return now > (n.deadline + self.clear_grace_s if n.kind == "interruption" else n.deadline)

    def poll_once(self) -> Notice | None:
        """One pass over the sources (the thread's body; also handy in tests). Returns `notice()`."""
        reported: dict[int, list[Notice]] = {}
        for i, src in enumerate(self.sources):
            try:
                reported[i] = list(src.check())
            except Exception as e:  # noqa: BLE001 — a metadata blip must never kill the watcher
                count = self._errors[src.name] = self._errors.get(src.name, 0) + 1
                if count in (1, 10, 100) or count % 1000 == 0:
                    log.warning("preemption source %s failed (%d times): %s", src.name, count, e)
        now = self.clock()
        new: list[Notice] = []
        cleared: list[tuple[Notice, str]] = []
        with self._lock:
            for i, notices in reported.items():
                keys = {n.key for n in notices}
                for n in notices:
                    if n.key in self._spent or n.key in self._active:
                        continue
                    if self._lapsed(n, now):
                        self._spent.add(n.key)
                        log.info("ignoring %s %s from %s: it lapsed before this watcher saw it",
                                 n.kind, n.reason, n.source)
                        continue
                    self._active[n.key] = (i, n)
                    new.append(n)
                for k, (j, n) in list(self._active.items()):
                    if j == i and n.kind == "warning" and k not in keys:
                        del self._active[k]
                        self._spent.add(k)
                        cleared.append((n, "its source no longer reports it"))
            for k, (_, n) in list(self._active.items()):
                if self._lapsed(n, now):
                    del self._active[k]
                    self._spent.add(k)
                    cleared.append((n, "the node outlived its deadline" if n.kind == "interruption" else "it expired"))
        for n, why in cleared:
            log.warning("preemption %s from %s cleared (%s): %s", n.kind, n.source, why, n.reason)
            self._call(self.on_clear, n)
        for n in new:
            log.warning("preemption %s from %s: %s (deadline in %.0f s)", n.kind, n.source, n.reason,
                        n.deadline - now)
            if n.kind == "interruption" and self.drain:
                drain_this_node(n.deadline, f"s2v: {n.source}: {n.reason}")
            self._call(self.on_notice, n)
        return self.notice()

    @staticmethod
    def _call(cb: Callable[[Notice], None] | None, n: Notice) -> None:
        if cb is not None:
            try:
                cb(n)
            except Exception:  # noqa: BLE001
                log.exception("preemption callback %s failed", getattr(cb, "__name__", cb))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            self._stop.wait(self.poll_s)


def make_source(name: str, **kw) -> Source:
    """'aws' | 'gcp' | 'sigterm' → a source with the given keyword options."""
    table = {"aws": AwsImdsSource, "gcp": GcpMetadataSource, "sigterm": SigtermSource}
    if name not in table:
        raise ValueError(f"unknown preemption source {name!r}; expected one of {sorted(table)}")
    return table[name](**kw)


def _split(spec: str) -> list[str]:
    return [s.strip().lower() for s in (spec or "").split(",") if s.strip()]


def _dmi_names(vendor: str) -> bool:
    """True only when the machine's DMI data names the vendor ("Amazon EC2", "Google Compute Engine"). Unreadable
    DMI (a container without /sys/class/dmi, a sandbox) is no evidence: `auto` then probes nothing, so a laptop or CI
    runner never sends a request to a metadata address; a cluster names its source explicitly instead."""
    texts = []
    for f in ("sys_vendor", "product_name", "bios_vendor"):
        try:
            texts.append(Path("/sys/class/dmi/id", f).read_text())
        except OSError:
            pass
    return vendor.lower() in " ".join(texts).lower()


def watcher_from_settings(settings, on_notice: Callable[[Notice], None] | None = None,
                          on_clear: Callable[[Notice], None] | None = None,
                          drain: bool = False) -> PreemptionWatcher | None:
    """A watcher for this node per settings.preemption_sources; None when off or nothing applies ('auto')."""
    spec = _split(getattr(settings, "preemption_sources", "auto"))
    if not spec or spec == ["none"]:
        return None
    aws_url = getattr(settings, "aws_imds_url", AWS_IMDS_URL)
    gcp_url = getattr(settings, "gcp_metadata_url", GCP_METADATA_URL)
    grace = getattr(settings, "sigterm_notice_s", 5.0)
    poll = getattr(settings, "preemption_poll_s", 1.0)
    expiry = getattr(settings, "preemption_warning_expiry_s", WARNING_EXPIRY_S)
    clear_grace = getattr(settings, "preemption_clear_grace_s", CLEAR_GRACE_S)
    sources: list = []
    if "auto" in spec:
        # Cheap probes with short timeouts: a laptop must not wait seconds here.
        if os.environ.get("RUNPOD_POD_ID"):
            sources.append(SigtermSource(grace_s=grace, flag_path=sigterm_flag_path(settings)))
        else:
            aws = AwsImdsSource(aws_url, timeout=0.3, warning_expiry_s=expiry)
            gcp = GcpMetadataSource(gcp_url, timeout=0.3)
            # Probes of the real endpoints only where the machine's DMI data names the cloud; custom URLs
            # (loopback in tests) are always probed.
            try_aws = aws_url != AWS_IMDS_URL or _dmi_names("amazon")
            try_gcp = gcp_url != GCP_METADATA_URL or _dmi_names("google")
            if try_aws and aws.detect():
                aws.timeout = 1.0
                sources.append(aws)
            elif try_gcp and gcp.detect():
                gcp.timeout = 1.0
                sources.append(gcp)
    else:
        for name in spec:
            if name == "aws":
                sources.append(AwsImdsSource(aws_url, warning_expiry_s=expiry))
            elif name == "gcp":
                sources.append(GcpMetadataSource(gcp_url))
            elif name in ("sigterm", "runpod"):
                sources.append(SigtermSource(grace_s=grace, flag_path=sigterm_flag_path(settings)))
            else:
                raise ValueError(f"unknown preemption source {name!r} in preemption_sources")
    if not sources:
        return None
    return PreemptionWatcher(sources, poll_s=poll, on_notice=on_notice, on_clear=on_clear,
                             clear_grace_s=clear_grace, drain=drain)


def drain_this_node(deadline_s: float, message: str, node_id_hex: str | None = None) -> bool:
    """Ask the GCS to drain the current Ray node (reason PREEMPTION). True if accepted.

    `deadline_s`: a unix time (as in Notice.deadline) when > 1e9, else seconds from now. Ray kills nothing at
    the deadline; the caller's actor must stop at a clip boundary itself. A drain cannot be undone (Ray 2.60
    has no call for it; the raylet keeps its drain request until it exits): the node takes no new actors or
    tasks, the actors already there keep answering calls, and the raylet exits as soon as it is idle.
    """
    import ray
    from ray.core.generated import autoscaler_pb2

    if not ray.is_initialized():
        log.warning("drain_this_node: Ray is not initialised; nothing to drain")
        return False
    ctx = ray.get_runtime_context()
    node_id = node_id_hex or ctx.get_node_id()
    deadline_unix = deadline_s if deadline_s > 1e9 else time.time() + max(deadline_s, 0.0)
    try:
        gcs = ray._raylet.GcsClient(address=ctx.gcs_address)
        accepted, why = gcs.drain_node(
            node_id,
            autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION"),
            message,
            int(deadline_unix * 1000),
        )
    except Exception as e:  # noqa: BLE001 — a failed drain must not take the actor down with it
        log.warning("drain of node %s failed: %s", node_id, e)
        return False
    if not accepted:
        log.warning("drain of node %s not accepted: %s", node_id, why)
    return bool(accepted)
