"""Cloud metadata sources: AWS IMDSv2 (spot instance-action, rebalance recommendation) and GCP `instance/preempted`."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from calendar import timegm

from .notice import AWS_IMDS_URL, GCP_METADATA_URL, Notice

AWS_NOTICE_S = 120.0  # documented spot interruption warning
GCP_NOTICE_S = 30.0  # documented GCE preemption notice
# AWS gives a rebalance recommendation no end and may keep serving it for the instance's whole life: after this
# long without an interruption it stops holding new work off the node (settings.preemption_warning_expiry_s).
WARNING_EXPIRY_S = 600.0


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
    """Spot instance-action (an interruption) and rebalance recommendation (a warning) through IMDSv2."""

    name = "aws"

    def __init__(self, base_url: str = AWS_IMDS_URL, timeout: float = 1.0, rebalance: bool = True,
                 warning_expiry_s: float = WARNING_EXPIRY_S):
        self.base = base_url.rstrip("/")
        self.timeout = timeout
        self.rebalance = rebalance
        self.warning_expiry_s = warning_expiry_s
        self._token: str | None = None
        self._token_expiry = 0.0
        self._items: dict[tuple, Notice] = {}  # what IMDS served at the last check, by its own content

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

    def _item(self, path: str) -> dict | None:
        """The JSON IMDS serves at `path`, or None on its normal 404; anything else is an error."""
        code, body = self._get(path)
        if code == 404:
            return None
        if code != 200:
            raise ConnectionError(f"IMDS {path} answered {code}")
        data = json.loads(body)
        if not isinstance(data, dict):
            raise ValueError(f"IMDS {path} served {body[:80]!r}, not a JSON object")
        return data

    def check(self) -> list[Notice]:
        now, items = time.time(), {}
        action = self._item("/latest/meta-data/spot/instance-action")
        if action is not None:
            key = ("action", action.get("action"), action.get("time"))
            try:
                deadline = _parse_iso(action["time"])
            except (KeyError, TypeError, ValueError):
                deadline = now + AWS_NOTICE_S
            items[key] = self._items.get(key) or Notice(
                source="aws-spot", kind="interruption", deadline=deadline, seen=now,
                reason=f"spot instance-action: {action.get('action')} at {action.get('time')}")
        if self.rebalance:
            rebalance = self._item("/latest/meta-data/events/recommendations/rebalance")
            if rebalance is not None:
                key = ("rebalance", rebalance.get("noticeTime"))
                try:
                    issued = _parse_iso(rebalance["noticeTime"])
                except (KeyError, TypeError, ValueError):
                    issued = now
                items[key] = self._items.get(key) or Notice(
                    source="aws-rebalance", kind="warning", deadline=issued + self.warning_expiry_s, seen=now,
                    reason=f"rebalance recommendation (noticeTime {rebalance.get('noticeTime')})")
        self._items = items
        return list(items.values())

    def detect(self) -> bool:
        try:
            self._get_token()
            return True
        except OSError:
            return False


class GcpMetadataSource:
    """`instance/preempted` on the GCP metadata server: 'TRUE' once the 30 s countdown has started."""

    name = "gcp"

    def __init__(self, base_url: str = GCP_METADATA_URL, timeout: float = 1.0, notice_s: float = GCP_NOTICE_S):
        self.base = base_url.rstrip("/")
        self.timeout = timeout
        self.notice_s = notice_s
        self._current: Notice | None = None  # one preemption: from the first TRUE to the next FALSE

    def _get(self, path: str) -> tuple[int, bytes]:
        return _http("GET", f"{self.base}/computeMetadata/v1/{path}", {"Metadata-Flavor": "Google"}, self.timeout)

    def check(self) -> list[Notice]:
        code, body = self._get("instance/preempted")
        if code != 200:
            raise ConnectionError(f"GCP metadata instance/preempted answered {code}")
        if body.decode().strip().upper() != "TRUE":
            self._current = None
            return []
        if self._current is None:
            now = time.time()
            self._current = Notice(source="gcp-preempted", kind="interruption", deadline=now + self.notice_s,
                                   reason="GCE preemption", seen=now)
        return [self._current]

    def detect(self) -> bool:
        try:
            code, _ = self._get("instance/id")
            return code == 200
        except OSError:
            return False
