"""How published objects look from outside, on local files, SeaweedFS (S3) and fake-gcs-server (GCS): permission
bits, Content-Type, temp names, and the conditional writes leases stand on (concurrent creators: one wins)."""

from __future__ import annotations

import os
import re
import stat
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from infra.storage.base import content_type_for, is_stale_temp, is_temp_name, temp_name
from infra.storage.uri import parse
from storage_servers import gcs_env, gcs_server, gcs_settings, s3_env, s3_settings, s3_server, unique  # noqa: F401
from test_storage_common import backend  # noqa: F401 — the same three-backend fixture as the contract tests

CONTRACT = re.compile(r"\.tmp-[0-9a-f]{12}-(?P<final>.+)\.partial\Z")
MB = 1024 * 1024


# -- permission bits ----------------------------------------------------------------------------------------------

@pytest.fixture
def umask():
    """Set the process umask for one test and put the old one back (the review ran under the usual 022)."""
    old = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.mark.parametrize("mask, setting, want", [(0o022, None, 0o644), (0o027, None, 0o640),
                                                 (0o022, "0640", 0o640), (0o077, "644", 0o644)])
def test_local_files_get_the_umask_mode_or_the_configured_one(umask, tmp_path, mask, setting, want):
    """mkstemp + rename used to publish every file 0600: unreadable to a web server or the team's group."""
    from core.settings import Settings
    from infra.storage.local import LocalStorage

    umask(mask)
    st = LocalStorage(Settings(storage_file_mode=setting) if setting else None)
    src = tmp_path / "src.mp4"
    src.write_bytes(b"video")
    out = parse(str(tmp_path / "out"))
    st.publish([(src, out.join("a.mp4")), (src, out.join("a.jpg"))])
    st.write_bytes(out.join("a.json"), b"{}")
    st.write_bytes(out.join("report.html"), b"<p>")
    st.download(out.join("a.mp4"), tmp_path / "dl" / "a.mp4")
    made = [tmp_path / "out" / n for n in ("a.mp4", "a.jpg", "a.json", "report.html")] + [tmp_path / "dl" / "a.mp4"]
    assert {p.name: oct(_mode(p)) for p in made} == {p.name: oct(want) for p in made}
    st.write_bytes(out.join("a.json"), b'{"again": 1}')  # a replacement keeps the same bits
    assert _mode(tmp_path / "out" / "a.json") == want


def test_file_mode_setting_is_checked_when_settings_load():
    from pydantic import ValidationError

    from core.settings import Settings

    for bad in ("0999", "rw-r--r--", "07777"):
        with pytest.raises(ValidationError, match="storage_file_mode"):
            Settings(storage_file_mode=bad)


# -- temp names -----------------------------------------------------------------------------------------------------

def test_temp_names_follow_the_contract():
    n = temp_name("lesson-1.mp4")
    m = CONTRACT.match(n)
    assert m and m.group("final") == "lesson-1.mp4" and not n.endswith(".mp4") and is_temp_name(n)
    assert is_temp_name(f"s3-prefix/out/{n}") and temp_name("a.json") != temp_name("a.json")
    # what earlier versions left behind is recognised too, so it can be cleaned
    assert is_temp_name(".tmp-0123456789ab-lesson.mp4") and is_temp_name(".tmp-k2_x9abc", legacy=True)
    assert not is_temp_name(".tmp-settings")  # eight letters: a user's file, unless inside a work area's folders
    for not_ours in ("lesson.mp4", ".tmp-", ".tmpfoo.mp4", "report.json", ".tmp-notours-at-all.mp4"):
        assert not is_temp_name(not_ours), not_ours
    assert is_stale_temp(n, modified=1000.0, older_than_s=3600, now=1000.0 + 3601)
    assert not is_stale_temp(n, modified=1000.0, older_than_s=3600, now=1000.0 + 10)
    assert not is_stale_temp("lesson.mp4", modified=0.0, older_than_s=1, now=1e9)


