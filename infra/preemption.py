"""Preemption notice watchers (AWS IMDSv2, GCP metadata, SIGTERM) and draining the current Ray node."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from calendar import timegm
from pathlib import Path
from typing import Callable, Protocol

from pydantic import BaseModel, ConfigDict

log = logging.getLogger("s2v.preemption")

AWS_NOTICE_S = 120.0  # documented spot interruption warning
GCP_NOTICE_S = 30.0
# A rebalance recommendation carries no deadline; AWS says an interruption may follow at any time, but the
# 2-minute warning still comes first, so treat it as "leave within the usual window".
AWS_REBALANCE_S = 120.0
SIGTERM_FLAG_FILE = "/tmp/s2v-sigterm"
AWS_IMDS_URL = "http://169.254.169.254"
GCP_METADATA_URL = "http://metadata.google.internal"


class Notice(BaseModel):
    """A node is going away: who said so, by when (unix time), and why."""

    model_config = ConfigDict(frozen=True)

    source: str
    deadline: float
    reason: str


class Source(Protocol):
    name: str

    def check(self) -> Notice | None: ...


def _http(method: str, url: str, headers: dict[str, str], timeout: float) -> tuple[int, bytes]:
    """One request; a 4xx/5xx is a status, not an exception (404 is IMDS's normal answer)."""
    req = urllib.request.Request(url, method=method, headers=headers)
    # IMDS and GCP metadata must never go through an HTTP proxy from the environment.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read() or b""


def _parse_iso(ts: str) -> float:
    """'2026-11-05T12:34:56Z' → unix time (IMDS always answers in UTC)."""
    return float(timegm(time.strptime(ts.strip().rstrip("Z")[:19], "%Y-%m-%dT%H:%M:%S")))


class AwsImdsSource:
    """Spot instance-action + rebalance recommendation through IMDSv2 (session token first)."""

    name = "aws"

    def __init__(self, base_url: str = "http://169.254.169.254", timeout: float = 1.0, rebalance: bool = True):
        self.base = base_url.rstrip("/")
        self.timeout = timeout
        self.rebalance = rebalance
        self._token: str | None = None
        self._token_expiry = 0.0

    def _get_token(self, force: bool = False) -> str:
        if force or self._token is None or time.time() > self._token_expiry:
            code, body = _http(
                "PUT", f"{self.base}/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "21600"}, self.timeout
            )
            if code != 200:
                raise ConnectionError(f"IMDSv2 token request answered {code}")
            self._token = body.decode().strip()
            self._token_expiry = time.time() + 21000  # refresh before the 6 h TTL ends
        return self._token

    def _get(self, path: str) -> tuple[int, bytes]:
        code, body = _http("GET", self.base + path, {"X-aws-ec2-metadata-token": self._get_token()}, self.timeout)
        if code == 401:  # token expired or IMDS restarted: one fresh token, one retry
            code, body = _http(
                "GET", self.base + path, {"X-aws-ec2-metadata-token": self._get_token(force=True)}, self.timeout
            )
        return code, body

    def check(self) -> Notice | None:
        code, body = self._get("/latest/meta-data/spot/instance-action")
        if code == 200:
            data = json.loads(body)
            try:
                deadline = _parse_iso(data["time"])
            except (KeyError, ValueError):
                deadline = time.time() + AWS_NOTICE_S
            return Notice(source="aws-spot", deadline=deadline, reason=f"spot instance-action: {data.get('action')}")
        if code != 404:
            raise ConnectionError(f"IMDS spot/instance-action answered {code}")
        if self.rebalance:
            code, body = self._get("/latest/meta-data/events/recommendations/rebalance")
            if code == 200:
                return Notice(
                    source="aws-rebalance", deadline=time.time() + AWS_REBALANCE_S, reason="rebalance recommendation"
                )
        return None

    def detect(self) -> bool:
        try:
            self._get_token()
            return True
        except OSError:
            return False


class GcpMetadataSource:
    """`instance/preempted` on the GCP metadata server: 'TRUE' once the 30 s countdown has started."""

    name = "gcp"

    def __init__(self, base_url: str = "http://metadata.google.internal", timeout: float = 1.0):
        self.base = base_url.rstrip("/")
        self.timeout = timeout

    def _get(self, path: str) -> tuple[int, bytes]:
        return _http("GET", f"{self.base}/computeMetadata/v1/{path}", {"Metadata-Flavor": "Google"}, self.timeout)

    def check(self) -> Notice | None:
        code, body = self._get("instance/preempted")
        if code != 200:
            raise ConnectionError(f"GCP metadata instance/preempted answered {code}")
        if body.decode().strip().upper() == "TRUE":
            return Notice(source="gcp-preempted", deadline=time.time() + GCP_NOTICE_S, reason="GCE preemption")
        return None

    def detect(self) -> bool:
        try:
            code, _ = self._get("instance/id")
            return code == 200
        except OSError:
            return False


class SigtermSource:
    """SIGTERM (RunPod gives ~5 s before SIGKILL).

    Docker delivers SIGTERM to the container's PID 1, not to Ray workers, so the pod's entrypoint traps it and
    touches `flag_file`; a handler is also installed when we run on the main thread (a plain driver).
    """

    name = "sigterm"

    def __init__(self, grace_s: float = 5.0, flag_file: str = SIGTERM_FLAG_FILE, install_handler: bool = True):
        self.grace_s = grace_s
        self.flag_file = flag_file
        self._received: float | None = None
        self._prev = None
        self._installed = False
        self._timer: threading.Timer | None = None
        self._redelivered = False
        if install_handler and threading.current_thread() is threading.main_thread():
            self._prev = signal.signal(signal.SIGTERM, self._on_signal)
            self._installed = True

    def _on_signal(self, signum, frame) -> None:
        if self._redelivered:  # our own second delivery, after the notice had time to be seen
            self._call_prev(signum, frame)
            return
        self._received = time.time()
        # The previous handler (Ray's worker exits via sys.exit) must run on the main thread, where handlers run:
        # re-deliver the signal to ourselves later rather than calling it from a timer thread, where sys.exit
        # would only end that thread and the worker would never exit.
        if self._prev is not signal.SIG_IGN:
            self._timer = threading.Timer(max(self.grace_s - 1.0, 0.0), self._redeliver, (signum,))
            self._timer.daemon = True
            self._timer.start()

    def _redeliver(self, signum) -> None:
        self._redelivered = True
        os.kill(os.getpid(), signum)

    def _call_prev(self, signum, frame) -> None:
        prev = self._prev
        if callable(prev):
            prev(signum, frame)
        elif prev in (signal.SIG_DFL, None):
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._installed:
            signal.signal(signal.SIGTERM, self._prev if self._prev is not None else signal.SIG_DFL)
            self._installed = False

    def check(self) -> Notice | None:
        if self._received is None and os.path.exists(self.flag_file):
            self._received = os.path.getmtime(self.flag_file)
        if self._received is None:
            return None
        return Notice(source="sigterm", deadline=self._received + self.grace_s, reason="SIGTERM received")


def make_source(name: str, **kw) -> Source:
    """'aws' | 'gcp' | 'sigterm' → a source with the given keyword options."""
    table = {"aws": AwsImdsSource, "gcp": GcpMetadataSource, "sigterm": SigtermSource}
    if name not in table:
        raise ValueError(f"unknown preemption source {name!r}; expected one of {sorted(table)}")
    return table[name](**kw)


class PreemptionWatcher:
    """Polls its sources on a daemon thread; `notice()` never blocks.

    `notice()` returns the most urgent notice seen so far (earliest deadline); `on_notice` is called once per
    new source that reports (on the watcher thread — keep it short).
    """

    def __init__(self, sources: list, poll_s: float = 1.0, on_notice: Callable[[Notice], None] | None = None):
        self.sources: list = [make_source(s) if isinstance(s, str) else s for s in sources]
        self.poll_s = poll_s
        self.on_notice = on_notice
        self._notice: Notice | None = None
        self._seen: set[str] = set()
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
        with self._lock:
            return self._notice

    def poll_once(self) -> Notice | None:
        """One pass over the sources (the thread's body; also handy in tests)."""
        for src in self.sources:
            try:
                n = src.check()
            except Exception as e:  # noqa: BLE001 — a metadata blip must never kill the watcher
                count = self._errors[src.name] = self._errors.get(src.name, 0) + 1
                if count in (1, 10, 100):
                    log.warning("preemption source %s failed (%d times): %s", src.name, count, e)
                continue
            if n is None:
                continue
            with self._lock:
                new = n.source not in self._seen
                self._seen.add(n.source)
                if self._notice is None or n.deadline < self._notice.deadline:
                    self._notice = n
            if new:
                log.warning("preemption notice from %s: %s (deadline in %.0f s)", n.source, n.reason,
                            n.deadline - time.time())
                if self.on_notice is not None:
                    try:
                        self.on_notice(n)
                    except Exception:  # noqa: BLE001
                        log.exception("on_notice callback failed")
        return self.notice()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            self._stop.wait(self.poll_s)


def _split(spec: str) -> list[str]:
    return [s.strip().lower() for s in (spec or "").split(",") if s.strip()]


def _ray_node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
    except Exception:  # noqa: BLE001
        return "local"


def _dmi_rules_out(vendor: str) -> bool:
    """True when DMI data is readable and names another vendor: skip a network probe (slow DNS, no route)."""
    texts = []
    for f in ("sys_vendor", "product_name", "bios_vendor"):
        try:
            texts.append(Path("/sys/class/dmi/id", f).read_text())
        except OSError:
            pass
    return bool(texts) and vendor.lower() not in " ".join(texts).lower()


def watcher_from_settings(settings, on_notice: Callable[[Notice], None] | None = None) -> PreemptionWatcher | None:
    """A watcher for this node per settings.preemption_sources; None when off or nothing applies ('auto')."""
    spec = _split(getattr(settings, "preemption_sources", "auto"))
    if not spec or spec == ["none"]:
        return None
    aws_url = getattr(settings, "aws_imds_url", AWS_IMDS_URL)
    gcp_url = getattr(settings, "gcp_metadata_url", GCP_METADATA_URL)
    grace = getattr(settings, "sigterm_notice_s", 5.0)
    poll = getattr(settings, "preemption_poll_s", 1.0)
    flag = getattr(settings, "sigterm_flag_file", SIGTERM_FLAG_FILE)
    if "{node_id}" in flag:
        flag = flag.format(node_id=_ray_node_id())
    sources: list = []
    if "auto" in spec:
        # Cheap probes with short timeouts: a laptop must not wait seconds here.
        if os.environ.get("RUNPOD_POD_ID"):
            sources.append(SigtermSource(grace_s=grace, flag_file=flag))
        else:
            aws = AwsImdsSource(aws_url, timeout=0.3)
            gcp = GcpMetadataSource(gcp_url, timeout=0.3)
            # Probes of the real endpoints only where the machine's DMI data allows the cloud; custom URLs
            # (loopback in tests) are always probed.
            try_aws = aws_url != AWS_IMDS_URL or not _dmi_rules_out("amazon")
            try_gcp = gcp_url != GCP_METADATA_URL or not _dmi_rules_out("google")
            if try_aws and aws.detect():
                aws.timeout = 1.0
                sources.append(aws)
            elif try_gcp and gcp.detect():
                gcp.timeout = 1.0
                sources.append(gcp)
    else:
        for name in spec:
            if name == "aws":
                sources.append(AwsImdsSource(aws_url))
            elif name == "gcp":
                sources.append(GcpMetadataSource(gcp_url))
            elif name in ("sigterm", "runpod"):
                sources.append(SigtermSource(grace_s=grace, flag_file=flag))
            else:
                raise ValueError(f"unknown preemption source {name!r} in preemption_sources")
    if not sources:
        return None
    return PreemptionWatcher(sources, poll_s=poll, on_notice=on_notice)


def drain_this_node(deadline_s: float, message: str, node_id_hex: str | None = None) -> bool:
    """Ask the GCS to drain the current Ray node (reason PREEMPTION). True if accepted.

    `deadline_s`: a unix time (as in Notice.deadline) when > 1e9, else seconds from now. Ray kills nothing at
    the deadline; the caller's actor must stop at a clip boundary itself.
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
