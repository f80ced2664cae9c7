"""The render actor on a real local Ray (2 logical GPUs on this CPU machine): its checkpoint protocol (a clip counts
once its marker exists), the one tail it holds, and the CUDA policy (never a CPU render where a GPU was billed)."""

from __future__ import annotations

from pathlib import Path

import pytest

import media


@pytest.fixture(scope="module")
def plans(tmp_path_factory, assets):
    """Two jobs with a 3-clip chain each (faults backend = draft frames, deterministic)."""
    from core.settings import Settings
    from orchestrator.intake.manifest import load_manifest
    from orchestrator.plan.planner import plan_jobs

    d = tmp_path_factory.mktemp("worker")
    pcm, _ = media.speech([(12.0, 0)], seed=21)
    wav = media.write_wav(d / "a.wav", pcm)
    m = media.write_manifest(d / "m.yaml", [{"id": "a", "audio": str(wav), "seed": 1},
                                            {"id": "b", "audio": str(wav), "seed": 2}],
                             {"image": str(assets["image"]), "size": "64*64", "backend": "faults",
                              "max_scene_s": 30, "output": str(d / "out")})
    s = Settings(work=str(d / "work"), faults_dir=str(d / "faults"))
    res = plan_jobs(load_manifest(str(m), None, s).jobs, s)
    assert not res.failed and all(len(p.scenes) == 1 and len(p.scenes[0].clips) == 3 for p in res.plans)
    return {p.job.id: p for p in res.plans}


def _actor(settings, backends=("faults",)):
    import ray

    from orchestrator.render.worker import RenderWorker

    return ray.remote(RenderWorker).options(num_gpus=1, num_cpus=0, max_restarts=0).remote(settings, backends)


def _markers(work: Path, plan) -> set[int]:
    return {int(p.name[5:9]) for p in (work / "jobs" / plan.key / "scene-0000").glob("clip-*.done.json")}


def test_checkpoint_protocol_and_one_tail_per_actor(ray_local, plans, settings, tmp_path):
    """Issue 11 items 1-2: with `more` a clip's checkpoint lands during the next call, which reports it saved;
    without, before returning. The actor holds one tail: the chain it works on, freed when another chain comes,
    when released, and after the last clip."""
    import ray

    s = settings.model_copy(update={"faults_dir": str(tmp_path / "f")})
    work = Path(s.work)
    a, b = plans["a"], plans["b"]
    w = _actor(s)
    call = lambda p, ci, **kw: ray.get(w.render_clip.remote(p, 0, ci, s.work, **kw), timeout=120)  # noqa: E731
    info = lambda: ray.get(w.info.remote(), timeout=60)  # noqa: E731

    r0 = call(a, 0, more=True)
    assert r0["saved"] == [] and info()["tails"] == 1  # clip 0's checkpoint is on its way, not counted yet
    r1 = call(a, 1, more=True)
    assert r1["saved"] == [["a", 0, 0]] and 0 in _markers(work, a)  # reported once its marker exists
    assert info()["tails"] == 1  # clip 1's tail replaced clip 0's
    rb = call(b, 0, more=True)  # chain a moved away: its tail goes
    assert rb["saved"] == [["a", 0, 1]] and info()["tails"] == 1
    assert ray.get(w.release.remote(), timeout=60) == [["b", 0, 0]]  # b left too: its checkpoint lands, tail freed
    assert info()["tails"] == 0 and _markers(work, b) == {0}
    r2 = call(a, 2, more=True)  # a's tail comes back from its checkpoint; the last clip saves before returning
    assert r2["saved"] == [["a", 0, 2]] and _markers(work, a) == {0, 1, 2}
    assert info()["tails"] == 0
    rb1 = call(b, 1)  # no next clip queued: saved before returning
    assert rb1["saved"] == [["b", 0, 1]] and info()["tails"] == 1
    ray.kill(w)


def test_cuda_policy():
    from core.settings import Settings
    from orchestrator.render.cuda import cuda_policy

    local, cluster = Settings(), Settings(address="auto")
    assert cuda_policy(local, needs_cuda=True) == "prefer"  # logical GPUs on a CPU machine: tests, demos
    assert cuda_policy(cluster, needs_cuda=True) == "require"  # a billed GPU
    assert cuda_policy(cluster, needs_cuda=False) == "prefer"
    assert cuda_policy(cluster.model_copy(update={"cuda": "off"}), needs_cuda=True) == "off"
    assert cuda_policy(local.model_copy(update={"cuda": "require"}), needs_cuda=True) == "require"


def test_wan_actor_without_cuda_fails_with_the_reason_and_the_run_does_not_wait(ray_local, assets, settings,
                                                                                tmp_path):
    """Issue 10 item 1: Ray granted a (logical) GPU, torch here is a CPU build. With cuda=require (what `auto`
    means on a cluster) a wan-s2v actor refuses to start and says why; the run fails its jobs at once with that
    reason instead of rendering on CPU or waiting for a worker. cuda=auto on the embedded Ray still loads on CPU."""
    import ray

    from orchestrator.run.runner import render

    auto = _actor(settings, ("wan-s2v",))
    assert ray.get(auto.ping.remote(), timeout=120)["node"]  # auto, no cluster: CPU is fine
    ray.kill(auto)
    s = settings.model_copy(update={"cuda": "require"})
    m = media.write_manifest(tmp_path / "m.yaml", [{"id": "w", "audio": str(assets["speech4"])}],
                             {"image": str(assets["image"]), "size": "64*64", "backend": "wan-s2v",
                              "output": str(tmp_path / "out")})
    res = render(str(m), s)
    assert res.exit_code == 1
    job = res.jobs["w"]
    assert job.status == "failed" and job.clips_rendered == 0
    assert "needs a working CUDA GPU" in job.reason and "CPU-only build" in job.reason
    assert any(e.kind == "broken" for e in res.events)
