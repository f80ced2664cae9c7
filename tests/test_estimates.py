"""Learned seconds per clip: a robust statistic, merged safely in the work area, used by plan and the budget,
recorded by a real render."""

from __future__ import annotations

import json
import threading

import media
from orchestrator.plan import estimates
from orchestrator.intake.manifest import load_manifest
from orchestrator.plan.planner import plan_jobs


def _manifest(tmp_path, assets, **extra):
    return media.write_manifest(tmp_path / "m.yaml", [
        {"id": "a", "audio": str(assets["speech4"]), "image": str(assets["image"]), "size": "128*128", **extra}])


def test_one_outlier_job_does_not_move_the_estimate(settings):
    key = "wan-s2v|h100-aws|832x480|steps=default|cfg"
    samples = [{"s": 300.0 + i, "clips": 12, "t": i, "run": "r"} for i in range(9)]
    samples.append({"s": 5000.0, "clips": 12, "t": 99, "run": "r"})  # a throttled card, a cold cache
    estimates.record(settings, {key: samples})
    e = estimates.load(settings).estimate(key, 240.0)
    assert e.source == "measured" and 300 <= e.seconds <= 308 and e.jobs == 10 and e.clips == 120
    assert estimates.load(settings).estimate("other|key", 240.0) == estimates.Estimate(240.0, "default")


def test_merges_keep_every_run_and_only_the_newest_samples(settings):
    key = "draft|local|128x128|steps=default|cfg"

    def run(i):
        estimates.record(settings, {key: [{"s": 1.0 + i, "clips": 1, "t": 1000 + i, "run": f"r{i}"}]})

    threads = [threading.Thread(target=run, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    got = estimates.load(settings).entries[key]
    assert sorted(x["run"] for x in got) == sorted(f"r{i}" for i in range(12))  # no run lost to a race
    estimates.record(settings, {key: [{"s": 9.0, "clips": 1, "t": 5000 + i, "run": "late"}
                                      for i in range(estimates.KEEP)]})
    got = estimates.load(settings).entries[key]
    assert len(got) == estimates.KEEP and {x["run"] for x in got} == {"late"}


def test_a_damaged_table_falls_back_to_defaults_and_is_replaced(settings, tmp_path):
    (tmp_path / "work").mkdir(parents=True, exist_ok=True)
    (tmp_path / "work" / estimates.FILE).write_text("{not json")
    assert estimates.load(settings).entries == {}
    estimates.record(settings, {"k": [{"s": 2.0, "clips": 3, "t": 1, "run": "r"}]})
    assert estimates.load(settings).estimate("k", 1.0).seconds == 2.0


def test_plan_and_budget_use_the_learned_figure(assets, settings, tmp_path, run_cli, capsys):
    from orchestrator.render.chains import Chain
    from policy import Harness

    m = load_manifest(str(_manifest(tmp_path, assets)), None, settings)
    plan, = plan_jobs(m.jobs, settings).plans
    assert plan.expected_clip_source == "default" and plan.expected_clip_s == settings.expected_clip_s("draft")
    estimates.record(settings, {estimates.plan_key(plan, settings): [{"s": 42.0, "clips": 5, "t": 1, "run": "r"}]})
    plan, = plan_jobs(m.jobs, settings).plans
    assert (plan.expected_clip_s, plan.expected_clip_source) == (42.0, "measured")

    assert run_cli("plan", tmp_path / "m.yaml", "--json", "--price", "3.6", "--work", settings.work) == 0
    row, = json.loads(capsys.readouterr().out)["jobs"]
    assert row["clip_s"] == 42.0 and row["clip_s_source"] == "measured"
    assert abs(row["gpu_s"] - 42.0 * row["clips"]) < 1e-9

    # 1 USD per 1,000 GPU-seconds: the default 0.6 s per clip fits a $0.02 budget, the learned 42 s does not
    s = settings.model_copy(update={"budget_usd": 0.02, "price_per_gpu_hour": 3.6})
    sched = Harness(s, settings.work).sched
    assert sched._over_budget(Chain(plan, plan.scenes[0])) is not None
    default = plan.model_copy(update={"expected_clip_s": None})
    assert sched._over_budget(Chain(default, default.scenes[0])) is None


def test_a_render_records_its_clip_times(ray_local, assets, settings, tmp_path):
    from orchestrator.run.runner import render

    res = render(str(_manifest(tmp_path, assets, output=str(tmp_path / "out"))), settings)
    assert res.exit_code == 0
    job = res.jobs["a"]
    m = load_manifest(str(tmp_path / "m.yaml"), None, settings)
    plan, = plan_jobs(m.jobs, settings).plans
    samples = estimates.load(settings).entries[estimates.plan_key(plan, settings)]
    assert [(x["clips"], x["run"]) for x in samples] == [(job.clips_rendered, res.run_id)]
    assert abs(samples[0]["s"] - job.gpu_s / job.clips_rendered) < 1e-3
    assert plan.expected_clip_source == "measured"  # the next plan of the same work area uses it
