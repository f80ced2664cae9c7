"""Issue 10's rehearsal: a nightly render on a spot GPU cluster, end to end, on loopback, with nodes that share
nothing but the object store — as a user walks it: `s2v cluster up`, `s2v render --cluster`, `s2v cluster down`.

What is real here and what stands in for a cloud (nothing leaves 127.0.0.1):
- Ray's own launcher (`s2v cluster up` → `ray.autoscaler.sdk`) and autoscaler, with the loopback node provider
  of tests/loopback_cluster.py standing in for EC2: each node is a folder that is its HOME and working dir, its
  processes carry an environment marker, and `terminate_node` kills them (a spot reclaim). The project reaches
  each node as the wheel `up` builds from this checkout, mounted at ~/s2v-dist and installed into the node's own
  ~/site, first on its PYTHONPATH: no node imports this checkout (checked per actor).
- The cluster starts with a CPU-only head and zero GPU workers; the run asks the autoscaler for its GPUs and the
  launcher starts worker nodes (`ray start` through tests/loopback_ray.py: Ray's CLI cannot add a second node on
  127.0.0.1 by itself).
- SeaweedFS (S3) holds the staged inputs, the work area and the outputs; nodes reach it with credentials in their
  own environment (what an instance profile gives a real node), never this shell's.
- `s2v render --cluster` goes through the tunnel code path: Ray's command runner `port_forward`, where only ssh
  itself is replaced by a loopback TCP forwarder (tests/loopback_cluster.py).
- A loopback AWS IMDSv2 answers each node at /<node id>/latest/… (settings.aws_imds_url names '{node_id}'): one
  node gets a spot interruption notice mid-chain and is then reclaimed, another only a rebalance recommendation.
- The `faults` drill backend renders like `draft` (pixels from the job alone) and holds every chain's clip 2 until
  the test opens a loopback HTTP gate, so the notices land mid-chain without guessing at timings.

Checked: every job published in S3, byte-identical to a local run of the same manifest; the pool grew to every GPU
node that joined (≥ 3) from zero; the interrupted node refused its next clip, its chain went on elsewhere and a
replacement was asked for; the warned node finished its chain, took no new one while warned and worked again once
the warning cleared; the report's cost comes from node-hours (head included) at the config's prices."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

import media
from autoscaler import wait_for
from node_imds import NodeImds
from loopback_cluster import loopback_cluster, loopback_config
from storage_servers import ACCESS_KEY, SECRET_KEY, isolate_cloud_env, s3_server, unique  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
JOBS = 9
GPU_NODES = 3
PRICES = {"loopback-head": {"on_demand": 0.50, "spot": 0.50}, "loopback-gpu": {"on_demand": 8.0, "spot": 3.0}}


@pytest.fixture
def metadata():
    m = NodeImds()
    yield m
    m.close()


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _config(tmp: Path, bucket: str, imds_url: str) -> dict:
    # what an instance profile and the image give a real node; the metadata service a node asks is its own
    # (here the loopback IMDS), never a laptop's setting: those stay on the laptop (orchestrator/remote/travel.py)
    node_env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/dev/null",
                "S2V_AWS_IMDS_URL": imds_url, "S2V_PREEMPTION_POLL_S": "0.2"}
    cfg = loopback_config(tmp, head_cpus=2, head_gpus=0, max_workers=GPU_NODES + 1, node_env=node_env,
                          metadata={"s2v": {"work": f"s3://{bucket}/work", "prices": PRICES,
                                            "preemption_sources": "aws"}})
    types = cfg["available_node_types"]
    types["head"]["labels"] = {"s2v-price-key": "loopback-head", "s2v-market": "on-demand"}
    gpu = types.pop("gpu_ondemand")
    # spot GPU workers with CPUs of their own, as the shipped types have (12-26): only the head's CPU-work marker
    # keeps stitching and publishing off them (checked below, task by task)
    gpu.update(resources={"CPU": 2, "GPU": 1, "s2v_spot": 1}, min_workers=0, max_workers=GPU_NODES + 1,
               labels={"s2v-price-key": "loopback-gpu", "s2v-market": "spot"})
    types["gpu_spot"] = gpu
    cfg["worker_start_ray_commands"] = [
        "ray stop",
        # the node's provider id as its Ray node name, so the test can reclaim the node a notice went to
        "python -m loopback_ray start --address=$RAY_ADDRESS --node-ip-address=127.0.0.1 --disable-usage-stats "
        "--node-name=$S2V_LOCAL_NODE",
    ]
    return cfg


def _markers(s3, bucket: str) -> list[dict]:
    """Every clip checkpoint's marker (the run keeps them: S2V_KEEP_CHECKPOINTS)."""
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="work/jobs/"):
        for o in page.get("Contents", []):
            if o["Key"].endswith(".done.json"):
                out.append(json.loads(s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()))
    return out


