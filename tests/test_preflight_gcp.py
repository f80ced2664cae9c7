"""`s2v cluster check` on GCP and RunPod against loopback fakes only.

GCP: one BaseHTTPRequestHandler on 127.0.0.1 answers the REST calls the check makes, shaped as Google documents
them (compute v1 project, region, machine type, image family and firewall resources; iam v1 service accounts;
cloudresourcemanager v1 getIamPolicy; storage v1 bucket IAM), plus the OAuth token endpoint a service-account key
names in its token_uri. The check reaches it through gcloud's CLOUDSDK_API_ENDPOINT_OVERRIDES_* variables.
RunPod: a GraphQL fake at RUNPOD_API_BASE_URL. Every server binds 127.0.0.1 and is stopped by its fixture."""

from __future__ import annotations

import json
import re
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import yaml
from http_fakes import send_json, serving
from test_preflight import closed_port, offline_env, statuses
from typer.testing import CliRunner

from orchestrator.cli.cluster import app

TOKEN = "ya29.loopback-token"
WORKER = "s2v-worker@proj-1.iam.gserviceaccount.com"
HEAD = "ray-autoscaler-sa-v1@proj-1.iam.gserviceaccount.com"
ACCELERATORS = {"a3-highgpu-1g": [{"guestAcceleratorType": "nvidia-h100-80gb", "guestAcceleratorCount": 1}],
                "a2-ultragpu-1g": [{"guestAcceleratorType": "nvidia-a100-80gb", "guestAcceleratorCount": 1}],
                "n2-standard-4": []}


class _Google(BaseHTTPRequestHandler):
    """The Google APIs the GCP check calls, with state a test changes (class attributes, reset by the fixture)."""

    state: dict = {}

    def _send(self, code: int, body: dict) -> None:
        send_json(self, code, body)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/token":
            return self._send(200, {"access_token": TOKEN, "expires_in": 3600, "token_type": "Bearer"})
        if not self._authorized():
            return None
        if self.path == "/crm/v1/projects/proj-1:getIamPolicy":
            return self._send(200, {"bindings": self.state["project_bindings"]})
        return self._send(404, {"error": {"message": f"no {self.path}"}})

    def do_GET(self):
        if not self._authorized():
            return None
        s, path = self.state, self.path.split("?")[0]
        routes = {
            "/compute/v1/projects/proj-1": lambda: {"name": "proj-1", "quotas": [
                {"metric": "GPUS_ALL_REGIONS", "limit": s["all_regions"]}], "commonInstanceMetadata": {
                "items": [{"key": "enable-oslogin", "value": s["oslogin"]}]}},
            "/compute/v1/projects/proj-1/regions/us-central1": lambda: {"name": "us-central1", "quotas": [
                {"metric": m, "limit": v, "usage": 0} for m, v in s["region_quotas"].items()]},
            "/compute/v1/projects/proj-1/global/firewalls": lambda: {"items": s["firewalls"]},
        }
        if path in routes:
            return self._send(200, routes[path]())
        m = re.fullmatch(r"/compute/v1/projects/proj-1/zones/us-central1-a/machineTypes/([\w-]+)", path)
        if m and m.group(1) in ACCELERATORS:
            return self._send(200, {"name": m.group(1), "accelerators": ACCELERATORS[m.group(1)]})
        m = re.fullmatch(r"/compute/v1/(projects/[\w-]+/global/images/family/[\w-]+)", path)
        if m and m.group(1) in s["images"]:
            return self._send(200, {"name": m.group(1).rsplit("/", 1)[-1] + "-v20261101", "status": "READY"})
        m = re.fullmatch(r"/iam/v1/projects/proj-1/serviceAccounts/(.+)", path)
        if m and m.group(1).replace("%40", "@") in s["accounts"]:
            return self._send(200, {"email": m.group(1)})
        m = re.fullmatch(r"/storage/v1/b/([\w.-]+)/iam", path)
        if m and m.group(1) in s["buckets"]:
            return self._send(200, {"bindings": s["buckets"][m.group(1)]})
        return self._send(404, {"error": {"code": 404, "message": f"The resource '{path}' was not found"}})

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") == f"Bearer {TOKEN}":
            return True
        self._send(401, {"error": {"message": "Request had invalid authentication credentials."}})
        return False

    def log_message(self, *a):
        pass


