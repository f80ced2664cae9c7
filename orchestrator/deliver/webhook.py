"""Optional webhook: an HMAC-signed POST per job published/failed and per run finished, sent off the run's thread.
The receiver's contract (headers, signature, tolerance, retries, de-duplication) is docs/webhooks.md."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import queue
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from typing import Mapping
from urllib.parse import urlsplit

from core.errors import S2VError, TransientError
from core.retry import retrying
from core.settings import is_metadata_host

log = logging.getLogger("s2v.webhook")

SIGNATURE_HEADER = "X-S2V-Signature"
TIMESTAMP_HEADER = "X-S2V-Timestamp"
EVENT_HEADER = "X-S2V-Event"
DELIVERY_HEADER = "X-S2V-Delivery"  # the same on every retry of one event, so receivers can drop duplicates
JOB_EVENTS = {"published": "job.published", "failed": "job.failed"}
TOLERANCE_S = 300  # a receiver refuses a timestamp further than this from its clock
_STOP = object()


class WebhookRejected(S2VError):
    """The receiver answered 4xx: the request itself is wrong, so sending it again cannot help."""


def sign(secret: str, timestamp: str, delivery: str, body: bytes) -> str:
    """`sha256=<hex>` of HMAC-SHA256 over "<timestamp>.<delivery id>.<body>". The timestamp is signed so a capture
    cannot be replayed later with a fresh one; the delivery id so a replay cannot pass de-duplication under a new
    one (receivers drop ids they have seen)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.{delivery}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, body: bytes, headers: Mapping[str, str], *, tolerance_s: float = TOLERANCE_S,
           now: float | None = None) -> bool:
    """What a receiver does (docs/webhooks.md has the same in a copyable snippet): recompute the signature over
    the headers' timestamp and delivery id and the raw body, in constant time, and refuse stale timestamps.
    headers: any mapping; names are matched case-insensitively."""
    h = {str(k).lower(): v for k, v in headers.items()}
    timestamp, delivery = h.get(TIMESTAMP_HEADER.lower(), ""), h.get(DELIVERY_HEADER.lower(), "")
    try:
        age = abs((time.time() if now is None else now) - int(timestamp))
    except (TypeError, ValueError):
        return False
    expected = sign(secret, timestamp, delivery, body)
    return age <= tolerance_s and hmac.compare_digest(expected, h.get(SIGNATURE_HEADER.lower()) or "")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect: urllib would turn the POST into a GET to wherever the Location points (a cloud
    metadata address included) and call that delivered. A 3xx surfaces as an HTTPError instead."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102 - urllib's hook
        return None


def _checked_connection(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None, **_kw):
    """socket.create_connection that resolves the name once, refuses it when any address is a metadata /
    link-local one, and connects to the addresses it checked: a name that answers differently a moment later (DNS
    rebinding) cannot slip past, because there is no second lookup."""
    host, port = address
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if any(is_metadata_host(str(info[4][0])) for info in infos):
        raise WebhookRejected(f"{host} resolves to a cloud metadata / link-local address; events never go there")
    last: OSError | None = None
    for family, kind, proto, _, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as e:
            sock.close()
            last = e
    raise last or OSError(f"no address for {host}")


class _CheckedHTTP(http.client.HTTPConnection):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._create_connection = _checked_connection


class _CheckedHTTPS(http.client.HTTPSConnection):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._create_connection = _checked_connection  # TLS still checks the certificate against the name


class _CheckedHandlers(urllib.request.HTTPHandler, urllib.request.HTTPSHandler):
    """urllib's HTTP and HTTPS handlers over the checked connections."""

    def do_open(self, http_class, req, **kw):  # noqa: D102 - urllib's hook
        checked = _CheckedHTTPS if issubclass(http_class, http.client.HTTPSConnection) else _CheckedHTTP
        return super().do_open(checked, req, **kw)


_opener = urllib.request.build_opener(_NoRedirect, _CheckedHandlers)


def _where(url: str) -> str:
    """scheme://host[:port] only: paths and queries of webhook URLs often carry tokens (Slack, Teams)."""
    u = urlsplit(url)
    return f"{u.scheme}://{u.hostname or ''}{f':{u.port}' if u.port else ''}"


