"""Webhook against a real loopback HTTP server (127.0.0.1, stopped by each test): signatures verify, 5xx is
retried with the same delivery id, 4xx is not, a redirect is a failure and never followed, a replay cannot pass
de-duplication, a dead receiver never blocks, secrets never reach the logs — and the receiver snippet in
docs/webhooks.md, run as written, accepts real deliveries and refuses forgeries and replays."""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from core.settings import Settings
from orchestrator.deliver.webhook import (DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, Webhook, sign,
                                  verify)

SECRET = "s3cr3t-hmac-key-do-not-log"
TOKEN = "tok-in-url-path"
DOC = Path(__file__).resolve().parents[1] / "docs" / "webhooks.md"


class Receiver:
    """Records every request; answers with the next scripted status code (the last one repeats). A 3xx code
    comes with `Location: <location>`. With `check` (the docs' snippet), 2xx answers run it first and record
    its verdict, as a real receiver would."""

    def __init__(self, codes=(200,), location: str | None = None, check=None):
        self.codes, self.requests, self.lock = list(codes), [], threading.Lock()
        self.verdicts: list[str] = []
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
                with rec.lock:
                    rec.requests.append((self.path, dict(self.headers), body))
                    code = rec.codes.pop(0) if len(rec.codes) > 1 else rec.codes[0]
                    if check and 200 <= code < 300:
                        verdict = check(SECRET, self.headers, body)
                        rec.verdicts.append(verdict)
                        code = 401 if verdict == "invalid" else code
                self.send_response(code)
                if 300 <= code < 400 and location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_GET = do_PUT = do_HEAD = _any  # noqa: N815 - a followed redirect may use any of them

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
        assert sig.startswith("sha256=") and verify(SECRET, body, headers)
        assert verify(SECRET, body, {k.lower(): v for k, v in headers.items()})  # header names: any case
        assert abs(int(ts) - time.time()) < 30
        assert not verify("wrong-secret", body, headers)
        assert not verify(SECRET, body + b" ", headers)  # body tampered
        assert not verify(SECRET, body, {**headers, TIMESTAMP_HEADER: str(int(ts) + 1)})  # timestamp is signed
        assert not verify(SECRET, body, {**headers, DELIVERY_HEADER: str(uuid.uuid4())})  # so is the delivery id
        assert not verify(SECRET, body, headers, now=int(ts) + 3600)  # a stale replay is refused
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
    assert verify(SECRET, b2, h2)
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
    assert sign("k", "1", "d", b"{}") == sign("k", "1", "d", b"{}") != sign("k", "2", "d", b"{}")
    assert sign("k", "1", "d", b"{}") != sign("k", "1", "e", b"{}")


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_a_redirect_is_a_failure_and_is_never_followed(receiver, caplog, code):
    """urllib used to follow a 302 as a GET to any host (a cloud metadata address included) and count it as
    delivered. The redirect target here is a second loopback server standing in for such an address."""
    caplog.set_level(logging.DEBUG)
    target = receiver(200)
    r = Receiver((code,), location=target.url.replace(TOKEN, "elsewhere"))
    try:
        hook = Webhook(r.url, SECRET)
        hook.job(_job("a", "published"))
        assert hook.close(10)
        assert (hook.sent, hook.failed) == (0, 1)
        assert len(r.requests) == 1  # not retried either: the same answer would come back
        assert target.requests == []  # never followed
        assert f"answered {code}" in caplog.text and "redirect" in caplog.text and TOKEN not in caplog.text
    finally:
        r.stop()


