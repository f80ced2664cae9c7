"""Benchmark 7: frames rendered and thrown away at scene ends, planned by the real planner on real speech files."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.common import emit

ROOT = Path(__file__).resolve().parents[1]
LESSONS = [ROOT / "manifests" / "media" / f for f in ("lesson1.m4a", "lesson2.mp3", "lesson3.flac")]


def trimmed(plan, spec) -> int:
    """Kept-frame capacity of every scene's clips minus its frames (computed here, not by the planner, so the
    same bench measures planners from before and after the change)."""
    return sum(spec.first_clip_frames + (len(s.clips) - 1) * spec.clip_frames - s.frames for s in plan.scenes)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.waste", description=__doc__)
    ap.add_argument("audio", nargs="*", help="audio files (default: the example lessons in manifests/media)")
    ap.add_argument("--backend", default="wan-s2v", help="whose clip sizes count (wan-s2v: 77, 80, 80, …)")
    ap.add_argument("--min-pause", type=float, default=None, help="min_pause_s (default: the manifest default)")
    ap.add_argument("--max-scene", type=float, default=None, help="max_scene_s (default: the manifest default)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    import media

    from core.settings import Settings
    from orchestrator.intake.manifest import load_manifest
    from orchestrator.plan.planner import plan_jobs
    from pipeline.backends import backend_spec

    spec = backend_spec(a.backend)
    files = [Path(f).resolve() for f in a.audio] or LESSONS
    with tempfile.TemporaryDirectory(prefix="s2v-bench-waste-") as t:
        image = media.presenter(Path(t) / "presenter.png")
        policy = {k: v for k, v in (("min_pause_s", a.min_pause), ("max_scene_s", a.max_scene)) if v is not None}
        jobs = [{"id": f.stem, "audio": str(f), **policy} for f in files]
        m = media.write_manifest(Path(t) / "m.yaml", jobs, {"image": str(image), "backend": a.backend,
                                                            "output": str(Path(t) / "out")})
        settings = Settings(work=str(Path(t) / "work"), cache_dir=Path(t) / "cache")
        res = plan_jobs(load_manifest(str(m), None, settings).jobs, settings)
        assert not res.failed, res.problems
    rows = []
    for p in res.plans:
        tr = trimmed(p, spec)
        # one scene cannot do better than ceil((frames + lead-in) / clip) clips: what is left is unavoidable
        floor = -(-(p.frames + (spec.clip_frames - spec.first_clip_frames) * len(p.scenes)) // spec.clip_frames)
        rows.append({"id": p.job.id, "duration_s": round(p.duration_s, 2), "scenes": len(p.scenes),
                     "clips": p.clips, "clips_floor_at_these_scenes": floor, "trimmed_frames": tr,
                     "rendered_frames": p.clips * spec.clip_frames,
                     "trimmed_share": round(tr / (p.clips * spec.clip_frames), 5), "min_pause_s": p.job.min_pause_s,
                     "max_scene_s": p.job.max_scene_s})
    tot = {k: sum(r[k] for r in rows) for k in ("scenes", "clips", "trimmed_frames", "rendered_frames")}
    tot["trimmed_share"] = round(tot["trimmed_frames"] / tot["rendered_frames"], 5)
    return emit("waste", {"backend": a.backend, "jobs": rows, "total": tot}, a.out)


if __name__ == "__main__":
    main()
