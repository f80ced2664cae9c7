"""The elastic GPU pool on a real multi-node Ray (ray.cluster_utils.Cluster on 127.0.0.1) that starts as a CPU
head with no GPU node, like a launcher cluster at `min_workers: 0`: the run asks the autoscaler for GPUs, grows an
actor per GPU as nodes join, shrinks when one goes mid-chain and grows again; costs come from node-hours of labelled
nodes; spot capacity that never comes turns into on-demand actors. There is no autoscaler here: the test plays it
(adds and removes nodes) and reads the standing request the run made, where Ray's autoscaler reads it."""

from __future__ import annotations

import collections
import os
import threading
from pathlib import Path

import pytest

import media
from autoscaler import requested, wait_for
from core.settings import NodePrice, Settings
from orchestrator.run.runner import render

HEAD = {"s2v-price-key": "m5.large", "s2v-market": "on-demand"}
GPU = {"s2v-price-key": "p5.48xlarge", "s2v-market": "spot"}
PRICES = {"m5.large": NodePrice(on_demand=0.1, spot=0.04), "p5.48xlarge": NodePrice(on_demand=98.0, spot=40.0)}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, assets):
    """Four jobs, one 8-clip chain each."""
    d = tmp_path_factory.mktemp("pool")
    pcm, _ = media.speech([(39.0, 0)], seed=13)
    wav = media.write_wav(d / "long.wav", pcm)
    return media.write_manifest(d / "m.yaml", [{"id": f"j{i}", "audio": str(wav), "seed": i} for i in range(4)],
                                {"image": str(assets["image"]), "size": "64*64", "backend": "faults",
                                 "max_scene_s": 60})


def _outputs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.mp4"))}


def _cpu_head_cluster():
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0, "labels": HEAD,
                                                            "node_ip_address": "127.0.0.1",
                                                            "include_dashboard": False})
    ray.init(address=cluster.address, log_to_driver=False)
    return cluster


