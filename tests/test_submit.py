"""`s2v render --cluster` and `s2v cluster dashboard|exec|jobs|logs|stop` against a loopback cluster.

The cluster (tests/loopback_cluster.py `s3_cluster`, shared with test_cluster_render.py) is brought up with
`s2v cluster up` on the loopback provider: a real `ray start --head` on 127.0.0.1 whose node has its own HOME and
an environment without this shell's S2V_* settings or cloud credentials. Every Jobs API call goes through the tunnel code path — Ray's command runner for the head with
`port_forward`, which the loopback runner implements as a TCP forwarder where Ray would start `ssh -L` (the
one part not exercised here is ssh itself). The work area and staged inputs live in SeaweedFS (S3) on 127.0.0.1.
The job's entrypoint is a small stand-in driver that loads settings exactly as the real CLI does, reads the
staged manifest from S3 and reports what it received.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

import media
from loopback_cluster import ROOT, TESTS, loopback_config, s3_cluster  # noqa: F401
from orchestrator.remote import forward, submit, tunnel
from storage_servers import ACCESS_KEY, SECRET_KEY, isolate_cloud_env, s3_server  # noqa: F401

SECRET = "whsec-remote-7Q2xV9-do-not-leak"
URL_TOKEN = "T0KEN-in-webhook-path-4f1c"
DRIVER = """
import hashlib, os, sys, time
from orchestrator.cli.common import settings as _settings
code, sleep_s, manifest = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
folder = os.environ.get('S2V_SECRETS_DIR')
s = _settings()
from orchestrator.intake.manifest import load_manifest
m = load_manifest(manifest, None, s)
print('DRIVER', ' '.join(sys.argv[3:]), flush=True)
print('JOBS', ' '.join(sorted(j.id + '=' + j.audio + '=' + j.output for j in m.jobs)), flush=True)
print('SECRET', hashlib.sha256((s.webhook_secret or '').encode()).hexdigest(),
      'URL', hashlib.sha256((s.webhook_url or '').encode()).hexdigest(),
      'LEFT', os.path.exists(os.path.expanduser(folder)) if folder else None, flush=True)
print('STARTED', flush=True)
time.sleep(sleep_s)
sys.exit(code)
"""


def driver(exit_code: int = 0, sleep_s: float = 0) -> list[str]:
    return ["python", "-c", DRIVER, str(exit_code), str(sleep_s)]


@pytest.fixture(scope="module")
def env(s3_server, tmp_path_factory):  # noqa: F811
    """This machine's environment: S3 credentials, S2V_* settings, a private ~/.s2v run list."""
    home = tmp_path_factory.mktemp("laptop")
    with pytest.MonkeyPatch.context() as mp:
        isolate_cloud_env(mp, home)
        for k, v in {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                     "S2V_S3_ENDPOINT_URL": s3_server.endpoint, "S2V_S3_REGION": "us-east-1",
                     "S2V_S3_ADDRESSING_STYLE": "path", "S2V_CACHE_DIR": str(home / "cache")}.items():
            mp.setenv(k, v)
        for k in ("S2V_WORK", "S2V_ADDRESS", "S2V_WEBHOOK_URL", "S2V_WEBHOOK_SECRET", "S2V_SECRETS_DIR"):
            mp.delenv(k, raising=False)
        mp.setattr(submit, "_JOBS_FILE", home / "runs.json")
        yield home


@pytest.fixture(scope="module")
def cluster(env, s3_cluster, s3_server):  # noqa: F811
    return {**s3_cluster, "s3": s3_server}


@pytest.fixture(scope="module")
def project(tmp_path_factory, cluster):
    """A user's folder: a manifest with local inputs and an S3 output prefix."""
    d = tmp_path_factory.mktemp("project")
    pcm, _ = media.speech([(1.0, 0.3), (0.8, 0)], seed=5)
    media.write_wav(d / "voice one.wav", pcm)
    media.presenter(d / "face.png", size=96)
    m = media.write_manifest(d / "m.yaml", [{"id": "a", "audio": "voice one.wav"}, {"id": "b", "audio": "voice one.wav",
                                                                                  "seed": 2}],
                             {"image": "face.png", "output": f"s3://{cluster['bucket']}/out", "backend": "draft"})
    return d, m


