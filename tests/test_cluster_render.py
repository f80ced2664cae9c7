"""`s2v render --cluster` end to end: the example manifest, its inputs on this machine, rendered by the real CLI on
a loopback cluster brought up with `s2v cluster up` (tests/loopback_cluster.py `s3_cluster`: a `ray start --head`
on 127.0.0.1 with 2 logical GPUs, its own HOME, none of this shell's S2V_* settings or credentials), submitted
through the tunnel code path (Ray's command runner `port_forward`; only ssh itself is replaced by a loopback TCP
forwarder). Work area, staged inputs and outputs live in SeaweedFS (S3) on 127.0.0.1; the webhook receiver is a
small HTTP server on 127.0.0.1 that checks each delivery's signature with the secret."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from loopback_cluster import s3_cluster  # noqa: F401
from orchestrator.remote import submit
from orchestrator.deliver.webhook import verify
from storage_servers import ACCESS_KEY, SECRET_KEY, isolate_cloud_env, s3_server, unique  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_IDS = ("lesson-01-photosynthesis", "lesson-02-water-cycle", "lesson-03-summary")
SECRET = "whsec-cluster-render-8hJ3kq-do-not-leak"


class Receiver:
    """Collects webhook deliveries on 127.0.0.1 (stopped by the test)."""

    def __init__(self):
        got = self.got = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 — http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                got.append((dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/TOKEN-9d2e"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def test_render_cluster_stages_the_example_and_publishes_to_object_storage(s3_cluster, s3_server, tmp_path,  # noqa: F811
                                                                            run_cli, monkeypatch, capsys, receiver):
    isolate_cloud_env(monkeypatch, tmp_path)
    bucket = s3_server.make_bucket(unique("cluster-render"))  # its own: --work overrides the config's work area
    for k, v in {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                 "S2V_S3_ENDPOINT_URL": s3_server.endpoint, "S2V_S3_REGION": "us-east-1",
                 "S2V_S3_ADDRESSING_STYLE": "path", "S2V_WEBHOOK_URL": receiver.url,
                 "S2V_WEBHOOK_SECRET": SECRET,
                 # where outputs land is checked, not their encoding: the fastest preset for the renditions
                 "S2V_RENDITION_PRESET": "ultrafast"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("S2V_WORK", raising=False)
    monkeypatch.setattr(submit, "_JOBS_FILE", tmp_path / "runs.json")  # not the user's ~/.s2v
    config = s3_cluster["path"]
    code = run_cli("render", "--cluster", config, ROOT / "manifests" / "example.yaml", "--work",
                   f"s3://{bucket}/work", "--set", f"output=s3://{bucket}/out", "--run-id", "cluster-1")
    out = capsys.readouterr()
    text = out.out + out.err
    assert code == 0, text[-4000:]
    with submit.jobs_api(config) as client:
        info = client.get_job_info("cluster-1")
    assert not (s3_cluster["provider"].node_home(s3_cluster["head"]) / ".s2v" / "secrets" / "cluster-1").exists()

    s3 = s3_server.client()

    def read(key: str) -> bytes:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()

    # the real CLI rendered on the cluster from the staged manifest, with the config's GPUs
    assert str(info.status) == "SUCCEEDED"
    assert "orchestrator.cli render s3://" in info.entrypoint and "--gpus 2" in info.entrypoint
    assert "--cluster" not in info.entrypoint  # the remote driver renders; it does not submit again
    # every input (m4a, mp3, flac audio, two jpg images, the SRT captions) staged once by content
    inputs = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="work/inputs/")["Contents"]]
    assert sorted(k.rsplit("/", 1)[1] for k in inputs) == sorted(
        ["lesson1.m4a", "lesson2.mp3", "lesson3.flac", "presenter.jpg", "presenter-portrait.jpg", "lesson1.en.srt"])

    # outputs and run state in object storage, written by the remote driver
    for jid in EXAMPLE_IDS:
        meta = json.loads(read(f"out/{jid}.json"))
        assert meta["id"] == jid and meta["frames"] > 0 and meta["backend"]["name"] == "draft"
        assert len(read(f"out/{jid}.mp4")) > 0 and len(read(f"out/{jid}.jpg")) > 0
    state = json.loads(read("work/runs/cluster-1/state.json"))
    assert state["status"] == "finished" and {j["status"] for j in state["jobs"].values()} == {"published"}
    assert json.loads(read("out/report.json"))["totals"]["published"] == 3
    # the report page (written after report.json) holds every job's player and the player's script: the wheel the
    # nodes install carries lesson.js (it once did not, and only "could not write report" said so)
    page = read("out/report.html").decode()
    assert page.count('class="s2v-lesson"') == 3 and "API_1484_11" in page
    assert read("out/lesson-01-photosynthesis.scorm.zip")[:2] == b"PK"  # the package, made on the cluster

    # the webhook secret reached the remote driver (every delivery verifies with it) and nothing else shows it
    assert len(receiver.got) >= 4  # three jobs published + the run
    for headers, body in receiver.got:
        assert verify(SECRET, body, headers)
    job_blob = json.dumps([info.entrypoint, info.runtime_env, info.metadata])
    for leak in (SECRET, "TOKEN-9d2e"):
        assert leak not in job_blob and leak not in text