def ready_state() -> dict:
    return {"all_regions": 16, "oslogin": "FALSE", "region_quotas": {"PREEMPTIBLE_NVIDIA_H100_GPUS": 8,
                                                                       "NVIDIA_A100_80GB_GPUS": 8},
            "firewalls": [{"name": "default-allow-ssh", "network": "projects/proj-1/global/networks/default",
                           "direction": "INGRESS", "sourceRanges": ["0.0.0.0/0"],
                           "allowed": [{"IPProtocol": "tcp", "ports": ["22"]}]}],
            "images": {"projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts",
                       "projects/deeplearning-platform-release/global/images/family/common-cu129-ubuntu-2204-nvidia-580"},
            "accounts": {WORKER, HEAD},
            "project_bindings": [{"role": "roles/storage.objectAdmin", "members": [f"serviceAccount:{HEAD}"]}],
            "buckets": {"work-bucket": [{"role": "roles/storage.objectAdmin", "members": [f"serviceAccount:{WORKER}"]}]}}


def _key_file(path: Path, token_uri: str) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    path.write_text(json.dumps({"type": "service_account", "project_id": "proj-1", "private_key_id": "k1",
                                "private_key": pem, "client_email": "laptop@proj-1.iam.gserviceaccount.com",
                                "client_id": "1", "token_uri": token_uri}))
    return path


def _google_env(monkeypatch, tmp_path: Path, base: str) -> None:
    offline_env(monkeypatch, tmp_path)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(_key_file(tmp_path / "key.json", f"{base}/token")))
    for api, path in (("COMPUTE", "compute/v1/"), ("IAM", "iam/"), ("CLOUDRESOURCEMANAGER", "crm/"),
                      ("STORAGE", "storage/v1/")):
        monkeypatch.setenv(f"CLOUDSDK_API_ENDPOINT_OVERRIDES_{api}", f"{base}/{path}")


@pytest.fixture
def google(monkeypatch, tmp_path):
    _Google.state = ready_state()
    with serving(_Google) as srv:
        _google_env(monkeypatch, tmp_path, f"http://127.0.0.1:{srv.server_port}")
        yield _Google.state


def gcp_config(tmp_path: Path) -> Path:
    out = tmp_path / "gcp.yaml"
    res = CliRunner().invoke(app, ["init", "gcp", "--bucket", "work-bucket", "--project", "proj-1",
                                   "--no-resolve-zones", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def test_a_ready_gcp_project_passes(google, tmp_path):
    res = CliRunner().invoke(app, ["check", str(gcp_config(tmp_path))])
    assert res.exit_code == 0, res.output
    got = statuses(res.output)
    for name in ("gcp credentials", "service account s2v-worker (gpu_ondemand, gpu_spot)",
                 "service account ray-autoscaler-sa-v1 (head)", "bucket work-bucket", "s2v-worker on work-bucket",
                 "ray-autoscaler-sa-v1 on work-bucket", "firewall", "library googleapiclient",
                 "spot GPU quota for a3-highgpu-1g (gpu_spot) PREEMPTIBLE_NVIDIA_H100_GPUS",
                 "on-demand GPU quota for a2-ultragpu-1g (gpu_ondemand) NVIDIA_A100_80GB_GPUS"):
        assert got.get(name) == "ok", (name, res.output)
    assert "Traceback" not in res.output


def test_an_unready_gcp_project_is_a_list_of_what_to_do(google, tmp_path):
    """The worker's account missing, no spot H100 quota, the Jobs API port open to the internet, an image family
    gone, OS Login on: each named with what to do."""
    google["accounts"] = {HEAD}
    google["region_quotas"]["PREEMPTIBLE_NVIDIA_H100_GPUS"] = 0
    google["firewalls"].append({"name": "dash", "network": "projects/proj-1/global/networks/default",
                                "sourceRanges": ["0.0.0.0/0"], "allowed": [{"IPProtocol": "tcp", "ports": ["8000-9000"]}]})
    google["images"] = {"projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts"}
    google["oslogin"] = "TRUE"
    google["buckets"]["work-bucket"] = []
    res = CliRunner().invoke(app, ["check", str(gcp_config(tmp_path))])
    assert res.exit_code == 2, res.output
    got = statuses(res.output)
    assert got["service account s2v-worker (gpu_ondemand, gpu_spot)"] == "FAIL"
    assert "gcloud iam service-accounts create s2v-worker --project proj-1" in res.output
    assert got["spot GPU quota for a3-highgpu-1g (gpu_spot) PREEMPTIBLE_NVIDIA_H100_GPUS"] == "FAIL"
    assert got["firewall"] == "FAIL" and "8265" in res.output
    family = "projects/deeplearning-platform-release/global/images/family/common-cu129-ubuntu-2204-nvidia-580"
    assert got[f"image {family}"] == "FAIL"
    assert got["os login"] == "warn"
    # the head's account keeps its project-wide role; the worker's account is gone, so it is not asked about
    assert got["ray-autoscaler-sa-v1 on work-bucket"] == "ok" and "s2v-worker on work-bucket" not in got
    assert "Traceback" not in res.output


def test_a_bucket_the_worker_may_not_write_is_named_with_the_binding(google, tmp_path):
    google["buckets"]["work-bucket"] = [{"role": "roles/storage.objectViewer", "members": [f"serviceAccount:{WORKER}"]}]
    res = CliRunner().invoke(app, ["check", str(gcp_config(tmp_path))])
    assert res.exit_code == 2, res.output
    assert statuses(res.output)["s2v-worker on work-bucket"] == "FAIL"
    assert f"--member=serviceAccount:{WORKER} --role=roles/storage.objectAdmin" in res.output


def test_gcp_with_no_network_is_a_finding_in_seconds(monkeypatch, tmp_path):
    _google_env(monkeypatch, tmp_path, f"http://127.0.0.1:{closed_port()}")
    config = gcp_config(tmp_path)
    start = time.monotonic()
    res = CliRunner().invoke(app, ["check", str(config)])
    assert res.exit_code == 2, res.output
    assert statuses(res.output)["Google Cloud reachable"] == "FAIL" and "Traceback" not in res.output
    assert time.monotonic() - start < 15


def test_gcp_without_credentials_says_how_to_get_them(monkeypatch, tmp_path):
    offline_env(monkeypatch, tmp_path)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    res = CliRunner().invoke(app, ["check", str(gcp_config(tmp_path))])
    assert res.exit_code == 2 and "gcloud auth application-default login" in res.output, res.output


class _RunPod(BaseHTTPRequestHandler):
    """RunPod's GraphQL endpoint for the check's one query: `myself` and `gpuTypes(input: {id: …})` per alias."""

    key = "rp-test-key"
    known = {"NVIDIA H100 80GB HBM3": True, "NVIDIA RTX A4000": True}  # id → offered on Secure Cloud

    def do_POST(self):
        query = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))["query"]
        if self.headers.get("Authorization") != f"Bearer {self.key}":
            self.send_response(401)
            self.end_headers()
            return
        data = {"myself": {"id": "user-1"}}
        for alias, gpu in re.findall(r'(\w+): gpuTypes\(input: \{id: ("(?:[^"\\]|\\.)*")\}\)', query):
            gid = json.loads(gpu)
            data[alias] = [{"id": gid, "secureCloud": self.known[gid], "communityCloud": True}] if gid in self.known else []
        send_json(self, 200, {"data": data})

    def log_message(self, *a):
        pass


