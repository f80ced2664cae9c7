"""Benchmark: post-step seconds per minute of video for a 720p30 + 480p30 + HLS ladder, on CPU (no GPU, no clips).

A stitched master of the given length (the draft backend's real clips, 832×480 at 16 fps) is made once; then the
real post step (orchestrator.deliver.post.deliver) runs on it: captions track + VTT, loudness scan, MP4 720p30, MP4
480p30, HLS 720p30 + 480p30 (fMP4 segments) with a WebVTT subtitle group."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.common import emit

LADDER = [{"name": "720p", "height": 720, "fps": 30}, {"name": "480p", "height": 480, "fps": 30},
          {"name": "hls720", "height": 720, "fps": 30, "format": "hls"},
          {"name": "hls480", "height": 480, "fps": 30, "format": "hls"}]


def _master(d: Path, seconds: float, settings):
    """A real stitched master: plan the job, render its clips with the draft backend, stitch them."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import media  # the test media helpers: speech-like audio with pauses, a presenter photo

    from orchestrator.intake.manifest import JobSpec
    from orchestrator.plan.planner import plan_job
    from pipeline.backends import backend_class
    from pipeline.backends.base import ClipRequest, SceneInput
    from pipeline.media import EncodeParams, encode_frames
    from pipeline.stitch import stitch

    n = max(1, int(seconds // 5))
    pcm, _ = media.speech([(4.4, 0.6)] * n, seed=5)
    audio = media.write_wav(d / "narration.wav", pcm)
    from PIL import Image
    from skimage import data

    image = d / "presenter.png"  # landscape, so the master is 832×480 like a real Wan job
    Image.fromarray(data.astronaut()).resize((1040, 600)).save(image)
    captions = d / "captions.srt"
    captions.write_text("".join(f"{i + 1}\n00:{i * 5 // 60:02d}:{i * 5 % 60:02d},200 --> "
                                f"00:{i * 5 // 60:02d}:{i * 5 % 60 + 4:02d},300\nSentence number {i + 1} of the "
                                f"lesson,\nshown for four seconds.\n\n" for i in range(n)))
    job = JobSpec(id="bench", audio=str(audio), image=str(image), size="832*480", captions=str(captions),
                  renditions=LADDER, output=str(d / "out"), max_scene_s=600, source="bench")
    plan = plan_job(job, settings)
    backend = backend_class("draft")(settings)
    backend.load()
    clips = []
    for s in plan.scenes:
        ctx = backend.prepare_scene(SceneInput(job_id=job.id, job_key=plan.key, scene_index=s.index,
                                               image_path=str(image), width=plan.width, height=plan.height,
                                               start_frame=s.start_frame, frames=s.frames,
                                               clip_frames=tuple(c.frames for c in s.clips), audio=pcm))
        tail = None
        for c in s.clips:
            out = backend.render_clip(ctx, ClipRequest(index=c.index, scene_frame_start=c.scene_frame_start,
                                                       frames=c.frames, job_clip_index=c.job_clip_index,
                                                       seed=c.seed), tail)
            tail = out.tail
            path = d / f"clip-{len(clips):04d}.mp4"
            encode_frames(out.frames, EncodeParams(plan.fps, plan.width, plan.height), path)
            clips.append(path)
    res = stitch(clips, str(audio), d / "master.mp4", fps=plan.fps, expected_frames=plan.frames,
                 expected_audio_s=plan.duration_s, width=plan.width, height=plan.height)
    return plan, res.video


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.post", description=__doc__)
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the master")
    ap.add_argument("--preset", default=None, help="x264 preset of the renditions (default: the setting's)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    from core.settings import Settings
    from orchestrator.deliver.post import deliver

    with tempfile.TemporaryDirectory(prefix="s2v-bench-post-") as tmp:
        d = Path(tmp)
        settings = Settings(work=str(d / "work"), cache_dir=d / "cache",
                            **({"rendition_preset": a.preset} if a.preset else {}))
        t0 = time.monotonic()
        plan, master = _master(d, a.seconds, settings)
        t_master = time.monotonic() - t0
        post = d / "post"
        post.mkdir()
        t1 = time.monotonic()
        cpu0 = time.process_time()
        import resource

        child0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = deliver(plan, settings, str(d / "work"), master, post)
        wall = time.monotonic() - t1
        child1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (time.process_time() - cpu0) + (child1.ru_utime - child0.ru_utime) + (child1.ru_stime - child0.ru_stime)
        minutes = plan.duration_s / 60
        rows = [{"name": r["name"], "format": r["format"], "size": f"{r['width']}x{r['height']}", "fps": r["fps"],
                 "kbps": r["kbps"], "bytes": r["bytes"]} for r in out.meta["renditions"]]
    return emit("post", {
        "master": {"size": f"{plan.width}x{plan.height}", "fps": plan.fps, "duration_s": round(plan.duration_s, 3),
                   "made_in_s": round(t_master, 2)},
        "ladder": rows, "preset": settings.rendition_preset, "files_published": len(out.files) + 1,
        "post_wall_s": round(wall, 2), "post_cpu_s": round(cpu, 2),
        "wall_s_per_video_minute": round(wall / minutes, 2), "cpu_s_per_video_minute": round(cpu / minutes, 2),
    }, a.out)


if __name__ == "__main__":
    main()
