"""GCS backend against a real fake-gcs-server on 127.0.0.1: resumable upload through a server kill,
generation preconditions, credential/bucket/object errors, signed URLs and the input cache."""

from __future__ import annotations

import json
import os
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("google.cloud.storage", reason="the gcs extra is not installed")

from infra.storage import cache
from infra.storage.gcs import GCSStorage
from infra.storage.uri import parse
from core.errors import InputError, StorageError
from storage_servers import GCSServer, KillingProxy, free_port, gcs_env, gcs_server, gcs_settings, unique  # noqa: F401

MB = 1024 * 1024


@pytest.fixture
def bucket(gcs_env):
    return gcs_env.make_bucket(unique("gcst"))


@pytest.fixture
def token_server():
    """A loopback OAuth token endpoint that refuses every grant, as Google does for a revoked key."""

    class Refuse(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = json.dumps({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}).encode()
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/token"
    srv.shutdown()
    srv.server_close()


def service_account_file(tmp_path, token_uri: str):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    info = {"type": "service_account", "project_id": "s2v-test", "private_key_id": "k1", "private_key": pem,
            "client_email": "renderer@s2v-test.iam.gserviceaccount.com", "client_id": "1", "token_uri": token_uri}
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(info))
    return path, pem


def test_server_killed_mid_resumable_upload_then_restarted(gcs_env, tmp_path, monkeypatch):
    """1 MiB resumable chunks; the real fake-gcs-server process is killed after 2 MiB and restarted on the
    same data folder: the storage retry policy re-runs the upload and the final object is whole."""
    port = free_port()
    srv_root = tmp_path / "own"
    # the server must hand out resumable-session URLs through the proxy, so it learns the proxy URL first
    proxy = KillingProxy(port, kill_after_bytes=2 * MB, on_kill=lambda: srv.server.kill())
    srv = GCSServer(srv_root, external_url=proxy.url)
    srv.port, srv.url = port, f"http://127.0.0.1:{port}"
    srv.server.argv[srv.server.argv.index("-port") + 1] = str(port)
    srv.server.ready_url = srv.url + "/storage/v1/b"
    srv.start()
    proxy.on_restart = srv.server.start
    try:
        bucket = srv.make_bucket("killme")
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        st = GCSStorage(gcs_settings(tmp_path, gcs_chunk_mb=1))
        src = tmp_path / "video.mp4"
        src.write_bytes(os.urandom(6 * MB))
        u = parse(f"gs://{bucket}/out/video.mp4")
        sizes: list[int] = []
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                try:
                    with urllib.request.urlopen(f"{srv.url}/storage/v1/b/{bucket}/o/out%2Fvideo.mp4", timeout=1) as r:
                        sizes.append(int(json.load(r)["size"]))
                except Exception:  # noqa: BLE001 — absent, or the server is down right now
                    pass
                done.wait(0.05)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        st.upload(src, u)
        done.set()
        watcher.join(5)
        assert proxy.kills == 1 and proxy.restarted.is_set()
        assert st.read_bytes(u) == src.read_bytes()
        assert all(n == src.stat().st_size for n in sizes), "a partial object appeared at the final key"
        proxy.close()
    finally:
        srv.server.stop()


def test_generation_precondition_guards_against_other_writers(gcs_env, bucket, tmp_path, monkeypatch):
    st = GCSStorage(gcs_settings(tmp_path))
    u = parse(f"gs://{bucket}/out/job.mp4")
    src = tmp_path / "job.mp4"
    src.write_bytes(b"our bytes" * 1000)
    st.upload(src, u)
    # we looked before the object existed (generation 0) and someone wrote it meanwhile:
    monkeypatch.setattr(st, "_generation", lambda uri: 0)
    st.upload(src, u)  # same bytes (our own earlier attempt whose reply was lost): success, nothing rewritten
    other = tmp_path / "other.mp4"
    other.write_bytes(b"their bytes")
    with pytest.raises(StorageError, match="another writer"):
        st.upload(other, u)
    assert st.read_bytes(u) == src.read_bytes()


def test_wrong_credentials_are_named_without_the_key(gcs_env, bucket, tmp_path, token_server):
    keyfile, pem = service_account_file(tmp_path, token_server)
    st = GCSStorage(gcs_settings(tmp_path, gcs_credentials_file=str(keyfile)))
    u = parse(f"gs://{bucket}/in/audio.wav")
    for op in (lambda: st.read_bytes(u), lambda: st.exists(u), lambda: st.check_writable(u.parent())):
        with pytest.raises(StorageError) as e:
            op()
        msg = str(e.value)
        assert str(u) in msg or f"gs://{bucket}/in" in msg
        assert "credentials were rejected" in msg
        assert "PRIVATE KEY" not in msg and pem.splitlines()[1] not in msg


def test_unreadable_credentials_file(gcs_env, tmp_path):
    bad = tmp_path / "sa.json"
    bad.write_text('{"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----\\nsecretstuff\\n"}')
    st = GCSStorage(gcs_settings(tmp_path, gcs_credentials_file=str(bad)))
    with pytest.raises(StorageError, match="cannot load the service-account file") as e:
        st.exists(parse("gs://any-bucket/x"))
    assert "secretstuff" not in str(e.value)


def test_missing_bucket_and_missing_object(gcs_env, bucket, tmp_path):
    st = GCSStorage(gcs_settings(tmp_path))
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-s2v' does not exist"):
        st.read_bytes(parse("gs://no-such-bucket-s2v/a.wav"))
    with pytest.raises(StorageError, match="does not exist"):
        st.check_writable(parse("gs://no-such-bucket-s2v/out"))
    with pytest.raises(InputError, match=f"gs://{bucket}/nope.wav: no such object"):
        st.read_bytes(parse(f"gs://{bucket}/nope.wav"))
    with pytest.raises(InputError, match="no such object"):
        cache.fetch(f"gs://{bucket}/nope.wav", gcs_settings(tmp_path))


def test_signed_url_with_a_key_and_a_plain_link_without(gcs_env, bucket, tmp_path, token_server):
    anon = GCSStorage(gcs_settings(tmp_path))
    u = parse(f"gs://{bucket}/share/me.txt")
    anon.write_bytes(u, b"hello")
    with urllib.request.urlopen(anon.share_url(u), timeout=10) as r:  # emulator fallback link
        assert r.read() == b"hello"
    keyfile, pem = service_account_file(tmp_path, token_server)
    signer = GCSStorage(gcs_settings(tmp_path, gcs_credentials_file=str(keyfile)))
    url = signer.share_url(u, expires_s=600)  # V4 signing is local: no token needed
    assert "X-Goog-Signature=" in url and "X-Goog-Expires=600" in url
    assert pem.splitlines()[1] not in url


def test_input_cache_downloads_once(gcs_env, bucket, tmp_path, monkeypatch):
    settings = gcs_settings(tmp_path)
    from infra.storage.base import storage_for

    st = storage_for("gs://x/y", settings)
    calls: list[str] = []
    real = st.download
    monkeypatch.setattr(st, "download", lambda uri, dest: (calls.append(str(uri)), real(uri, dest))[1])
    a = f"gs://{bucket}/in/face.png"
    st.write_bytes(parse(a), b"\x89PNG fake")
    paths = {cache.fetch(a, settings) for _ in range(4)}
    cache.forget()
    paths.add(cache.fetch(a, settings))
    assert calls == [a] and len(paths) == 1 and paths.pop().read_bytes() == b"\x89PNG fake"
    cache.forget()