def _text(capsys) -> str:
    """Everything printed, with rich's line wrapping undone."""
    out = capsys.readouterr()
    return " ".join((out.out + out.err).split())


def _keys(s3, bucket: str, prefix: str) -> list[str]:
    return [o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]


def test_tunnel_reaches_the_jobs_api_and_closes(cluster, tmp_path):
    head = tunnel.find_head(cluster["path"])
    with tunnel.jobs_tunnel(head) as url:
        port = int(url.rsplit(":", 1)[1])
        assert port != tunnel.dashboard_port(head.config)  # a local forward, not the head's own port
        with urllib.request.urlopen(f"{url}/api/version", timeout=10) as r:
            assert "ray_version" in json.loads(r.read())
    with pytest.raises(OSError):  # closed on exit: nothing listens there any more
        urllib.request.urlopen(f"{url}/api/version", timeout=2)
    # a dashboard port where nothing answers fails with the reason, it does not hang
    cfg = yaml.safe_load(Path(cluster["path"]).read_text())
    cfg["metadata"]["s2v"]["dashboard_port"] = tunnel.free_local_port()
    bad = tunnel.Head(cluster["path"], cfg, head.provider, head.node_id)
    with pytest.raises(Exception, match="did not answer through the SSH tunnel"):
        with tunnel.jobs_tunnel(bad, timeout_s=2):
            pass


