"""Tiny runs of every benchmark in bench/, so the benchmarks keep working; structure is checked, never timings."""

from __future__ import annotations

import pytest


def test_timed_backend_sleeps_per_job_and_returns_frame_exact_clips():
    import numpy as np

    from pipeline.backends import backend_class
    from pipeline.backends.base import ClipRequest, SceneInput
    from pipeline.backends.drills.timed import SPREAD, clip_factor

    b = backend_class("timed")(None)
    b.load()
    scene = SceneInput(job_id="j", job_key="k", scene_index=0, image_path="/none", width=32, height=16,
                       start_frame=0, frames=90, clip_frames=(80, 10), audio=np.zeros(10))
    out = b.render_clip(scene, ClipRequest(index=1, scene_frame_start=80, frames=10, job_clip_index=1, seed=0), None)
    assert out.frames.shape == (10, 16, 32, 3) and out.frames.dtype == np.uint8
    assert clip_factor("j") == clip_factor("j") and SPREAD[0] <= clip_factor("other") <= SPREAD[1]


def test_scheduling_bench_reports_efficiencies_of_both_orders(ray_local):
    from bench import scheduling

    r = scheduling.main(["--jobs", "12", "--gpus", "2", "--clip-s", "0.004"])
    ch, fifo = r["chains_longest_first"], r["fifo_whole_jobs"]
    assert ch["clips_done"] == r["catalog"]["clips"] and ch["failed_jobs"] == 0
    assert r["bound"]["bound_s"] >= r["bound"]["longest_chain_s"] > 0
    for order in (ch, fifo, *r["simulated_zero_overhead"].values()):
        assert 0 < order["efficiency"] <= 1.0 + 1e-6  # nothing beats the lower bound
    assert r["chains_vs_fifo_speedup"] > 0 and "cpus" in r["machine"]


def test_faults_bench_counts_kills_and_redone_clips(ray_local):
    from bench import faults

    r = faults.main(["--jobs", "6", "--gpus", "2", "--clip-s", "0.01", "--kill-every-s", "0.8"])
    assert r["all_clips_done"], r["faulted"]
    assert r["baseline"]["render_starts"] == r["baseline"]["distinct_clips"]  # no faults, nothing redone
    assert r["faulted"]["kills"] >= 1 and r["clips_redone_per_fault"] >= 0


def test_pool_bench_loads_once_per_actor_against_once_per_job(ray_local):
    from bench import pool

    r = pool.main(["--gpus", "2", "--clip-s", "0.03", "--lecture-min", "0.4", "--lengths", "5,9,3", "--steps", "4"])
    lec, cat = r["lecture"]["4_steps"], r["catalog"]["4_steps"]
    assert lec["pool"]["loads"] == 2 and lec["one_process_alone"]["loads"] == 1
    assert cat["pool"]["loads"] == 2 and cat["one_process_per_job"]["loads"] == 3
    assert cat["pool"]["clips"] == cat["clips"] == cat["one_process_per_job"]["clips"] and cat["speedup"] > 0
    assert abs(lec["job_fixed_s_scaled"] / lec["clip_s_scaled"] - 6.0) < 1e-9  # 120 s load ÷ 20 s clip


def test_overheads_bench_measures_a_steady_chain(ray_local):
    from bench import overheads

    r = overheads.main(["--clip-s", "0.05", "--seconds", "16", "--sizes", "64*64:128"])
    row = r["rows"][0]
    assert row["loads"] == 1 and row["clips"] == 4 and row["size"] == "64x64"
    assert row["render_s"] >= 0.05 and row["overhead_at_60s_clip"] >= 0


def test_scale_bench_plans_stitches_and_skips_a_finished_catalog():
    from bench import scale

    r = scale.main(["--plan-rows", "40", "--rerun-rows", "30", "--audio-files", "2", "--audio-s", "6",
                    "--vad-s", "20", "--stitch-clips", "6"])
    assert r["plan"]["jobs_planned"] == 40 and r["plan"]["peak_rss_mib"] > 0
    assert r["vad"]["x_realtime"] > 0 and r["vad"]["pauses"] >= 3
    assert r["stitch"]["frames"] == 6 * 80
    assert r["rerun"]["skipped"] == 30 and r["rerun"]["clips_rendered"] == 0 and r["rerun"]["exit_code"] == 0


def test_gpu_bench_says_no_cuda_without_a_gpu(capsys):
    from bench import gpu

    if gpu.cuda_problem() is None:
        pytest.skip("a CUDA machine runs the real benchmark, not this smoke")
    r = gpu.main([])
    assert r["skipped"].startswith("no CUDA")
    assert "no CUDA" in capsys.readouterr().err


def test_post_bench_times_the_delivery_ladder():
    from bench import post

    r = post.main(["--seconds", "5", "--preset", "ultrafast"])
    assert [x["name"] for x in r["ladder"]] == ["720p", "480p", "hls720", "hls480"]
    assert r["ladder"][0]["size"].endswith("x720") and r["ladder"][1]["fps"] == 30
    assert r["post_wall_s"] > 0 and r["wall_s_per_video_minute"] > 0 and r["files_published"] > 4
