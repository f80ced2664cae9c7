"""Webhook against a real loopback HTTP server (127.0.0.1, stopped by each test): signatures verify, 5xx is
retried with the same delivery id, 4xx is not, a dead receiver never blocks, secrets never reach the logs."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from core.settings import Settings
from orchestrator.webhook import (DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, Webhook, sign,
                                  verify)

SECRET = "s3cr3t-hmac-key-do-not-log"
TOKEN = "tok-in-url-path"


class Receiver:
    """Records every POST; answers with the next scripted status code (the last one repeats)."""

    def __init__(self, codes=(200,)):
        self.codes, self.requests, self.lock = list(codes), [], threading.Lock()
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with rec.lock:
                    rec.requests.append((self.path, dict(self.headers), body))
                    code = rec.codes.pop(0) if len(rec.codes) > 1 else rec.codes[0]
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):  # keep test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/{TOKEN}?k={TOKEN}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def receiver(request):
    made = []

    def make(*codes):
        r = Receiver(codes or (200,))
        made.append(r)
        return r

    yield make
    for r in made:
        r.stop()


def _job(jid, status, **kw):
    return {"id": jid, "status": status, "reason": None, "output": f"/out/{jid}.mp4", **kw}


def test_signed_events_per_job_and_run(receiver, caplog):
    caplog.set_level(logging.DEBUG)
    r = receiver(200)
    hook = Webhook(r.url, SECRET)
    t0 = time.monotonic()
    assert hook.job(_job("a", "published"), run_id="run-1")
    assert hook.job(_job("b", "failed", reason="quality gate: black"), run_id="run-1")
    assert not hook.job(_job("c", "skipped"))  # nothing changed: no event
    assert hook.run_finished({"run_id": "run-1", "published": 1, "failed": 1, "exit_code": 1})
    assert time.monotonic() - t0 < 0.2  # queued, not sent inline
    assert hook.close(10)
    assert (hook.sent, hook.failed) == (3, 0)
    events = [h[EVENT_HEADER] for _, h, _ in r.requests]
    assert events == ["job.published", "job.failed", "run.finished"]  # in order, from one sender thread
    for path, headers, body in r.requests:
        ts, sig = headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER]
        assert sig.startswith("sha256=") and verify(SECRET, body, ts, sig)
        assert abs(int(ts) - time.time()) < 30
        assert not verify("wrong-secret", body, ts, sig)
        assert not verify(SECRET, body + b" ", ts, sig)  # body tampered
        assert not verify(SECRET, body, str(int(ts) + 1), sig)  # timestamp is part of the signed material
        assert not verify(SECRET, body, ts, sig, now=int(ts) + 3600)  # a stale replay is refused
        assert headers["Content-Type"] == "application/json" and path.startswith("/hooks/")
    docs = [json.loads(b) for _, _, b in r.requests]
    assert docs[0]["job"]["id"] == "a" and docs[0]["run_id"] == "run-1"
    assert docs[1]["job"]["reason"] == "quality gate: black"
    assert docs[2]["run"]["exit_code"] == 1
    assert SECRET not in caplog.text and TOKEN not in caplog.text and SECRET not in repr(hook)


def test_5xx_is_retried_with_the_same_delivery_id(receiver, caplog):
    caplog.set_level(logging.DEBUG)
    r = receiver(503, 200)
    hook = Webhook(r.url, SECRET)
    hook.job(_job("a", "published"))
    assert hook.close(15)
    assert len(r.requests) == 2 and (hook.sent, hook.failed) == (1, 0)
    (_, h1, b1), (_, h2, b2) = r.requests
    assert h1[DELIVERY_HEADER] == h2[DELIVERY_HEADER] and b1 == b2  # receivers can drop the duplicate
    assert verify(SECRET, b2, h2[TIMESTAMP_HEADER], h2[SIGNATURE_HEADER])
    assert "503" in caplog.text  # the retry is visible …
    assert SECRET not in caplog.text and TOKEN not in caplog.text  # … without the secret or the URL's token


def test_4xx_is_not_retried_and_never_raises(receiver, caplog):
    caplog.set_level(logging.DEBUG)
    r = receiver(400)
    hook = Webhook(r.url, SECRET)
    hook.job(_job("a", "failed", reason="x"))
    hook.run_finished({"run_id": "r"})
    assert hook.close(10)
    assert len(r.requests) == 2  # one attempt per event, no retry
    assert (hook.sent, hook.failed) == (0, 2)
    assert "refused the event with 400" in caplog.text and SECRET not in caplog.text


def test_dead_receiver_never_blocks_the_run():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: every attempt is refused (transient, so it would retry for a minute)
    hook = Webhook(f"http://127.0.0.1:{port}/x", SECRET)
    t0 = time.monotonic()
    for i in range(50):
        hook.job(_job(f"j{i}", "published"))
    assert time.monotonic() - t0 < 0.5
    t1 = time.monotonic()
    assert hook.close(1.0) is False  # still retrying: reported, not waited for
    assert time.monotonic() - t1 < 2.5
    assert not hook.job(_job("late", "published"))  # closed


def test_unsigned_without_secret_and_from_settings(receiver):
    assert Webhook.from_settings(Settings()) is None
    r = receiver(200)
    s = Settings(webhook_url=r.url, webhook_secret=SECRET)
    assert SECRET not in repr(s) and TOKEN not in repr(s)
    hook = Webhook.from_settings(s)
    assert hook is not None and SECRET not in repr(hook) and TOKEN not in repr(hook)
    bare = Webhook(r.url)
    bare.run_finished({"run_id": "r"})
    assert bare.close(5)
    assert SIGNATURE_HEADER not in r.requests[0][1]
    with pytest.raises(ValueError):
        Webhook("ftp://127.0.0.1/x")
    assert sign("k", "1", b"{}") == sign("k", "1", b"{}") != sign("k", "2", b"{}")