def _doc_snippet():
    """The receiver snippet of docs/webhooks.md, executed as written (a fresh namespace per call)."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    code = next(b for b in blocks if "def check(" in b)
    ns: dict = {}
    exec(compile(code, str(DOC), "exec"), ns)  # noqa: S102 - our own documentation, run to keep it true
    return ns["check"]


def test_the_documented_receiver_accepts_deliveries_and_refuses_forgeries_and_replays():
    """Real deliveries (one retried after a 503) to a loopback receiver that runs the docs' snippet; then the
    captured requests are replayed as an attacker would: as they are, under a new delivery id, and late."""
    check = _doc_snippet()
    r = Receiver((503, 200, 200), check=check)
    try:
        hook = Webhook(r.url, SECRET)
        hook.job(_job("a", "published"), run_id="run-1")
        hook.run_finished({"run_id": "run-1"})
        assert hook.close(15) and (hook.sent, hook.failed) == (2, 0)
        assert r.verdicts == ["fresh", "fresh"]  # the retried event was accepted once, after the 503
        (_, h1, b1), (_, h2, _), _ = r.requests
        assert h1[DELIVERY_HEADER] == h2[DELIVERY_HEADER] and h1[TIMESTAMP_HEADER] <= h2[TIMESTAMP_HEADER]

        def replay(headers: dict, body: bytes) -> int:
            req = urllib.request.Request(r.url, data=body, method="POST", headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    return resp.status
            except urllib.error.HTTPError as e:
                return e.code

        (_, h, body) = r.requests[-1]
        sent = {k: v for k, v in h.items() if k.lower().startswith("x-s2v") or k == "Content-Type"}
        assert replay(sent, body) == 200 and r.verdicts[-1] == "duplicate"  # as captured: dropped, answered 2xx
        assert replay({**sent, DELIVERY_HEADER: str(uuid.uuid4())}, body) == 401  # new id: the signature breaks
        assert replay(sent, body.replace(b"run-1", b"run-2")) == 401
        assert r.verdicts[-2:] == ["invalid", "invalid"]
    finally:
        r.stop()
    # late replays and junk, and the code base's verify() agrees with the snippet on each
    check = _doc_snippet()
    ts = str(int(time.time()))
    good = {TIMESTAMP_HEADER: ts, DELIVERY_HEADER: "d-1", SIGNATURE_HEADER: sign(SECRET, ts, "d-1", b"{}")}
    cases = [(good, time.time() + 301, "invalid"), ({**good, TIMESTAMP_HEADER: "soon"}, None, "invalid"),
             ({}, None, "invalid"), (good, None, "fresh"), (good, None, "duplicate")]
    for headers, now, want in cases:
        assert check(SECRET, headers, b"{}", now=now) == want
        assert verify(SECRET, b"{}", headers, now=now) == (want != "invalid")


def test_a_non_http_url_is_refused_when_settings_load(tmp_path, run_cli, monkeypatch, capsys):
    """An ftp:// URL used to pass settings and crash with a traceback after planning."""
    from pydantic import ValidationError

    for bad in ("ftp://127.0.0.1/hook", "file:///etc/passwd", "http:///no-host", "http://169.254.169.254/latest"):
        with pytest.raises(ValidationError, match="webhook_url"):
            Settings(webhook_url=bad)
    assert Settings(webhook_url="https://hooks.example/x").webhook_url == "https://hooks.example/x"
    m = tmp_path / "m.yaml"
    m.write_text("jobs: []\n")
    monkeypatch.setenv("S2V_WEBHOOK_URL", f"ftp://127.0.0.1/{TOKEN}")
    assert run_cli("validate", m) == 2
    err = capsys.readouterr().err
    assert "S2V_WEBHOOK_URL" in err and "http:// or https://" in err and TOKEN not in err and "Traceback" not in err


@pytest.mark.parametrize("url", ["http://2852039166/", "http://0xa9fea9fe/", "http://[::ffff:169.254.169.254]/",
                                 "http://0251.0376.0251.0376/", "http://169.254.43518/", "http://[fd00:ec2::254]/",
                                 "http://metadata.google.internal./", "http://[fe80::1%25eth0]/"])
def test_every_spelling_of_the_metadata_address_is_refused(url):
    """169.254.169.254 written as a decimal, hex, octal or short number, or IPv4-mapped IPv6, passed the guard."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="metadata"):
        Settings(webhook_url=url)


def test_a_name_that_resolves_to_the_metadata_address_is_refused_before_sending(monkeypatch):
    """A DNS name can point at the metadata service (169.254.169.254.nip.io and the like): the sender resolves the
    name before each POST and refuses it, for good (no retries), without sending a byte."""
    import socket

    from orchestrator.deliver import webhook

    real = socket.getaddrinfo
    monkeypatch.setattr(webhook.socket, "getaddrinfo", lambda host, *a, **k: (
        [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", 80))] if host == "hooks.rebind.example"
        else real(host, *a, **k)))
    hook = Webhook("http://hooks.rebind.example/x", "s", attempts=3)
    with pytest.raises(webhook.WebhookRejected, match="resolves to a cloud metadata"):
        hook._post("run.finished", "d1", {"event": "run.finished"})


def test_the_post_goes_to_the_address_that_was_checked(monkeypatch):
    """DNS rebinding: a name that answers with a harmless address when checked and with another when urllib
    looks it up again. The name is resolved once, checked, and the connection goes to that very address: here the
    first answer is the receiver on 127.0.0.1 and every later one 127.0.0.2 (nothing listens there)."""
    import socket

    from orchestrator.deliver import webhook

    hooks = Receiver((200,))
    port = hooks.server.server_address[1]
    real, answers = socket.getaddrinfo, []

    def rebinding(host, *a, **k):
        if host != "hooks.rebind.example":
            return real(host, *a, **k)
        answers.append(host)
        ip = "127.0.0.1" if len(answers) == 1 else "127.0.0.2"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))]

    monkeypatch.setattr(webhook.socket, "getaddrinfo", rebinding)
    try:
        Webhook(f"http://hooks.rebind.example:{port}/x", "s", attempts=1)._post("run.finished", "d1", {"e": 1})
    finally:
        hooks.stop()
    assert len(hooks.requests) == 1 and answers == ["hooks.rebind.example"]