def test_submit_stages_inputs_forwards_settings_and_keeps_secrets_out_of_the_job(cluster, project, run_cli, capsys,
                                                                                 monkeypatch):
    d, manifest = project
    monkeypatch.setattr(submit, "COMMAND", driver())
    monkeypatch.setenv("S2V_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("S2V_WEBHOOK_URL", f"http://127.0.0.1:9/hook/{URL_TOKEN}")
    monkeypatch.setenv("S2V_CRF", "21")  # an ordinary setting: it must reach the driver
    code = run_cli("render", "--cluster", cluster["path"], str(manifest), "--run-id", "sub-1")
    out = capsys.readouterr()
    text = out.out + out.err
    assert code == 0, text[-3000:]
    bucket, s3 = cluster["bucket"], cluster["s3"]

    # inputs staged by content, once per distinct file; the driver read URIs, not paths of this machine
    wav_sha = hashlib.sha256((d / "voice one.wav").read_bytes()).hexdigest()
    inputs = _keys(s3, bucket, "work/inputs/")
    assert sorted(k.split("/")[2] for k in inputs) == sorted(
        [wav_sha, hashlib.sha256((d / "face.png").read_bytes()).hexdigest()])
    assert f"work/inputs/{wav_sha}/voice_one.wav" in inputs
    assert "2 uploaded, 0 already there" in text
    jobs_line = next(line for line in text.splitlines() if line.startswith("JOBS"))
    assert f"a=s3://{bucket}/work/inputs/{wav_sha}/voice_one.wav=s3://{bucket}/out" in jobs_line
    driver_line = next(line for line in text.splitlines() if line.startswith("DRIVER"))
    assert driver_line.startswith(f"DRIVER s3://{bucket}/work/manifests/")
    # work area from the config's metadata; --gpus from the config: the head's 2 GPUs (workers: max_workers 0)
    assert driver_line.endswith(f"--work s3://{bucket}/work --run-id sub-1 --gpus 2 --no-progress")

    # the secrets reached the driver (as files it removed once read) and appear nowhere else
    secret_line = next(line for line in text.splitlines() if line.startswith("SECRET"))
    assert secret_line == (f"SECRET {hashlib.sha256(SECRET.encode()).hexdigest()} URL "
                           f"{hashlib.sha256(f'http://127.0.0.1:9/hook/{URL_TOKEN}'.encode()).hexdigest()} LEFT False")
    assert not (cluster["provider"].node_home(cluster["head"]) / ".s2v" / "secrets" / "sub-1").exists()
    with submit.jobs_api(cluster["path"]) as client:
        info = client.get_job_info("sub-1")
    env = info.runtime_env["env_vars"]
    assert env["S2V_S3_ENDPOINT_URL"] == s3.endpoint and env["S2V_CRF"] == "21" and env["S2V_ADDRESS"] == "auto"
    assert "S2V_CACHE_DIR" not in env and "AWS_SECRET_ACCESS_KEY" not in env  # this machine's, not the node's
    assert env[forward.SECRETS_ENV] == "~/.s2v/secrets/sub-1"
    job_blob = json.dumps([info.entrypoint, info.runtime_env, info.metadata])
    for leak in (SECRET, URL_TOKEN):
        assert leak not in job_blob and leak not in text

    # again, detached, failing: nothing uploaded twice; `s2v status`, `logs`, `jobs` find it
    monkeypatch.setattr(submit, "COMMAND", driver(exit_code=3))
    assert run_cli("render", "--cluster", cluster["path"], str(manifest), "--run-id", "sub-2", "--detach") == 0
    text = _text(capsys)
    assert "0 uploaded, 2 already there" in text and "s2v cluster logs sub-2 --follow" in text
    assert run_cli("cluster", "logs", "sub-2", "--follow") == 3
    assert "DRIVER" in _text(capsys)
    assert run_cli("status", "sub-2") == 0
    assert "job sub-2 FAILED" in _text(capsys)
    assert run_cli("cluster", "jobs", cluster["path"]) == 0
    listing = _text(capsys)
    assert "sub-1" in listing and "SUCCEEDED" in listing and "sub-2" in listing and "FAILED" in listing


def _interrupt_when(marker: str, lines: list[str]):
    def echo(line: str) -> None:
        lines.append(line)
        if marker in line:
            signal.raise_signal(signal.SIGINT)  # the user's Ctrl-C, delivered to this process

    return echo


def test_ctrl_c_while_following_asks_before_stopping(cluster, project, run_cli, capsys, monkeypatch):
    _, manifest = project
    monkeypatch.setattr(submit, "COMMAND", driver(sleep_s=300))
    for run in ("long-1", "long-2"):
        assert run_cli("render", "--cluster", cluster["path"], str(manifest), "--run-id", run, "--detach") == 0
    # a run id that is running is not submitted twice
    assert run_cli("render", "--cluster", cluster["path"], str(manifest), "--run-id", "long-1", "--detach") == 2
    assert "run long-1 is still running" in _text(capsys)
    with submit.jobs_api(cluster["path"]) as client:
        # nobody to ask (not a terminal): the run goes on, and the user is told how to stop it
        lines: list[str] = []
        assert submit.follow(client, "long-1", cluster["path"], echo=_interrupt_when("STARTED", lines),
                             confirm=lambda q: None) == 130
        assert "s2v cluster stop long-1" in lines[-1]
        assert str(client.get_job_info("long-1").status) == "RUNNING"
        # asked, and the answer is yes: the remote run is stopped
        asked: list[str] = []
        assert submit.follow(client, "long-2", cluster["path"], echo=_interrupt_when("STARTED", []),
                             confirm=lambda q: asked.append(q) or True) == 130
        assert asked and "long-2" in asked[0]
        assert str(client.get_job_info("long-2").status) == "STOPPED"
    capsys.readouterr()
    assert run_cli("cluster", "stop", "long-1") == 0
    assert "long-1: STOPPED" in _text(capsys)
    # submitted again once it ended: the same run (and work area folder), resumed under a new Ray job id
    monkeypatch.setattr(submit, "COMMAND", driver())
    assert run_cli("render", "--cluster", cluster["path"], str(manifest), "--run-id", "long-1", "--detach") == 0
    assert "submitted run long-1 (2 job(s))" in (text := _text(capsys)) and "as job long-1.2" in text


def test_dashboard_and_exec_go_through_the_launcher(cluster, run_cli, capsys):
    env = dict(os.environ, PYTHONPATH=f"{TESTS}:{ROOT}")
    port = tunnel.free_local_port()
    p = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "cluster", "dashboard", cluster["path"],
                          "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = ""
        while "dashboard:" not in line:
            line = p.stdout.readline()
            assert line or p.poll() is None, "dashboard exited before printing its URL"
        assert f"http://127.0.0.1:{port}" in line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=10) as r:
            assert r.status == 200
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=30) == 0
        assert "tunnel closed" in p.stdout.read()
    finally:
        if p.poll() is None:
            p.kill()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=2)

    home = cluster["provider"].node_home(cluster["head"])
    assert run_cli("cluster", "exec", "echo on-$HOME; exit 3", "-c", cluster["path"]) == 3
    assert f"on-{home}" in _text(capsys)


