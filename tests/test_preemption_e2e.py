"""Preemption on a multi-node local Ray (ray.cluster_utils.Cluster on 127.0.0.1): a notice on one node mid-chain
loses at most one clip, the node is drained, the run completes with the same bytes, preemptions are counted (never
as application errors), and after N preemptions new work goes to an on-demand node. Also the --budget stop."""

from __future__ import annotations

import collections
import os
import threading
import time
from pathlib import Path

import pytest

import media
from orchestrator.runner import render
from core.settings import Settings
from infra.preemption import sigterm_flag_path, write_sigterm_flag


@pytest.fixture(scope="module")
def job_manifest(tmp_path_factory, assets):
    d = tmp_path_factory.mktemp("pre")
    pcm, _ = media.speech([(9.0, 0.6), (9.0, 0)], seed=11)
    wav = media.write_wav(d / "long.wav", pcm)
    return media.write_manifest(d / "m.yaml", [{"id": "alpha", "audio": str(wav), "seed": 1},
                                               {"id": "beta", "audio": str(wav), "seed": 2}],
                                {"image": str(assets["image"]), "size": "96*96", "backend": "faults",
                                 "max_scene_s": 25})


def _starts(faults_dir: Path) -> collections.Counter:
    return collections.Counter(n.rsplit(".", 2)[0] for n in os.listdir(faults_dir / "starts"))


def test_notice_on_one_node_mid_chain_then_fallback_to_on_demand(job_manifest, tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0,
                                                            "node_ip_address": "127.0.0.1",
                                                            "include_dashboard": False})
    try:
        spot = [cluster.add_node(num_cpus=0, num_gpus=1, resources={"s2v_spot": 1}, node_ip_address="127.0.0.1")
                for _ in range(2)]
        ray.init(address=cluster.address, log_to_driver=False)
        base = Settings(gpus=2, address=cluster.address, preemption_sources="sigterm", preemption_poll_s=0.2,
                        sigterm_flag_dir=str(tmp_path / "flag-{node_id}"), fallback_after_preemptions=1)
        clean = base.model_copy(update={"work": str(tmp_path / "w0"), "faults_dir": str(tmp_path / "f0")})
        r0 = render(str(job_manifest), clean, cli_defaults={"output": str(tmp_path / "o0")})
        assert r0.exit_code == 0
        s = base.model_copy(update={"work": str(tmp_path / "w1"), "faults_dir": str(tmp_path / "f1"),
                                    "faults": [{"action": "slow", "seconds": 1.0}]})
        result = {}
        th = threading.Thread(target=lambda: result.setdefault(
            "r", render(str(job_manifest), s, cli_defaults={"output": str(tmp_path / "o1")})))
        th.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(list((tmp_path / "w1").rglob("*.done.json"))) < 2:
            time.sleep(0.05)
        write_sigterm_flag(sigterm_flag_path(base, spot[0].node_id))  # the notice reaches that node's watcher only
        ondemand = cluster.add_node(num_cpus=0, num_gpus=1, resources={"s2v_ondemand": 1},
                                    node_ip_address="127.0.0.1")
        th.join(timeout=300)
        assert not th.is_alive()
        res = result["r"]
        assert res.exit_code == 0, {j: r.reason for j, r in res.jobs.items()}
        for name in ("alpha.mp4", "beta.mp4"):
            assert (tmp_path / "o1" / name).read_bytes() == (tmp_path / "o0" / name).read_bytes()
        assert sum(n - 1 for n in _starts(tmp_path / "f1").values()) <= 1  # at most one clip lost
        assert sum(j.preemptions for j in res.jobs.values()) >= 1
        assert all(j.retries == 0 for j in res.jobs.values())  # preemptions are not application errors
        assert any(e[1] == "preempted" for e in res.events)
        nodes = {a.get("node") for a in res.actors}
        assert ondemand.node_id in nodes  # after the preemption, new work went to the on-demand node
        assert spot[0].node_id not in nodes
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_budget_stops_new_chains_and_says_so(ray_local, job_manifest, settings, tmp_path):
    s = settings.model_copy(update={"budget_usd": 5.0, "price_per_gpu_hour": 3600.0,
                                    "seconds_per_clip": {"faults": 1.0}, "faults_dir": str(tmp_path / "f")})
    res = render(str(job_manifest), s, cli_defaults={"output": str(tmp_path / "o")})
    assert res.exit_code == 1
    st = {j: r.status for j, r in res.jobs.items()}
    assert sorted(st.values()) == ["failed", "published"]
    stopped = next(r for r in res.jobs.values() if r.status == "failed")
    assert "budget $5.00 reached" in stopped.reason and stopped.clips_rendered == 0
