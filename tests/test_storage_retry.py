"""Retries live in the storage layer, once. A loopback endpoint that answers every S3 request with 503 (an S3 that
is down; nothing leaves 127.0.0.1) counts what each orchestrator operation costs: the storage policy's attempts ×
botocore's own three, never that again per caller. Call sites once wrapped storage calls in a retry of their own:
8 × 8 attempts against a failing endpoint, and the calls that forgot it (publish, checkpoints, reports) had none."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from core import retry
from core.errors import S2VError
from storage_servers import isolate_cloud_env, s3_settings

ATTEMPTS = 3  # the storage policy's, for this test
BOTO_ATTEMPTS = 3  # botocore: the first request and the two retries infra/storage/s3.py allows it


@pytest.fixture
def down(monkeypatch, tmp_path):
    """An S3 endpoint on 127.0.0.1 that is always down (503 SlowDown); yields (settings, request counter)."""
    isolate_cloud_env(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setitem(retry.POLICIES, "storage", (ATTEMPTS, 30.0, 0.01, 0.02))
    from botocore.retries.standard import ExponentialBackoff

    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, context: 0.0)  # count, don't wait
    seen = []

    class Down(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _fail(self):
            seen.append((self.command, self.path))
            length = int(self.headers.get("Content-Length") or 0)
            if length and self.headers.get("Expect", "").lower() != "100-continue":
                self.rfile.read(length)  # (with Expect: 100-continue the client sends no body after a final answer)
            self.close_connection = True
            body = b"<Error><Code>SlowDown</Code><Message>down</Message></Error>"
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _fail

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Down)
    th = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    th.start()
    try:
        yield s3_settings(f"http://127.0.0.1:{srv.server_address[1]}", tmp_path, work="s3://bucket/work"), seen
    finally:
        srv.shutdown()
        srv.server_close()


def _requests(seen, fn) -> int:
    seen.clear()
    with pytest.raises(S2VError):
        fn()
    return len(seen)


def test_each_operation_is_retried_by_the_storage_layer_once(down, tmp_path):
    from orchestrator.deliver.outputs import published_key
    from orchestrator.workarea.layout import WorkArea
    from policy import plan

    settings, seen = down
    wa = WorkArea.at(settings.work, settings)
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"x")
    once = ATTEMPTS * BOTO_ATTEMPTS
    assert _requests(seen, lambda: wa.done_clips("k")) == once  # a listing
    assert _requests(seen, lambda: wa.write_state("r", {"status": "running"})) == once  # a write
    # the upload's first step, then the cleanup of its temp object (best effort, botocore's retries only)
    assert _requests(seen, lambda: wa.save_clip("k", 0, 0, clip, None, {})) == once + BOTO_ATTEMPTS
    p = plan("j").model_copy(update={"job": plan("j").job.model_copy(update={"output": "s3://bucket/out"})})
    assert _requests(seen, lambda: published_key(p, settings)) == once  # the sidecar's existence