def test_refused_before_the_cluster_is_touched(tmp_path, env, run_cli, capsys):
    """Local work areas and outputs, and unsafe run ids, are refused with the reason and the fix — offline."""
    cfg = loopback_config(tmp_path)  # never brought up: none of these may need it
    valid = tmp_path / "valid.yaml"
    valid.write_text(yaml.safe_dump(cfg))
    del cfg["metadata"]["s2v"]["work"]  # a config written by hand, without the work area `init` writes
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    img = media.presenter(tmp_path / "p.png", size=64)
    pcm, _ = media.speech([(0.5, 0)], seed=1)
    media.write_wav(tmp_path / "v.wav", pcm)
    m = media.write_manifest(tmp_path / "m.yaml", [{"id": "a", "audio": "v.wav", "image": str(img)},
                                                   {"id": "b", "audio": "v.wav", "image": str(img),
                                                    "output": "s3://somewhere/out"}], {"output": "renders"})

    assert run_cli("render", "--cluster", path, m) == 2
    assert "needs a work area in object storage" in _text(capsys)
    assert run_cli("render", "--cluster", path, m, "--work", tmp_path / "w") == 2
    assert "is a local path" in _text(capsys)
    assert run_cli("render", "--cluster", path, m, "--work", "s3://b/w", "--run-id", "../../esc") == 2
    assert "--run-id" in _text(capsys)
    for name in ("../../esc", "x; rm -rf ~"):  # it would land in a path and a shell command on the head
        assert run_cli("cluster", "stop", name, "-c", valid) == 2
        assert "is not allowed: use 1-128 characters" in _text(capsys)
    # row a's output resolves to a local folder: named with file, row and field; row b is left to a check that
    # cannot pass offline (no bucket 'somewhere'), so nothing is left to submit
    assert run_cli("render", "--cluster", path, m, "--work", "s3://b/w") == 2
    text = _text(capsys)
    assert f"{m}:" in text and "(job #1) field 'output'" in text and "resolves to the local path" in text
    assert "--set output=s3://" in text
    assert not (tmp_path / "renders").exists()