@pytest.fixture
def runpod(monkeypatch, tmp_path):
    offline_env(monkeypatch, tmp_path)
    key = Path(tmp_path / "home" / ".ssh" / "id_ed25519")
    key.parent.mkdir(parents=True)
    key.write_text("not a real key: the check only looks at the file\n")
    key.chmod(0o600)
    out = tmp_path / "runpod.yaml"
    res = CliRunner().invoke(app, ["init", "runpod", "--bucket", "work-bucket", "--out", str(out)])
    assert res.exit_code == 0, res.output
    with serving(_RunPod) as srv:
        monkeypatch.setenv("RUNPOD_API_BASE_URL", f"http://127.0.0.1:{srv.server_port}")
        monkeypatch.setenv("RUNPOD_API_KEY", _RunPod.key)
        yield out


def test_runpod_key_and_gpu_types(runpod, monkeypatch):
    res = CliRunner().invoke(app, ["check", str(runpod)])
    assert res.exit_code == 0, res.output
    got = statuses(res.output)
    assert got["runpod api key"] == "ok" and got["runpod gpu NVIDIA H100 80GB HBM3"] == "ok"

    cfg = yaml.safe_load(runpod.read_text())
    cfg["available_node_types"]["gpu_spot"]["node_config"]["gpu_type_id"] = "NVIDIA H100 80GB \"HBM9\""
    runpod.write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["check", str(runpod)])
    assert res.exit_code == 2 and statuses(res.output)['runpod gpu NVIDIA H100 80GB "HBM9"'] == "FAIL", res.output

    monkeypatch.setenv("RUNPOD_API_KEY", "wrong")
    res = CliRunner().invoke(app, ["check", str(runpod)])
    assert res.exit_code == 2 and "refused the key" in res.output, res.output
    monkeypatch.delenv("RUNPOD_API_KEY")
    res = CliRunner().invoke(app, ["check", str(runpod)])
    assert res.exit_code == 2 and "export RUNPOD_API_KEY" in res.output, res.output
