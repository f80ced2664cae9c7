"""Planner: frame-exact totals (property-based), cuts inside pauses, quietest-frame fallback, chains, plan CLI."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

import media
from orchestrator.planner import chains_for, plan_job
from orchestrator.manifest import load_manifest
from pipeline import audio
from pipeline.backends import backend_spec
from pipeline.backends.base import BackendSpec, clip_frame_counts

DRAFT = backend_spec("draft")
WAN_LIKE = BackendSpec(name="x", version="0", fps=16, clip_frames=80, first_clip_frames=77)


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(samples=st.integers(min_value=1000, max_value=16000 * 200), max_scene=st.floats(3, 60),
       min_scene=st.floats(0, 2.5), spec=st.sampled_from([DRAFT, WAN_LIKE]), seed=st.integers(0, 2**31 - 1))
def test_frames_are_exact_for_any_length(samples, max_scene, min_scene, spec, seed):
    rng = np.random.default_rng(samples)
    pcm = (0.2 * rng.standard_normal(samples)).astype(np.float32)
    pcm[samples // 3 : samples // 3 + 8000] = 0  # one half-second pause
    a = audio.analyse(pcm, spec.fps, 0.3)
    assert a.frames == round(samples / 16000 * spec.fps)
    cuts = audio.cut_points(a, max_scene, min_scene)
    scenes = chains_for(a.frames, cuts, spec, seed)
    assert sum(s.frames for s in scenes) == a.frames
    assert all(s.frames <= int(max_scene * spec.fps) for s in scenes)
    for s in scenes:
        assert sum(c.frames for c in s.clips) == s.frames
        assert [c.scene_frame_start for c in s.clips] == list(np.cumsum([0] + [c.frames for c in s.clips[:-1]]))
        assert s.clips[0].frames <= spec.first_clip_frames
        assert all(c.frames <= spec.clip_frames for c in s.clips[1:])
    starts = [s.start_frame for s in scenes]
    assert starts == sorted(starts) and starts[0] == 0
    seeds = [c.seed for s in scenes for c in s.clips]
    assert len(set(seeds)) == len(seeds)  # seed + clip index: unique per clip


def test_every_cut_lies_in_a_true_pause():
    segs = [(4.0, 0.6), (5.0, 0.5), (3.0, 0.9), (6.5, 0.45), (2.0, 0.7), (5.0, 0)]
    pcm, true_pauses = media.speech(segs, seed=7)
    a = audio.analyse(pcm, 16, 0.3)
    cuts = audio.cut_points(a, max_scene_s=8, min_scene_s=1)
    assert len(cuts) >= 3
    for c in cuts:
        t = c / 16
        assert any(ps <= t <= pe for ps, pe in a.pauses), (t, a.pauses)
        assert any(ps - 0.05 <= t <= pe + 0.05 for ps, pe in true_pauses), (t, true_pauses)


def test_no_pause_in_range_cuts_at_the_quietest_frame():
    pcm, _ = media.speech([(20.0, 0)], seed=2)
    quiet_at = 9.0
    i = int(quiet_at * 16000)
    pcm[i : i + 1000] *= 0.05  # one quiet frame, far shorter than a pause
    a = audio.analyse(pcm, 16, 0.3)
    assert not a.pauses
    cuts = audio.cut_points(a, max_scene_s=12, min_scene_s=2)
    assert cuts[0] == int(quiet_at * 16)


def test_clip_counts_trim_the_last_clip():
    assert clip_frame_counts(200, DRAFT) == [80, 80, 40]
    assert clip_frame_counts(200, WAN_LIKE) == [77, 80, 43]
    assert clip_frame_counts(80, DRAFT) == [80]
    assert clip_frame_counts(0, DRAFT) == []


def test_plan_job_from_files(assets, settings, tmp_path):
    m = load_manifest(str(media.write_manifest(tmp_path / "m.yaml", [
        {"id": "a", "audio": str(assets["speech13"]), "image": str(assets["image"]), "max_scene_s": 6,
         "size": "160*160"}])))
    p = plan_job(m.jobs[0], settings)
    import wave

    with wave.open(str(assets["speech13"])) as w:
        assert p.frames == round(w.getnframes() / w.getframerate() * 16)
    assert (p.width, p.height) == (160, 160)
    assert len(p.scenes) >= 3 and sum(s.frames for s in p.scenes) == p.frames
    p2 = plan_job(m.jobs[0].model_copy(update={"prompt": "other"}), settings)
    assert p2.key != p.key  # the prompt changes pixels
    p3 = plan_job(m.jobs[0].model_copy(update={"priority": 5, "tags": ("x",)}), settings)
    assert p3.key == p.key  # priority and tags do not


def test_plan_cli_on_a_1000_row_manifest(assets, tmp_path, run_cli, capsys):
    jobs = [{"id": f"lesson-{i:04d}", "audio": str(assets["speech4" if i % 2 else "speech13"]),
             "image": str(assets["image"])} for i in range(1000)]
    loc = media.write_manifest(tmp_path / "big.yaml", jobs, {"size": "320*320"})
    code = run_cli("plan", loc, "--json", "--price", "2.0")
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["total"]["jobs"] == 1000 and len(out["jobs"]) == 1000
    assert out["total"]["clips"] == sum(r["clips"] for r in out["jobs"])
    assert abs(out["total"]["cost_usd"] - out["total"]["gpu_s"] / 3600 * 2.0) < 1e-9
