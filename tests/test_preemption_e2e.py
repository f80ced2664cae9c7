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
from node_imds import NodeImds
from orchestrator.run.runner import render
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
        assert any(e.kind == "preempted" for e in res.events)
        clips = collections.Counter()
        for a in res.actors:
            clips[a.get("node")] += a.get("clips", 0)
        assert clips[ondemand.node_id] > 0  # after the preemption, new work went to the on-demand node
        # the actor under notice left the run (its replacement was asked for at the notice)
        assert all(a.get("retired") for a in res.actors if a.get("node") == spot[0].node_id)
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


JOBS = 10


def test_interruption_gets_a_replacement_warning_starts_no_chain_and_both_clear(tmp_path, assets, monkeypatch):
    """Issue 10 item 8 on three spot nodes. Node A gets an AWS interruption notice, node B a rebalance
    recommendation (an early warning), both mid-chain. A refuses its next clip and the run asks the autoscaler for
    a replacement GPU at once (4 bundles while A drains); B finishes its chain and takes no new one while warned.
    Both notices then pass with the nodes alive: A and B take chains again, the surplus replacement is given back.
    Nothing is lost beyond the clip A refused, and no job counts an application error."""
    import ray
    from ray.cluster_utils import Cluster

    import orchestrator.render.pool as pool_mod
    from autoscaler import requested, wait_for

    pcm, _ = media.speech([(19.0, 0)], seed=13)  # a 4-clip chain per job; 3 run, 7 wait
    wav = media.write_wav(tmp_path / "long.wav", pcm)
    m = media.write_manifest(tmp_path / "m.yaml", [{"id": f"j{i}", "audio": str(wav), "seed": i} for i in range(JOBS)],
                             {"image": str(assets["image"]), "size": "64*64", "backend": "faults", "max_scene_s": 60,
                              "output": str(tmp_path / "out")})
    imds = NodeImds()
    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0,
                                                            "node_ip_address": "127.0.0.1",
                                                            "include_dashboard": False})
    try:
        for _ in range(3):
            cluster.add_node(num_cpus=0, num_gpus=1, node_ip_address="127.0.0.1")
        ray.init(address=cluster.address, log_to_driver=False)
        monkeypatch.setattr(pool_mod, "BOOTSTRAP_CONFIG", str(tmp_path / "none.yaml"))  # no launcher config
        go, f = tmp_path / "go", tmp_path / "f"
        s = Settings(address=cluster.address, gpus=3, work=str(tmp_path / "w"), faults_dir=str(f),
                     preemption_sources="aws", aws_imds_url=imds.url, preemption_poll_s=0.2,
                     preemption_clear_grace_s=1.0,
                     faults=[{"action": "wait", "clip": 1, "file": str(go)}, {"action": "slow", "seconds": 0.3}])
        starts = lambda: [n.split(".") for n in os.listdir(f / "starts")] if (f / "starts").exists() else []  # noqa
        result = {}
        th = threading.Thread(target=lambda: result.setdefault("r", render(str(m), s)))
        th.start()
        at_gate = wait_for(lambda: (lambda g: g if len(g) == 3 else None)(
            {pid: job for job, _, c, pid, _ in starts() if c == "c1"}), 120, "three chains at clip 1")
        node_of = {pid: (f / "nodes" / pid).read_text() for pid in at_gate}
        (pa, ja), (pb, jb) = sorted(at_gate.items())[:2]
        a, b = node_of[pa], node_of[pb]
        # the node outlives this notice (the interruption never comes): it clears 2 s + the 1 s grace later, while
        # the slowed chains still queue (infra/preemption: an interruption clears once its node outlived it)
        imds.action[a] = {"action": "terminate", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                       time.gmtime(time.time() + 2))}
        imds.rebalance[b] = {"noticeTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        wait_for(lambda: {(a, "instance-action"), (b, "rebalance")} <= imds.served, 30, "both nodes' watchers")
        time.sleep(0.3)  # one more poll each: the watcher has taken what it read
        go.touch()
        wait_for(lambda: len(requested()) == 4, 60, "a replacement GPU asked for while A drains")
        done = lambda job: sum(1 for x in starts() if x[0] == job)  # noqa: E731
        # B finished its chain, and A's chain has gone on elsewhere for a while: B sat idle, warned, with work queued
        # (7 chains wait, so work is still queued when each notice passes, however the clears and C's progress
        # interleave on a loaded machine: with 4, C could drain the queue first and A was retired as surplus)
        wait_for(lambda: done(jb) >= 4 and done(ja) >= 3, 120, "B's chain done and A's chain resumed elsewhere")
        busy_b = {x[3] for x in starts() if x[0] != jb}
        del imds.action[a], imds.rebalance[b]
        th.join(timeout=300)
        assert not th.is_alive()
        res = result["r"]
        assert res.exit_code == 0, {j: r.reason for j, r in res.jobs.items()}
        ev = res.events
        slot = {e.node: e.slot for e in ev if e.kind == "ready"}
        sa, sb = slot[a], slot[b]
        t_draining = next(e.t for e in ev if e.kind == "draining" and e.slot == sa)
        t_cleared_a = next(e.t for e in ev if e.kind == "cleared" and e.slot == sa)
        t_warned = next(e.t for e in ev if e.kind == "warned" and e.slot == sb)
        t_cleared_b = next(e.t for e in ev if e.kind == "cleared" and e.slot == sb)
        assigns = lambda sl, t0, t1: [e for e in ev if e.kind == "assign" and e.slot == sl and t0 < e.t < t1]  # noqa
        assert t_draining < t_cleared_a and assigns(sa, t_cleared_a, 1e12)  # usable again once the notice passed
        assert t_warned < t_cleared_b and not assigns(sb, t_warned, t_cleared_b) and assigns(sb, t_cleared_b, 1e12)
        assert pb not in busy_b  # B's process rendered nothing but its own chain while warned
        assert any(e.kind == "retired" and "surplus" in e.detail for e in ev)  # the replacement went again
        assert requested() == []
        redone = collections.Counter(n.rsplit(".", 2)[0] for n in os.listdir(f / "finished"))
        assert sum(n - 1 for n in redone.values()) == 0  # A refused before rendering: nothing done twice
        assert sum(j.preemptions for j in res.jobs.values()) >= 1 and all(j.retries == 0 for j in res.jobs.values())
        assert len(list((tmp_path / "out").glob("*.mp4"))) == JOBS
    finally:
        ray.shutdown()
        cluster.shutdown()
        imds.close()
