"""The storage contract, run unchanged against local files, SeaweedFS (S3) and fake-gcs-server (GCS)."""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import pytest

from infra.storage.base import Storage
from infra.storage.uri import Uri, parse
from core.errors import InputError, StorageError
from storage_servers import gcs_env, gcs_server, gcs_settings, s3_env, s3_server, s3_settings, unique  # noqa: F401

# the test that needs Ray absent, or a cluster of its own, stops the shared local Ray (conftest)
STOPS_SHARED_RAY = True


@dataclass
class Backend:
    storage: Storage
    root: Uri  # an empty prefix of its own for this test


@pytest.fixture(params=["local", "s3", "gcs"])
def backend(request, tmp_path) -> Backend:
    if request.param == "local":
        from infra.storage.local import LocalStorage

        return Backend(LocalStorage(None), parse(str(tmp_path / "store")))
    pytest.importorskip({"s3": "boto3", "gcs": "google.cloud.storage"}[request.param])
    if request.param == "s3":
        srv = request.getfixturevalue("s3_env")
        from infra.storage.s3 import S3Storage

        bucket = srv.make_bucket(unique("contract"))
        return Backend(S3Storage(s3_settings(srv.endpoint, tmp_path)), parse(f"s3://{bucket}/root"))
    srv = request.getfixturevalue("gcs_env")
    from infra.storage.gcs import GCSStorage

    bucket = srv.make_bucket(unique("contract"))
    return Backend(GCSStorage(gcs_settings(tmp_path)), parse(f"gs://{bucket}/root"))


def test_write_read_exists_delete(backend):
    s, u = backend.storage, backend.root.join("a", "b.txt")
    assert not s.exists(u)
    s.write_bytes(u, b"first")
    assert s.exists(u) and s.read_bytes(u) == b"first"
    s.write_bytes(u, b"second, longer")  # overwrite replaces the whole object
    assert s.read_bytes(u) == b"second, longer"
    s.delete(u)
    assert not s.exists(u)
    s.delete(u)  # deleting a missing object is not an error


def test_list_is_recursive_and_prefix_scoped(backend):
    s, r = backend.storage, backend.root
    for key in ("x/1.bin", "x/y/2.bin", "z/3.bin"):
        s.write_bytes(r.join(key), key.encode())
    assert {str(u) for u in s.list(r.join("x"))} == {str(r.join("x/1.bin")), str(r.join("x/y/2.bin"))}
    assert list(s.list(r.join("nothing-here"))) == []


def test_upload_and_download_round_trip(backend, tmp_path):
    s = backend.storage
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(1_500_000))
    u = backend.root.join("media", "clip.mp4")
    s.upload(src, u)
    dest = tmp_path / "dl" / "clip.mp4"
    assert s.download(u, dest) == dest
    assert dest.read_bytes() == src.read_bytes()
    # no temp files left next to the download, and no temp objects visible in the store
    assert [p.name for p in dest.parent.iterdir()] == ["clip.mp4"]
    assert [str(x) for x in s.list(backend.root.join("media"))] == [str(u)]


def test_publish_writes_in_order_sidecar_last(backend, tmp_path, monkeypatch):
    s = backend.storage
    files = []
    for name, data in (("job.mp4", b"video" * 1000), ("job.jpg", b"poster"), ("job.json", b'{"ok": true}')):
        p = tmp_path / name
        p.write_bytes(data)
        files.append((p, backend.root.join("out", name)))
    order: list[str] = []
    real_upload = s.upload

    def spy(src, dest):
        # the sidecar must not exist while any earlier file is still missing
        if dest.name == "job.json":
            assert all(s.exists(d) for _, d in files[:-1])
        real_upload(src, dest)
        order.append(dest.name)

    monkeypatch.setattr(s, "upload", spy)
    s.publish(files)
    assert order == ["job.mp4", "job.jpg", "job.json"]
    for src, dest in files:
        assert s.read_bytes(dest) == src.read_bytes()


def test_missing_object_is_a_clear_input_error(backend, tmp_path):
    u = backend.root.join("no", "such.wav")
    with pytest.raises((InputError, StorageError)) as e:
        backend.storage.read_bytes(u)
    assert str(u) in str(e.value)
    with pytest.raises((InputError, StorageError)):
        backend.storage.download(u, tmp_path / "x.wav")
    assert not (tmp_path / "x.wav").exists()