def test_only_fitting_files_under_the_manifests_folder_are_staged(tmp_path, env, run_cli, capsys, monkeypatch):
    """The review's reproduction: `lora: ~/.aws/credentials` and `captions: ~/.aws/credentials` passed the checks
    and the credentials landed in the bucket. A file outside the manifest's folder (a symlink to one too), or
    whose content is not what its field takes, is refused by row and field before anything is uploaded; real
    inputs beside the manifest, or under a staging root, pass."""
    import numpy as np
    from safetensors.numpy import save_file

    from core.settings import Settings
    from orchestrator.intake.manifest import load_manifest
    from orchestrator.remote.stage import staging_problems

    home, proj, media_root = tmp_path / "home", tmp_path / "project", tmp_path / "media"
    (home / ".aws").mkdir(parents=True)
    creds = home / ".aws" / "credentials"
    creds.write_text("[default]\naws_access_key_id = AKIAEXAMPLE\naws_secret_access_key = s3cr3t\n")
    monkeypatch.setenv("HOME", str(home))
    proj.mkdir()
    media.presenter(proj / "face.png", size=64)
    pcm, _ = media.speech([(0.5, 0)], seed=1)
    media.write_wav(proj / "v.wav", pcm)
    (proj / "notes.srt").write_bytes(creds.read_bytes())  # a caption file by name only
    (proj / "link.wav").symlink_to(creds)
    save_file({"w": np.zeros((2, 2), np.float32)}, str(proj / "style.safetensors"))
    (proj / "talk.srt").write_text("1\n00:00:00,000 --> 00:00:00,400\nHi\n")
    media_root.mkdir()
    media.write_wav(media_root / "shared.wav", pcm)
    out = "s3://somewhere/out"
    m = media.write_manifest(proj / "m.yaml", [
        {"id": "a", "audio": "v.wav", "lora": "~/.aws/credentials"},
        {"id": "b", "audio": "v.wav", "captions": "~/.aws/credentials"},
        {"id": "c", "audio": "link.wav"},
        {"id": "d", "audio": "v.wav", "captions": "notes.srt"},
        {"id": "e", "audio": "v.wav", "image": "v.wav"},
        {"id": "f", "audio": "v.wav", "lora": "style.safetensors", "captions": "talk.srt"},
        {"id": "g", "audio": str(media_root / "shared.wav")}], {"image": "face.png", "output": out})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(loopback_config(tmp_path)))
    assert run_cli("render", "--cluster", path, m, "--work", "s3://b/w") == 2
    text = _text(capsys)
    for row, field in ((1, "lora"), (2, "captions"), (3, "audio")):
        assert f"(job #{row}) field '{field}': {creds} is outside the folders a cluster run uploads from" in text
    assert f"(job #4) field 'captions': {proj / 'notes.srt'} is not a caption file (UTF-8 SRT or WebVTT)" in text
    assert f"(job #5) field 'image': {proj / 'v.wav'} is not an image" in text
    assert "S2V_STAGING_ROOTS" in text
    assert "(job #6) field 'lora'" not in text and "(job #6) field 'captions'" not in text

    jobs = {j.id: j for j in load_manifest(str(m), None, Settings()).jobs}
    row_id = {j.where: j.id for j in jobs.values()}
    found = {(row_id[p.where], p.field) for p in staging_problems(list(jobs.values()), str(m), Settings())}
    assert found == {("a", "lora"), ("b", "captions"), ("c", "audio"), ("d", "captions"), ("e", "image"),
                     ("g", "audio")}
    assert not staging_problems([jobs["g"]], str(m), Settings(staging_roots=[str(media_root)]))


def test_rows_in_buckets_the_clusters_grants_do_not_cover_are_refused_by_row_and_field(tmp_path, env, run_cli,
                                                                                        capsys):
    """The shipped policies covered the work bucket only, so a catalog with media or outputs in another bucket had
    its rows rejected by the head after upload. Now the config lists the other buckets (`init --input-bucket
    --output-bucket`, which writes grants for them) and the laptop refuses, before anything is uploaded, a row
    that names a bucket the nodes may not read, or publish to."""
    media.presenter(tmp_path / "p.png", size=64)
    pcm, _ = media.speech([(0.5, 0)], seed=1)
    media.write_wav(tmp_path / "v.wav", pcm)
    m = media.write_manifest(tmp_path / "m.yaml", [
        {"id": "a", "audio": "s3://media-lib/talks/a.wav", "output": "s3://pub-site/out"},
        {"id": "b", "audio": "s3://strangers/b.wav", "output": "s3://pub-site/out"},
        {"id": "c", "audio": "v.wav", "output": "s3://media-lib/out"},
        {"id": "d", "audio": "v.wav", "output": "s3://pub-site/out", "model_dir": "s3://strangers/wan"}],
        {"image": "p.png"})
    # as a user may write the list by hand: a URI names its bucket
    cfg = loopback_config(tmp_path, metadata={"s2v": {"input_buckets": ["s3://media-lib"],
                                                      "output_buckets": ["pub-site"]}})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert run_cli("render", "--cluster", path, m, "--work", "s3://b/w") == 2
    text = _text(capsys)
    assert "(job #2) field 'audio': bucket 'strangers' is not one the nodes of" in text and "--input-bucket strangers" in text
    assert "(job #3) field 'output': bucket 'media-lib' is not one the nodes of" in text  # read-only for the nodes
    assert "(job #1) field 'audio': bucket" not in text and "field 'output': bucket 'pub-site'" not in text
    assert "(job #4) field 'model_dir': bucket 'strangers'" in text  # the GPU nodes' weight sync reads it

    from infra.clusters.runpod.provider import RunPodNodeProvider  # noqa: F401 — the module RunPod configs name
    from orchestrator.intake.manifest import load_manifest
    from orchestrator.remote.stage import bucket_problems
    from core.settings import Settings

    runpod = {"provider": {"type": "external", "module": "infra.clusters.runpod.provider.RunPodNodeProvider"},
              "metadata": {"s2v": {"work": "s3://b/w"}}}
    jobs = load_manifest(str(m), None, Settings()).jobs
    assert bucket_problems(jobs, runpod, "runpod.yaml") == []  # pods use the user's own keys: no grants to check


