"""Benchmark 4: plan a 10,000-row manifest, VAD × realtime, stitch a 60-minute job, rerun a finished catalog."""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import emit
from bench.common import media, speech_file


def write_csv(path: Path, rows: int, audios: list[Path], image: Path, out: Path, size: str = "128*128") -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "audio", "image", "prompt", "seed", "size", "output"])
        for i in range(rows):
            w.writerow([f"lesson-{i:05d}", audios[i % len(audios)], image, f"lesson {i}", i, size, out])
    return path


def bench_plan(tmp: Path, rows: int, audios: list[Path], image: Path) -> dict:
    """`s2v plan` in a fresh process: wall time and its peak RSS (ru_maxrss of the waited-for child)."""
    m = write_csv(tmp / "plan.csv", rows, audios, image, tmp / "out")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "plan", str(m), "--json"], capture_output=True, check=False,
                          text=True, env={**os.environ, "S2V_CACHE_DIR": str(tmp / "cache")})
    wall = time.monotonic() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest child so far: this one
    assert proc.returncode == 0, proc.stderr[-2000:]
    total = json.loads(proc.stdout)["total"]
    return {"rows": rows, "distinct_audio_files": len(audios), "wall_s": wall, "peak_rss_mib": peak_kib / 1024,
            "jobs_planned": total["jobs"], "clips": total["clips"]}


def bench_vad(seconds: float) -> dict:
    """pipeline.audio.analyse on one long narration, one thread: VAD + pauses + per-frame energy."""
    from pipeline.audio import analyse, cut_points

    pcm, _ = media.speech([(4.0, 0.6)] * int(seconds / 4.6), seed=11)
    t0 = time.process_time()
    a = analyse(pcm, 16, 0.3)
    cut_points(a, 60.0, 2.0)
    cpu = time.process_time() - t0
    return {"audio_s": a.duration_s, "cpu_s": cpu, "x_realtime": a.duration_s / cpu, "pauses": len(a.pauses)}


def bench_stitch(tmp: Path, clips: int, size: int = 64) -> dict:
    """A 60-minute job from 720 clips: one 80-frame clip encoded once and copied (every clip identical, as the
    worker's fixed encoder settings make them), no re-encode. As in a run, the WAV source's AAC is made once per
    job by a task that overlaps rendering (timed apart: audio_encode_s), so the stitch only copies streams."""
    import numpy as np

    from pipeline.media import EncodeParams, encode_audio_argv, encode_frames, run_ffmpeg
    from pipeline.stitch import stitch

    d = tmp / "stitch"
    d.mkdir()
    frames = np.full((80, size, size, 3), 90, dtype=np.uint8)
    frames[:, : size // 2] = 200
    encode_frames(frames, EncodeParams(16, size, size), d / "c0.mp4")
    paths = [d / "c0.mp4"] + [d / f"c{i}.mp4" for i in range(1, clips)]
    for p in paths[1:]:
        shutil.copyfile(paths[0], p)
    dur = clips * 80 / 16
    t = np.arange(int(dur * 16000)) / 16000
    audio = media.write_wav(d / "audio.wav", (0.2 * np.sin(2 * np.pi * 180 * t)).astype(np.float32))
    t_audio = time.monotonic()
    run_ffmpeg(encode_audio_argv(str(audio), str(d / "audio.m4a")))
    audio_encode_s = time.monotonic() - t_audio
    t0 = time.monotonic()
    res = stitch(paths, str(d / "audio.m4a"), d / "job.mp4", fps=16, expected_frames=clips * 80,
                 expected_audio_s=dur, width=size, height=size, copy_audio=True)
    return {"clips": clips, "video_s": res.video_s, "wall_s": time.monotonic() - t0, "frames": res.frames,
            "mp4_mib": res.video.stat().st_size / 2**20, "video_codec_copy": True, "audio_codec_copy": True,
            "audio_encode_s": audio_encode_s}


def bench_rerun(tmp: Path, rows: int, audios: list[Path], image: Path) -> dict:
    """Rerun of a finished manifest: every job already published with its current key → skipped, no Ray."""
    from orchestrator.intake.manifest import load_manifest
    from orchestrator.plan.planner import plan_jobs
    from orchestrator.deliver.post import post_key
    from orchestrator.deliver.outputs import SIDECAR_SCHEMA, output_uris
    from orchestrator.run.runner import render
    from core.settings import Settings

    out = tmp / "published"
    m = write_csv(tmp / "rerun.csv", rows, audios, image, out)
    settings = Settings(work=str(tmp / "work"), cache_dir=tmp / "cache")
    t0 = time.monotonic()
    plans = plan_jobs(load_manifest(str(m), None, settings).jobs, settings).plans
    out.mkdir()
    for p in plans:  # the cheap publish: what the skip check reads (our sidecar's job and post keys, the MP4)
        u = output_uris(p)
        Path(u["mp4"].key).write_bytes(b"\0")
        Path(u["json"].key).write_text(json.dumps({"schema": SIDECAR_SCHEMA, "id": p.job.id, "job_key": p.key,
                                                   "post": {"key": post_key(p, settings)}}))
    prep = time.monotonic() - t0
    t0 = time.monotonic()
    res = render(str(m), settings)
    wall = time.monotonic() - t0
    st = [j.status for j in res.jobs.values()]
    return {"rows": rows, "prepare_s": prep, "wall_s": wall, "skipped": st.count("skipped"),
            "clips_rendered": sum(j.clips_rendered for j in res.jobs.values()), "exit_code": res.exit_code}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    ap.add_argument("--plan-rows", type=int, default=10000)
    ap.add_argument("--rerun-rows", type=int, default=5000)
    ap.add_argument("--audio-files", type=int, default=20, help="distinct audio files the rows share")
    ap.add_argument("--audio-s", type=float, default=120.0, help="length of each shared audio file")
    ap.add_argument("--vad-s", type=float, default=1800.0)
    ap.add_argument("--stitch-clips", type=int, default=720)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="s2v-bench-scale-") as tmpd:
        tmp = Path(tmpd)
        image = media.presenter(tmp / "presenter.png")
        audios = [speech_file(tmp / f"a{i}.wav", a.audio_s * (0.5 + i / max(1, a.audio_files)), seed=100 + i)
                  for i in range(a.audio_files)]
        res = {"plan": bench_plan(tmp, a.plan_rows, audios, image)}  # first: its child's RSS must be the peak
        res["vad"] = bench_vad(a.vad_s)
        res["stitch"] = bench_stitch(tmp, a.stitch_clips)
        res["rerun"] = bench_rerun(tmp, a.rerun_rows, audios, image)
    return emit("scale", res, a.out)


if __name__ == "__main__":
    main()