def test_content_types_from_the_extension():
    assert content_type_for("a.mp4") == "video/mp4" and content_type_for("a.jpg") == "image/jpeg"
    assert content_type_for("a.json") == "application/json"
    assert content_type_for("report.html") == "text/html; charset=utf-8"
    assert content_type_for(temp_name("a.mp4")) == "video/mp4"  # a temp is typed as what it becomes
    assert content_type_for("clip-0001.tail.npy") == "application/octet-stream"
    # the post step's deliverables (docs/delivery.md): captions and HLS
    assert content_type_for("a.vtt") == "text/vtt; charset=utf-8"
    assert content_type_for("master.m3u8") == "application/vnd.apple.mpegurl"
    assert content_type_for("seg-00001.m4s") == "video/iso.segment" and content_type_for("s.ts") == "video/mp2t"


def test_local_temp_files_follow_the_contract(tmp_path):
    from infra.storage.local import LocalStorage

    seen: list[str] = []
    st = LocalStorage(None)
    st._atomic(tmp_path / "o" / "a.mp4", lambda tmp: (seen.append(os.path.basename(tmp)), Path(tmp).write_bytes(b"x")))
    assert len(seen) == 1 and CONTRACT.match(seen[0]).group("final") == "a.mp4"
    assert os.listdir(tmp_path / "o") == ["a.mp4"]


# -- object stores: Content-Type and temp keys -----------------------------------------------------------------------

def _s3(s3_env, tmp_path, **kw):
    from infra.storage.s3 import S3Storage

    return S3Storage(s3_settings(s3_env.endpoint, tmp_path, **kw))


def test_s3_objects_carry_their_content_type_and_temp_keys_never_end_in_the_final_suffix(s3_env, tmp_path):
    """Without a type S3 serves binary/octet-stream and browsers download the MP4 instead of playing it; a temp
    key ending in .mp4 fired `.mp4`-filtered bucket notifications for objects still being written."""
    bucket = s3_env.make_bucket(unique("ctype"))
    # 5 MiB parts: the 12 MiB video goes up in parts and is copied in parts (a multipart copy drops metadata)
    st = _s3(s3_env, tmp_path, s3_multipart_threshold_mb=5, s3_multipart_chunk_mb=5)
    keys: list[str] = []
    for op in ("PutObject", "CreateMultipartUpload"):
        st._client.meta.events.register(f"before-parameter-build.s3.{op}", lambda params, **_: keys.append(params["Key"]))
    files = {"big.mp4": os.urandom(12 * MB), "a.mp4": b"small video", "a.jpg": b"\xff\xd8poster", "a.json": b"{}"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        st.upload(tmp_path / name, parse(f"s3://{bucket}/out/{name}"))
    st.write_bytes(parse(f"s3://{bucket}/out/report.html"), b"<!doctype html><p>ok")
    raw = s3_env.client()
    got = {k: raw.head_object(Bucket=bucket, Key=f"out/{k}")["ContentType"] for k in [*files, "report.html"]}
    assert got == {"big.mp4": "video/mp4", "a.mp4": "video/mp4", "a.jpg": "image/jpeg", "a.json": "application/json",
                   "report.html": "text/html; charset=utf-8"}
    with urllib.request.urlopen(st.share_url(parse(f"s3://{bucket}/out/a.mp4"), 60), timeout=10) as r:
        assert r.headers["Content-Type"] == "video/mp4"  # what a browser opening the share link sees
    temps = [k for k in keys if is_temp_name(k)]
    assert {CONTRACT.match(os.path.basename(k)).group("final") for k in temps} == set(files)
    assert all(k.startswith("out/") and k.endswith(".partial") for k in temps)
    listed = [o["Key"] for o in raw.list_objects_v2(Bucket=bucket)["Contents"]]
    assert sorted(listed) == sorted(f"out/{k}" for k in [*files, "report.html"])  # no temp left behind


def test_gcs_objects_carry_their_content_type(gcs_env, tmp_path):
    """GCS used to store report.html (written from bytes) as text/plain."""
    from infra.storage.gcs import GCSStorage

    bucket = gcs_env.make_bucket(unique("ctype"))
    st = GCSStorage(gcs_settings(tmp_path, gcs_chunk_mb=1))
    (tmp_path / "big.mp4").write_bytes(os.urandom(3 * MB))  # > one chunk: a resumable upload
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8poster")
    st.upload(tmp_path / "big.mp4", parse(f"gs://{bucket}/out/big.mp4"))
    st.upload(tmp_path / "a.jpg", parse(f"gs://{bucket}/out/a.jpg"))
    st.write_bytes(parse(f"gs://{bucket}/out/report.html"), b"<!doctype html><p>ok")
    st.write_bytes(parse(f"gs://{bucket}/out/a.json"), b"{}")
    b = st._client.bucket(bucket)
    got = {n: b.get_blob(f"out/{n}").content_type for n in ("big.mp4", "a.jpg", "report.html", "a.json")}
    assert got == {"big.mp4": "video/mp4", "a.jpg": "image/jpeg", "report.html": "text/html; charset=utf-8",
                   "a.json": "application/json"}


# -- conditional writes: the primitive under leases, on all three backends ---------------------------------------------

def test_create_exclusive_and_compare_and_swap(backend):
    s, u = backend.storage, backend.root.join("leases", "k.json")
    assert s.read_versioned(u) is None
    v1 = s.create_exclusive(u, b'{"holder": "a"}')
    assert v1 and s.create_exclusive(u, b'{"holder": "b"}') is None  # already there: refused
    data, ver = s.read_versioned(u)
    assert (data, ver) == (b'{"holder": "a"}', v1)
    v2 = s.replace_if(u, b'{"holder": "a", "renewed": 2}', v1)
    assert v2 and v2 != v1
    assert s.replace_if(u, b'{"holder": "b"}', v1) is None  # stale version: someone else wrote since
    assert s.read_versioned(u) == (b'{"holder": "a", "renewed": 2}', v2)
    assert s.replace_if(backend.root.join("leases", "absent.json"), b"x", v2) is None
    assert [x.name for x in s.list(backend.root.join("leases"))] == ["k.json"]


def test_concurrent_creators_and_swappers_have_exactly_one_winner(backend):
    s, root = backend.storage, backend.root
    n = 6
    u = root.join("race", "k.json")
    won: list[int] = []
    go = threading.Barrier(n)

    def create(i: int) -> None:
        go.wait()
        if s.create_exclusive(u, f"holder {i}".encode()):
            won.append(i)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(n)]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    assert len(won) == 1 and s.read_versioned(u)[0] == f"holder {won[0]}".encode()

    _, ver = s.read_versioned(u)
    swapped: list[int] = []
    go = threading.Barrier(n)

    def swap(i: int) -> None:
        go.wait()
        if s.replace_if(u, f"taker {i}".encode(), ver):
            swapped.append(i)

    threads = [threading.Thread(target=swap, args=(i,)) for i in range(n)]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    assert len(swapped) == 1 and s.read_versioned(u)[0] == f"taker {swapped[0]}".encode()