def test_pool_grows_to_every_gpu_shrinks_and_grows_again_priced_by_node_hours(no_ray, manifest, tmp_path,
                                                                              monkeypatch):
    import ray

    import orchestrator.render.pool as pool_mod
    from conftest import start_local_ray
    from orchestrator.run.report import report_doc

    monkeypatch.setattr(pool_mod, "BOOTSTRAP_CONFIG", str(tmp_path / "none.yaml"))  # no launcher config here
    start_local_ray()
    local = render(str(manifest), Settings(gpus=2, work=str(tmp_path / "w0"), faults_dir=str(tmp_path / "f0")),
                   cli_defaults={"output": str(tmp_path / "o0")})
    assert local.exit_code == 0
    ray.shutdown()

    cluster = _cpu_head_cluster()
    try:
        go = tmp_path / "go"
        # every chain holds at clip 4 until `go` exists: the test, not the clock, orders what happens
        s = Settings(address=cluster.address, gpus=3, work=str(tmp_path / "w1"), faults_dir=str(tmp_path / "f1"),
                     faults=[{"action": "wait", "clip": 4, "file": str(go)}], node_prices=PRICES)
        at_gate = lambda: {n.rsplit(".", 2)[1] for n in os.listdir(tmp_path / "f1" / "starts")  # noqa: E731
                           if ".c4." in n} if (tmp_path / "f1" / "starts").exists() else set()
        result = {}
        th = threading.Thread(target=lambda: result.setdefault(
            "r", render(str(manifest), s, cli_defaults={"output": str(tmp_path / "o1")})))
        th.start()
        # no GPU anywhere yet: the run asks for the capacity it needs (3 of its 4 chains can run at once)
        assert wait_for(lambda: requested() == [{"GPU": 1}] * 3, 90, "the request for 3 GPUs")
        gpus = [cluster.add_node(num_cpus=0, num_gpus=1, labels=GPU, node_ip_address="127.0.0.1") for _ in range(3)]
        wait_for(lambda: len(at_gate()) == 3, 120, "three actors, each mid-chain")
        cluster.remove_node(gpus[0], allow_graceful=False)
        gpus.append(cluster.add_node(num_cpus=0, num_gpus=1, labels=GPU, node_ip_address="127.0.0.1"))
        wait_for(lambda: len(at_gate()) == 4, 120, "the lost chain resumed on the new node")
        go.touch()
        th.join(timeout=300)
        assert not th.is_alive()
        res = result["r"]
        assert res.exit_code == 0, {j: r.reason for j, r in res.jobs.items()}
        assert _outputs(tmp_path / "o1") == _outputs(tmp_path / "o0")

        ready = {e.slot: e.node for e in res.events if e.kind == "ready" and e.node != gpus[3].node_id}
        regrown = [e for e in res.events if e.kind == "ready" and e.node == gpus[3].node_id]
        lost = [e for e in res.events if e.kind == "lost"]
        assert set(ready.values()) == {n.node_id for n in gpus[:3]}  # an actor on every GPU that joined
        assert len(lost) == 1 and len(regrown) == 1 and regrown[0].t > lost[0].t  # shrank, then grew again
        assert res.capacity["peak_workers"] == 3 and res.capacity["elastic"]
        # the lost chain resumed from its checkpoints: only the clip it held at the gate started twice
        slot = next(k for k, node in ready.items() if node == gpus[0].node_id)
        job = next(e.job for e in res.events if e.kind == "assign" and e.slot == slot)
        starts = collections.Counter(n.rsplit(".", 2)[0] for n in os.listdir(tmp_path / "f1" / "starts"))
        assert {c: n for c, n in starts.items() if n > 1} == {f"{job}.s0.c4": 2}
        assert lost[0].job == job
        # the end: request dropped, actors gone, every GPU free for the autoscaler to scale down
        assert requested() == []
        wait_for(lambda: ray.available_resources().get("GPU", 0) == 3, 30, "all GPUs given back")

        # cost from node-hours: the head, every GPU node (the removed one until it went), each at its price
        cost = res.cost
        rows = {r["node"]: r for r in cost["nodes"]}
        assert cost["source"] == "node-hours" and cost["priced"] and "note" not in cost
        assert {n.node_id for n in gpus} | {cluster.head_node.node_id} == set(rows)
        assert rows[cluster.head_node.node_id]["head"] and rows[cluster.head_node.node_id]["usd_per_hour"] == 0.1
        assert rows[gpus[0].node_id]["hours"] < rows[gpus[1].node_id]["hours"]  # it stopped counting when it went
        assert cost["cost_usd"] == pytest.approx(sum(r["hours"] * r["usd_per_hour"] for r in rows.values()), rel=1e-3)
        assert cost["node_hours"] == pytest.approx(sum(r["hours"] for r in rows.values()), rel=1e-3)
        assert all(r["hours"] * 3600 <= res.wall_s + 1 for r in rows.values())
        totals = report_doc(res)["totals"]
        assert totals["node_hours"] == cost["node_hours"] and totals["cost_usd"] == cost["cost_usd"] > 0
        # per job: its GPU-seconds at the GPU node's price (one GPU per node here)
        j = res.jobs["j0"]
        assert j.cost_usd == pytest.approx(j.gpu_s * 40.0 / 3600, rel=1e-3)
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_spot_that_never_comes_turns_into_on_demand_and_says_so(no_ray, assets, tmp_path, monkeypatch):
    """Issue 10 item 8: no spot GPU within spot_wait_s → the waiting actor is replaced by one that asks for the
    on-demand node type (its request names s2v_ondemand); the run finishes there and reports why."""
    import ray

    import orchestrator.render.pool as pool_mod

    monkeypatch.setattr(pool_mod, "BOOTSTRAP_CONFIG", str(tmp_path / "none.yaml"))
    m = media.write_manifest(tmp_path / "m.yaml", [{"id": "one", "audio": str(assets["speech4"])}],
                             {"image": str(assets["image"]), "size": "64*64", "backend": "faults",
                              "output": str(tmp_path / "out")})
    cluster = _cpu_head_cluster()
    try:
        s = Settings(address=cluster.address, gpus=2, spot_wait_s=2.0, work=str(tmp_path / "w"),
                     faults_dir=str(tmp_path / "f"), node_prices=PRICES)
        result = {}
        th = threading.Thread(target=lambda: result.setdefault("r", render(str(m), s)))
        th.start()
        assert wait_for(lambda: requested() == [{"GPU": 1}], 90, "a spot GPU")  # one chain: one GPU
        assert wait_for(lambda: requested() == [{"GPU": 1, "s2v_ondemand": 1}], 60, "an on-demand GPU")
        od = cluster.add_node(num_cpus=0, num_gpus=1, resources={"s2v_ondemand": 1},
                              labels={"s2v-price-key": "p5.48xlarge", "s2v-market": "on-demand"},
                              node_ip_address="127.0.0.1")
        th.join(timeout=180)
        assert not th.is_alive()
        res = result["r"]
        assert res.exit_code == 0, {j: r.reason for j, r in res.jobs.items()}
        assert "spot capacity did not come within 2 s" in res.capacity["ondemand"]
        assert any(e.kind == "ondemand" for e in res.events)
        assert [a["node"] for a in res.actors if "node" in a] == [od.node_id]
        assert {r["node"]: r["usd_per_hour"] for r in res.cost["nodes"]}[od.node_id] == 98.0  # priced on-demand
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_config_gpu_limit_reads_the_launcher_config(tmp_path):
    """--gpus unset on a launcher cluster: the most actors its config allows (global max_workers binds)."""
    import yaml

    from orchestrator.render.pool import config_gpu_limit

    cfg = {"max_workers": 5, "head_node_type": "head",
           "available_node_types": {"head": {"resources": {"CPU": 4, "GPU": 0}, "max_workers": 0},
                                    "gpu_spot": {"resources": {"GPU": 4}, "max_workers": 2},
                                    "gpu_ondemand": {"resources": {"GPU": 1}, "max_workers": 10}}}
    p = tmp_path / "bootstrap.yaml"
    p.write_text(yaml.safe_dump(cfg))
    assert config_gpu_limit(1, str(p)) == 2 * 4 + 3 * 1
    assert config_gpu_limit(2, str(p)) == 2 * 2  # a 1-GPU node cannot hold a 2-GPU actor
    assert config_gpu_limit(1, str(tmp_path / "missing.yaml")) is None