class Webhook:
    """Queues events and posts them from one daemon thread; a dead or slow receiver never slows the run."""

    def __init__(self, url: str, secret: str | None = None, *, timeout_s: float = 10.0, max_queue: int = 10000,
                 attempts: int | None = None, max_delay_s: float | None = None):
        if urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"webhook URL must be http(s), got {_where(url)!r}")
        self._url, self._secret = url, secret
        self.timeout_s, self.attempts, self.max_delay_s = timeout_s, attempts, max_delay_s
        self._q: queue.Queue = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._deadline: float | None = None  # set by close(): nothing is attempted past it
        self.sent = self.failed = self.dropped = 0

    def __repr__(self) -> str:  # never the secret, never the URL's path or query
        return f"Webhook({_where(self._url)}, signed={self._secret is not None})"

    @classmethod
    def from_settings(cls, settings) -> "Webhook | None":
        url = settings.webhook_url
        return cls(url, settings.webhook_secret) if url else None

    # ---- what the runner calls ----
    def job(self, result: dict, run_id: str | None = None) -> bool:
        """Queue job.published / job.failed; other statuses (skipped, invalid, …) send nothing. Returns queued."""
        event = JOB_EVENTS.get(result.get("status"))
        return bool(event) and self._put(event, {"run_id": run_id, "job": result})

    def run_finished(self, summary: dict) -> bool:
        return self._put("run.finished", {"run": summary})

    def close(self, timeout_s: float = 10.0) -> bool:
        """Wait at most timeout_s for queued events; True when every one was delivered or refused for good."""
        with self._lock:
            self._deadline = time.monotonic() + timeout_s
            thread = self._thread
        if thread is None:
            return True
        try:
            self._q.put(_STOP, timeout=max(timeout_s, 0.01))
        except queue.Full:
            return False
        thread.join(timeout_s)
        if thread.is_alive():
            log.warning("webhook %s: gave up waiting after %.0fs; undelivered events are dropped",
                        _where(self._url), timeout_s)
            return False
        return True

    # ---- internals ----
    def _put(self, event: str, data: dict) -> bool:
        item = (event, str(uuid.uuid4()), {"event": event, "sent_at": time.time(), **data})
        with self._lock:
            if self._deadline is not None:
                return False  # closed
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="s2v-webhook", daemon=True)
                self._thread.start()
        try:
            self._q.put_nowait(item)
            return True
        except queue.Full:
            self.dropped += 1
            log.warning("webhook %s: queue full, dropping %s", _where(self._url), event)
            return False

    def _loop(self) -> None:
        while True:
            item = self._q.get()
            if item is _STOP:
                return
            if self._deadline is not None and time.monotonic() > self._deadline:
                self.dropped += 1
                continue
            event, delivery, payload = item
            try:
                delay = self.max_delay_s
                if self._deadline is not None:  # closing: retries must end by the deadline too
                    left = max(0.1, self._deadline - time.monotonic())
                    delay = left if delay is None else min(delay, left)
                retrying("webhook", attempts=self.attempts, max_delay_s=delay)(self._post, event, delivery, payload)
                self.sent += 1
            except Exception as e:  # noqa: BLE001 - a webhook failure is reported, never raised into the run
                self.failed += 1
                log.warning("webhook %s: %s not delivered: %s", _where(self._url), event, e)

    def _post(self, event: str, delivery: str, payload: dict) -> None:
        body = json.dumps(payload, sort_keys=True, default=str).encode()
        ts = str(int(time.time()))  # fresh per attempt: a retry is signed for the moment it is sent
        headers = {"Content-Type": "application/json", "User-Agent": "s2v-batch-webhook",
                   EVENT_HEADER: event, DELIVERY_HEADER: delivery, TIMESTAMP_HEADER: ts}
        if self._secret:
            headers[SIGNATURE_HEADER] = sign(self._secret, ts, delivery, body)
        req = urllib.request.Request(self._url, data=body, headers=headers, method="POST")
        where = _where(self._url)
        try:
            with _opener.open(req, timeout=self.timeout_s) as resp:
                resp.read(1 << 16)
        except urllib.error.HTTPError as e:  # before URLError: it is one
            if 300 <= e.code < 400:  # the Location is not logged either: it may carry a token like the URL
                raise WebhookRejected(f"{where} answered {e.code} (a redirect); redirects are never followed: "
                                      "set webhook_url to the final address") from None
            if e.code >= 500 or e.code == 429:
                raise TransientError(f"{where} answered {e.code}") from None
            raise WebhookRejected(f"{where} refused the event with {e.code}") from None
        except (urllib.error.URLError, OSError) as e:  # refused, reset, DNS, timeout
            reason = getattr(e, "reason", e)
            raise TransientError(f"{where} unreachable ({type(reason).__name__})") from None