def test_a_write_probe_leaves_nothing_and_is_a_temp_name(backend):
    s = backend.storage
    names: list[str] = []
    real = s.write_bytes
    s.write_bytes = lambda u, d: (names.append(u.name), real(u, d))[1]
    s.check_writable(backend.root.join("probe"))
    if backend.root.scheme == "file":  # a local folder is checked by permissions, without writing or creating
        assert names == [] and not Path(backend.root.join("probe").key).exists()
    else:  # an object store is asked by writing a probe, named as a temp
        assert names and all(is_temp_name(n) for n in names)
    assert list(s.list(backend.root.join("probe"))) == []


def test_stale_temp_age_comes_from_the_store(backend, tmp_path):
    """A temp left by a killed writer: hidden from list(), recognised, and aged by the store's own timestamp."""
    s = backend.storage
    left = backend.root.join("out", temp_name("lesson.mp4"))
    s.write_bytes(left, b"half a video")
    s.write_bytes(backend.root.join("out", "other.mp4"), b"done")
    assert [u.name for u in s.list(backend.root.join("out"))] == ["other.mp4"]
    if backend.root.scheme == "file":
        modified = os.stat(left.key).st_mtime
    elif backend.root.scheme == "s3":
        modified = s._client.head_object(Bucket=left.bucket, Key=left.key)["LastModified"].timestamp()
    else:
        modified = s._client.bucket(left.bucket).get_blob(left.key).updated.timestamp()
    assert abs(modified - time.time()) < 120  # loopback servers: the same clock
    assert is_stale_temp(left.name, modified, older_than_s=3600, now=modified + 7200)
    assert not is_stale_temp(left.name, modified, older_than_s=3600, now=modified + 60)