@pytest.mark.slow
def test_nightly_render_on_a_spot_cluster_that_shares_nothing(s3_server, metadata, tmp_path, run_cli,  # noqa: F811
                                                               monkeypatch, capsys):
    from orchestrator.remote import submit
    from orchestrator.run.runner import render
    from core.settings import Settings

    isolate_cloud_env(monkeypatch, tmp_path)
    monkeypatch.setattr(submit, "_JOBS_FILE", tmp_path / "runs.json")  # not the user's ~/.s2v
    monkeypatch.setenv("S2V_CLUSTERS_DIR", str(tmp_path / "clusters"))
    bucket = s3_server.make_bucket(unique("night"))
    s3 = s3_server.client()

    # the catalog: local inputs (staged to S3 by the submit), one chain of 8 clips per job, outputs in S3
    pcm, _ = media.speech([(39.0, 0)], seed=21)
    wav = media.write_wav(tmp_path / "lesson.wav", pcm)
    image = media.presenter(tmp_path / "presenter.png", size=64)
    rows = [{"id": f"lesson-{i:02d}", "audio": str(wav), "seed": i} for i in range(JOBS)]
    manifest = media.write_manifest(tmp_path / "nightly.yaml", rows, {
        "image": str(image), "size": "64*64", "backend": "faults", "max_scene_s": 60,
        "output": f"s3://{bucket}/out"})
    for k, v in {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                 "S2V_S3_ENDPOINT_URL": s3_server.endpoint, "S2V_S3_REGION": "us-east-1",
                 "S2V_S3_ADDRESSING_STYLE": "path", "S2V_KEEP_CHECKPOINTS": "true",
                 "S2V_FAULTS": json.dumps([{"action": "slow", "seconds": 0.3},
                                           {"action": "wait", "clip": 2, "url": metadata.gate_url}])}.items():
        monkeypatch.setenv(k, v)

    # the reference: the same manifest rendered locally (no drills: pixels do not depend on them), in the
    # background while the cluster comes up — this process is no driver of the cluster (its run goes through the
    # Jobs API), so its own local Ray is free to use
    local = Settings(gpus=2, work=str(tmp_path / "local-work"), cache_dir=tmp_path / "cache", faults=[])
    reference: dict = {}
    ref = threading.Thread(target=lambda: reference.setdefault(
        "res", render(str(manifest), local, cli_defaults={"output": str(tmp_path / "local-out")})))
    ref.start()

    cfg = _config(tmp_path, bucket, metadata.url)
    path = tmp_path / "cluster.yaml"
    with loopback_cluster(cfg, path, down=True) as provider:
        t_up = time.time()
        code = run_cli("render", str(manifest), "--cluster", str(path), "--run-id", "night-1", "--detach")
        assert code == 0, capsys.readouterr()

        # the pool grows from zero GPU workers: every chain reaches the gate at clip 2 on its own actor
        def at_gate():
            m = _markers(s3, bucket)
            nodes = {x["node"] for x in m if x["clip"] == 1}
            return m if len(nodes) >= GPU_NODES else None

        markers = wait_for(at_gate, 300, f"{GPU_NODES} GPU nodes launched and their chains at the gate")
        by_node: dict[str, str] = {}
        for x in sorted(markers, key=lambda x: x["clip"]):
            by_node.setdefault(x["node"], x["job"])
        (a, job_a), (b, job_b) = sorted(by_node.items())[:2]
        now = time.time()
        metadata.action[a] = {"action": "terminate", "time": _iso(now + 120)}
        metadata.rebalance[b] = {"noticeTime": _iso(now)}
        wait_for(lambda: {(a, "instance-action"), (b, "rebalance")} <= metadata.served, 60, "both nodes' watchers")
        time.sleep(0.3)  # one more poll each (0.2 s): each watcher has taken what it read
        metadata.gate_open = True

        # A refuses its next clip: its chain goes on elsewhere; then AWS takes the node back
        wait_for(lambda: any(x["job"] == job_a and x["node"] != a for x in _markers(s3, bucket)), 120,
              "the interrupted node's chain going on elsewhere")
        from ray.util.state import list_nodes

        dash = f"http://127.0.0.1:{cfg['metadata']['s2v']['dashboard_port']}"
        names = {n.node_id: n.node_name for n in list_nodes(address=dash, detail=True)}
        provider.terminate_node(names[a])

        # B finishes its chain, warned; clear the warning as soon as it has, while chains are still queued
        wait_for(lambda: any(x["job"] == job_b and x["clip"] == 7 for x in _markers(s3, bucket)), 120,
              "the warned node finishing its chain")
        del metadata.rebalance[b]
        t_clear = time.time()

        assert run_cli("cluster", "logs", "night-1", "--follow") == 0, capsys.readouterr()
        from ray.util.state import list_tasks

        head_id = next(n.node_id for n in list_nodes(address=dash, detail=True) if n.is_head_node)
        cpu_work = [t for t in list_tasks(address=dash, detail=True, limit=10000, raise_on_missing_output=False)
                    if t.name in ("stitch_and_publish", "prepare_audio", "prepare_captions", "repost")]
        state = json.loads(s3.get_object(Bucket=bucket, Key="work/runs/night-1/state.json")["Body"].read())
        report = json.loads(s3.get_object(Bucket=bucket, Key="work/runs/night-1/report.json")["Body"].read())
        markers = _markers(s3, bucket)
        t_end = time.time()

    # the run's CPU work (every stitch and audio task) ran on the head, none on the GPU nodes beside it
    assert {t.name for t in cpu_work} >= {"stitch_and_publish", "prepare_audio"}
    assert {t.node_id for t in cpu_work if t.node_id} == {head_id}, [(t.name, t.node_id) for t in cpu_work]
    # every job published, byte-identical to the same manifest rendered locally
    assert state["status"] == "finished" and {j["status"] for j in state["jobs"].values()} == {"published"}
    ref.join(timeout=300)
    assert reference["res"].exit_code == 0
    for r in rows:
        name = f"{r['id']}.mp4"
        cloud = s3.get_object(Bucket=bucket, Key=f"out/{name}")["Body"].read()
        assert cloud == (tmp_path / "local-out" / name).read_bytes(), name

    # the pool grew to every GPU node that joined, from none
    gpu_nodes = {x["node"] for x in markers}
    assert len(gpu_nodes) >= GPU_NODES
    # A: nothing of another chain after its notice; B: no new chain while warned, work again once cleared
    b_jobs_after = {x["job"] for x in markers if x["node"] == b and x["at"] > t_clear}
    assert b_jobs_after - {job_b}, "the warned node took no chain after its warning cleared"
    warned = [x for x in markers if x["node"] == b and now < x["at"] < t_clear and x["job"] != job_b]
    assert not warned, f"the warned node started a new chain while warned: {warned}"
    assert not [x for x in markers if x["node"] == a and x["at"] > now + 5 and x["job"] != job_a]

    # the notices as the run saw them: counted as preemptions (never as the job's errors), a replacement asked for
    cap = report["capacity"]
    assert cap["elastic"] and cap["target"] == GPU_NODES + 1 and cap["notices"] >= 1
    assert cap["actors_started"] > cap["target"]  # the replacement for the interrupted node's actor
    assert sum(j["preemptions"] for j in report["jobs"].values()) >= 1
    assert all(j["retries"] == 0 or j["preemptions"] for j in report["jobs"].values())

    # every actor ran the shipped wheel from its own node's folder, never this checkout; one model load each
    assert any(not a.get("dead") for a in report["actors"])
    for actor in report["actors"]:
        if not actor.get("dead"):
            assert actor["code"].endswith("/site/orchestrator") and not actor["code"].startswith(str(ROOT))
            assert sum(actor["loads"].values()) == 1

    # cost from node-hours, head included, at the config's prices
    totals, cost = report["totals"], report["cost"]
    assert totals["cost_source"] == "node-hours" and cost["priced"]
    heads = [n for n in cost["nodes"] if n["head"]]
    gpus = [n for n in cost["nodes"] if n["price_key"] == "loopback-gpu"]
    assert len(heads) == 1 and heads[0]["price_key"] == "loopback-head" and len(gpus) >= GPU_NODES
    for n in cost["nodes"]:
        assert n["usd_per_hour"] == PRICES[n["price_key"]]["spot" if n["market"] == "spot" else "on_demand"]
    assert totals["cost_usd"] == pytest.approx(sum(n["hours"] * n["usd_per_hour"] for n in cost["nodes"]), rel=1e-4)
    assert 0 < heads[0]["hours"] * 3600 <= t_end - t_up + 60  # the head counts for the whole run, idle or not