def test_check_writable_and_share_url(backend):
    s = backend.storage
    s.check_writable(backend.root.join("out"))
    assert list(s.list(backend.root.join("out"))) == []  # the probe is removed
    u = backend.root.join("share.txt")
    s.write_bytes(u, b"shared")
    url = s.share_url(u, expires_s=600)
    assert isinstance(url, str) and url
    if url.startswith("http"):
        import urllib.request

        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.read() == b"shared"


def test_string_locations_are_accepted(backend):
    s, u = backend.storage, backend.root.join("str.txt")
    s.write_bytes(u, b"s")
    if backend.root.scheme != "file":  # local storage takes Uri objects only (the runner passes Uri)
        assert s.read_bytes(str(u)) == b"s" and s.exists(str(u))


# -- end to end: the example manifest with manifest, inputs and outputs in a bucket ------------------------------

ROOT = Path(__file__).resolve().parents[1]


def _restart_ray_with_env() -> None:
    """Ray workers inherit the environment of the process that started Ray: restart it now that the
    credentials / emulator host are set, as the CLI would have them set before starting Ray."""
    import ray
    from conftest import start_local_ray

    if ray.is_initialized():
        ray.shutdown()
    start_local_ray()


# what is checked is where things land, not how they are encoded (tests/test_delivery.py checks that): the
# fastest x264 preset for the renditions
FAST = {"rendition_preset": "ultrafast"}


@pytest.mark.slow
@pytest.mark.parametrize("cloud", ["s3", "gs"])
def test_render_example_manifest_in_a_bucket(cloud, request, tmp_path, monkeypatch):
    import json

    import ray

    from infra.storage import base
    from infra.storage.base import storage_for
    from orchestrator.run.runner import render

    pytest.importorskip({"s3": "boto3", "gs": "google.cloud.storage"}[cloud])
    if cloud == "s3":
        srv = request.getfixturevalue("s3_env")
        settings = s3_settings(srv.endpoint, tmp_path, gpus=2, work=str(tmp_path / "work"), **FAST)
        # the manifest is read before a Settings object reaches storage: configure it the way a user would
        monkeypatch.setenv("S2V_S3_ENDPOINT_URL", srv.endpoint)
        monkeypatch.setenv("S2V_S3_ADDRESSING_STYLE", "path")
        monkeypatch.setenv("S2V_S3_REGION", "us-east-1")
    else:
        srv = request.getfixturevalue("gcs_env")
        settings = gcs_settings(tmp_path, gpus=2, work=str(tmp_path / "work"), **FAST)
    monkeypatch.setattr(base, "_instances", OrderedDict())  # clients bound to another test's emulator go
    bucket = srv.make_bucket(unique("e2e"))
    st = storage_for(f"{cloud}://{bucket}/x", settings)
    catalog = parse(f"{cloud}://{bucket}/catalog")
    for f in sorted((ROOT / "manifests" / "media").iterdir()):
        st.upload(f, catalog.join("media", f.name))
    text = (ROOT / "manifests" / "example.yaml").read_text()
    assert "output: ../out/example" in text
    st.write_bytes(catalog.join("example.yaml"), text.replace("output: ../out/example", f"output: {cloud}://{bucket}/out").encode())

    _restart_ray_with_env()
    try:
        result = render(str(catalog.join("example.yaml")), settings)
    finally:
        ray.shutdown()  # the next test's Ray must not keep this test's credentials
    assert result.exit_code == 0, result.problems
    assert {j.status for j in result.jobs.values()} == {"published"}
    out = {u.key.removeprefix("out/") for u in st.list(parse(f"{cloud}://{bucket}/out"))}
    # the master, poster and sidecar of every job, plus what the example asks the post step for:
    # a 360p MP4 each, an HLS ladder each (master playlist at the top), lesson 1's captions, transcripts, chapters
    # and SCORM package
    top = {k for k in out if "/" not in k}
    expected = {f"{j}.{ext}" for j in result.jobs for ext in ("mp4", "jpg", "json", "360p.mp4")}
    assert top == expected | {f"lesson-01-photosynthesis.{x}" for x in ("vtt", "transcript.txt", "transcript.html",
                                                                         "chapters.vtt", "scorm.zip")}
    for j in result.jobs:
        assert f"{j}.hls/master.m3u8" in out
    assert any(k.startswith("lesson-01-photosynthesis.hls/subs-") and k.endswith(".vtt") for k in out)
    for jid in result.jobs:
        meta = json.loads(st.read_bytes(parse(f"{cloud}://{bucket}/out/{jid}.json")))
        assert meta.get("job_key") == result.jobs[jid].key
        assert st.read_bytes(parse(f"{cloud}://{bucket}/out/{jid}.mp4"))[4:8] == b"ftyp"
