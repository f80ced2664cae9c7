"""S3 backend against a real SeaweedFS on 127.0.0.1: multipart, kill mid-upload, errors, presign, cache, checks."""

from __future__ import annotations

import os
import threading
import urllib.request

import pytest

pytest.importorskip("boto3", reason="the s3 extra is not installed")

from infra.storage import cache
from infra.storage.checks import check_inputs
from infra.storage.s3 import S3Storage
from infra.storage.uri import parse
from core.errors import InputError, StorageError
from orchestrator.intake.manifest import JobSpec
from storage_servers import (  # noqa: F401
    READER_KEY, READER_SECRET, SECRET_KEY, KillingProxy, S3Server, s3_env, s3_server, s3_settings, unique,
)

MB = 1024 * 1024


@pytest.fixture
def bucket(s3_env):
    return s3_env.make_bucket(unique("s3t"))


def small_parts(endpoint, tmp_path, **kw):
    """5 MiB parts (the S3 minimum) so a few MiB exercise the multipart path."""
    return s3_settings(endpoint, tmp_path, s3_multipart_threshold_mb=5, s3_multipart_chunk_mb=5, s3_max_concurrency=2, **kw)


def test_large_files_go_up_and_down_in_parts(s3_env, bucket, tmp_path):
    st = S3Storage(small_parts(s3_env.endpoint, tmp_path))
    parts: list[int] = []
    st._client.meta.events.register("before-parameter-build.s3.UploadPart", lambda params, **_: parts.append(params["PartNumber"]))
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(12 * MB))
    u = parse(f"s3://{bucket}/renders/big.bin")
    st.upload(src, u)
    assert sorted(parts) == [1, 2, 3]
    dest = st.download(u, tmp_path / "back.bin")
    assert dest.read_bytes() == src.read_bytes()
    # only the final key remains: the temp key used for the upload was removed
    keys = [o["Key"] for o in s3_env.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["renders/big.bin"]


def test_server_killed_mid_upload_then_restarted(s3_env, tmp_path):
    """The real server process dies after 8 MiB of a 20 MiB upload and comes back 1.5 s later: the storage
    retry policy re-runs the upload, it succeeds, and the final key never holds a partial object."""
    srv = S3Server(tmp_path / "own").start()
    try:
        bucket = srv.make_bucket("killme")
        proxy = KillingProxy(srv.port, kill_after_bytes=8 * MB, on_kill=srv.server.kill)
        proxy.on_restart = srv.server.start
        st = S3Storage(small_parts(proxy.url, tmp_path))
        src = tmp_path / "video.mp4"
        src.write_bytes(os.urandom(20 * MB))
        u = parse(f"s3://{bucket}/out/video.mp4")
        seen_sizes: list[int] = []
        done = threading.Event()

        def watch() -> None:
            direct = srv.client()
            while not done.is_set():
                try:
                    seen_sizes.append(direct.head_object(Bucket=bucket, Key=u.key)["ContentLength"])
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
        assert all(n == src.stat().st_size for n in seen_sizes), "a partial object appeared at the final key"
        assert [x.key for x in st.list(parse(f"s3://{bucket}/out"))] == ["out/video.mp4"]
        proxy.close()
    finally:
        srv.server.stop()


def test_wrong_credentials_are_named_without_the_secret(s3_env, bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-" + SECRET_KEY)
    st = S3Storage(s3_settings(s3_env.endpoint, tmp_path))
    u = parse(f"s3://{bucket}/in/audio.wav")
    for op in (lambda: st.read_bytes(u), lambda: st.exists(u), lambda: st.check_writable(u.parent())):
        with pytest.raises(StorageError) as e:
            op()
        msg = str(e.value)
        assert str(u.bucket) in msg and "credentials" in msg
        assert SECRET_KEY not in msg and "wrong-" not in msg


def test_missing_bucket_and_missing_object(s3_env, bucket, tmp_path):
    st = S3Storage(s3_settings(s3_env.endpoint, tmp_path))
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-s2v' does not exist"):
        st.exists(parse("s3://no-such-bucket-s2v/a.wav"))
    with pytest.raises(StorageError, match="does not exist"):
        st.check_writable(parse("s3://no-such-bucket-s2v/out"))
    with pytest.raises(InputError, match=f"s3://{bucket}/nope.wav: no such object"):
        st.read_bytes(parse(f"s3://{bucket}/nope.wav"))


def test_read_only_identity_gets_access_denied(s3_env, bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", READER_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", READER_SECRET)
    st = S3Storage(s3_settings(s3_env.endpoint, tmp_path))
    with pytest.raises(StorageError, match="access denied") as e:
        st.check_writable(parse(f"s3://{bucket}/out"))
    assert READER_SECRET not in str(e.value)


def test_presigned_url_opens_without_credentials(s3_env, bucket, tmp_path):
    st = S3Storage(s3_settings(s3_env.endpoint, tmp_path))
    u = parse(f"s3://{bucket}/share/me.txt")
    st.write_bytes(u, b"hello")
    url = st.share_url(u, expires_s=300)
    assert "X-Amz-Signature" in url and SECRET_KEY not in url
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.read() == b"hello"


def test_input_cache_downloads_once_and_is_content_addressed(s3_env, bucket, tmp_path, monkeypatch):
    settings = s3_settings(s3_env.endpoint, tmp_path)
    from infra.storage.base import storage_for

    st = storage_for("s3://x/y", settings)
    calls: list[str] = []
    real = st.download
    monkeypatch.setattr(st, "download", lambda uri, dest: (calls.append(str(uri)), real(uri, dest))[1])
    a, b = f"s3://{bucket}/in/a.wav", f"s3://{bucket}/copy/a.wav"
    st.write_bytes(parse(a), b"RIFF....same bytes")
    st.write_bytes(parse(b), b"RIFF....same bytes")
    paths = {cache.fetch(a, settings) for _ in range(5)}  # one job, five clips
    cache.forget()  # a fresh process on the same node: the disk cache still serves it
    paths.add(cache.fetch(a, settings))
    paths.add(cache.fetch(b, settings))  # same content, other URI: same entry
    assert calls == [a] and len(paths) == 1
    path = paths.pop()
    assert path.read_bytes() == b"RIFF....same bytes" and path.name == "a.wav"
    st.write_bytes(parse(a), b"RIFF....new content")  # a re-uploaded input is fetched again
    cache.forget()
    assert cache.fetch(a, settings).read_bytes() == b"RIFF....new content"
    with pytest.raises(InputError, match="no such object"):
        cache.fetch(f"s3://{bucket}/in/missing.wav", settings)
    cache.forget()


def test_check_inputs_names_each_problem(s3_env, bucket, tmp_path, monkeypatch):
    settings = s3_settings(s3_env.endpoint, tmp_path)
    st = S3Storage(settings)
    st.write_bytes(parse(f"s3://{bucket}/in/a.wav"), b"a")
    st.write_bytes(parse(f"s3://{bucket}/in/p.png"), b"p")
    local_img = tmp_path / "p.png"
    local_img.write_bytes(b"p")

    def job(i, **kw):
        base = dict(id=f"j{i}", audio=f"s3://{bucket}/in/a.wav", image=f"s3://{bucket}/in/p.png",
                    output=f"s3://{bucket}/out", source=f"m.yaml row {i}")
        return JobSpec(**{**base, **kw})

    jobs = [job(1), job(2, audio=f"s3://{bucket}/in/missing.wav"), job(3, image=str(local_img)),
            job(4, output="s3://no-such-out-bucket/x"), job(5, pose=str(tmp_path / "nope.mp4"))]
    problems = check_inputs(jobs, settings)
    got = {(p.where, p.field) for p in problems}
    assert got == {("m.yaml row 2", "audio"), ("m.yaml row 4", "output"), ("m.yaml row 5", "pose")}
    text = "\n".join(map(str, problems))
    assert f"s3://{bucket}/in/missing.wav" in text and "no-such-out-bucket" in text and "nope.mp4" in text
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "bad" + SECRET_KEY)
    from collections import OrderedDict

    from infra.storage import base

    # storages are cached per storage settings, and credentials are never settings: a fresh process would start
    # with an empty cache and read the changed environment, as this does
    monkeypatch.setattr(base, "_instances", OrderedDict())
    problems = check_inputs([job(1)], s3_settings(s3_env.endpoint, tmp_path))
    assert {p.field for p in problems} == {"audio", "image", "output"}
    assert all(SECRET_KEY not in str(p) for p in problems) and "credentials" in str(problems[0])