def test_cpu_tasks_larger_than_the_head_are_refused_before_anything_is_submitted(tmp_path, env, run_cli, capsys,
                                                                                monkeypatch):
    """CPU tasks run only on the node marked for CPU work (the head): one asking for more CPUs than it has would
    never start, and the run would wait forever."""
    media.presenter(tmp_path / "p.png", size=64)
    pcm, _ = media.speech([(0.5, 0)], seed=1)
    media.write_wav(tmp_path / "v.wav", pcm)
    m = media.write_manifest(tmp_path / "m.yaml", [{"id": "a", "audio": "v.wav"}], {"image": "p.png",
                                                                                   "output": "s3://b/out"})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(loopback_config(tmp_path, head_cpus=2)))
    monkeypatch.setenv("S2V_ASR_CPUS", "8")
    assert run_cli("render", "--cluster", path, m, "--work", "s3://b/w") == 2
    text = _text(capsys)
    assert "asr_cpus = 8 but the nodes of" in text and "have 2 CPUs" in text


def test_default_gpus_and_forwarded_env():
    cfg = {"max_workers": 5, "head_node_type": "head", "available_node_types": {
        "head": {"resources": {"CPU": 4}}, "spot8": {"resources": {"GPU": 8}, "max_workers": 2},
        "spot1": {"resources": {"GPU": 1}, "max_workers": 4}, "cpu": {"resources": {"CPU": 8}, "max_workers": 3}}}
    assert forward.default_gpus(cfg) == 2 * 8 + 3 * 1  # biggest nodes first, 5 workers in all
    env = forward.forwarded_env({"S2V_CRF": "20", "S2V_PRICES__H100_AWS__SPOT": "2.1", "S2V_WEBHOOK_SECRET": "x",
                                 "S2V_WEBHOOK_URL": "y", "S2V_WORK": "w", "S2V_NOT_A_SETTING": "z", "HOME": "/h"})
    assert env == {"S2V_CRF": "20", "S2V_PRICES__H100_AWS__SPOT": "2.1", **forward.CLUSTER_ENV}


def test_every_setting_is_placed_and_this_machines_settings_stay_here():
    """forwarded_env() sent every S2V_* variable but a few: a laptop's S2V_AWS_IMDS_URL (nodes then polled loopback
    and missed spot notices), S2V_PREEMPTION_POLL_S=600 and S2V_MODEL_DIR=/home/me/wan reached the nodes. Each
    setting is now placed by name, and the run's log says what went and what stayed."""
    from core.settings import Settings
    from orchestrator.remote.travel import STAYS, TRAVELS

    fields = set(Settings.model_fields)
    assert fields == TRAVELS | set(STAYS) | forward.secret_fields() and not TRAVELS & set(STAYS)
    env = {"S2V_AWS_IMDS_URL": "http://127.0.0.1:9999", "S2V_GCP_METADATA_URL": "http://127.0.0.1:9998",
           "S2V_PREEMPTION_POLL_S": "600", "S2V_MODEL_DIR": "/home/me/wan", "S2V_PREEMPTION_SOURCES": "aws",
           "S2V_CRF": "21", "S2V_RENDITION_PRESET": "fast", "S2V_WEBHOOK_SECRET": SECRET, "HOME": "/home/me"}
    assert forward.forwarded_env(env) == {"S2V_CRF": "21", "S2V_RENDITION_PRESET": "fast", "S2V_ADDRESS": "auto"}
    note = forward.travel_note(env)
    assert "sent to the cluster's driver: S2V_CRF, S2V_RENDITION_PRESET" in note
    assert "S2V_AWS_IMDS_URL (each node asks its own metadata service)" in note
    assert "S2V_MODEL_DIR (the cluster's weights are its config's metadata.s2v.model_dir)" in note
    assert "S2V_WEBHOOK_SECRET" not in note and SECRET not in note  # secrets travel as files, never named here
