"""Benchmark 6 (CUDA only): tiny-weight wan-s2v at the real size, 40 and a few steps: s/clip, GPU idle, peak memory."""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import emit

REAL_W, REAL_H = 832, 480  # Wan 2.2 S2V at 480p: 81-frame clips (80 new frames) of this size


def cuda_problem() -> str | None:
    """Why this machine cannot run the benchmark, or None."""
    for mod in ("torch", "diffsynth"):
        if importlib.util.find_spec(mod) is None:
            return f"no CUDA: {mod} is not installed (pip install -e '.[wan]' on a CUDA machine)"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA: torch sees no CUDA device on this machine; run bench.gpu on a GPU node"
    return None


class SmiSampler(threading.Thread):
    """nvidia-smi utilisation and memory every 100 ms, when the tool exists (the actors' memory is in other
    processes, where torch's own counters cannot be read from here)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.util: list[int] = []
        self.mem_mib: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        exe = shutil.which("nvidia-smi")
        while exe and not self.stop.wait(0.1):
            try:
                out = subprocess.run([exe, "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5, check=False).stdout
            except (OSError, subprocess.SubprocessError):
                return
            for line in out.splitlines():
                parts = [p.strip() for p in line.split(",")]
                if len(parts) == 2 and all(p.isdigit() for p in parts):
                    self.util.append(int(parts[0]))
                    self.mem_mib.append(int(parts[1]))


def direct(weights: Path, image: Path, steps: int, clips: int) -> dict:
    """One chain rendered by the backend in this process: seconds per clip (synchronised), the host time between
    two clips (tail hand-over; the GPU has no work then), peak torch memory, and whether a resume from the
    checkpointed tail gives the same bf16 frames."""
    import numpy as np
    import torch

    from pipeline.backends.base import ClipRequest, SceneInput
    from pipeline.backends.wan_s2v import WanS2VBackend

    b = WanS2VBackend(model_dir=str(weights))
    t0 = time.perf_counter()
    b.load("cuda:0")
    load_s = time.perf_counter() - t0
    counts = [77] + [80] * (clips - 1)
    rng = np.random.default_rng(0)
    scene = SceneInput(job_id="bench", job_key="bench", scene_index=0, image_path=str(image), seed=1,
                       width=REAL_W, height=REAL_H, start_frame=0, frames=sum(counts), clip_frames=tuple(counts),
                       audio=(0.1 * rng.standard_normal(sum(counts) * 1000)).astype(np.float32), steps=steps)
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    ctx = b.prepare_scene(scene)
    torch.cuda.synchronize()
    prepare_s = time.perf_counter() - t0
    outs, render_s, gaps, tails = [], [], [], []
    last_end = None
    for i, n in enumerate(counts):
        start = time.perf_counter()
        if last_end is not None:
            gaps.append(start - last_end)
        req = ClipRequest(index=i, scene_frame_start=sum(counts[:i]), frames=n, job_clip_index=i, seed=1 + i)
        out = b.render_clip(ctx, req, outs[-1].tail if outs else None)
        torch.cuda.synchronize()
        last_end = time.perf_counter()
        render_s.append(last_end - start)
        outs.append(out)
        tails.append(out.tail.copy())
    peak = torch.cuda.max_memory_allocated() / 2**20
    again = b.render_clip(ctx, ClipRequest(index=1, scene_frame_start=77, frames=80, job_clip_index=1, seed=2),
                          tails[0]) if clips > 1 else outs[0]
    diff = int(np.abs(again.frames.astype(int) - outs[1 if clips > 1 else 0].frames).max())
    b.unload()
    return {"steps": steps, "size": f"{REAL_W}x{REAL_H}", "clips": clips, "load_s": round(load_s, 3),
            "prepare_scene_s": round(prepare_s, 3), "s_per_clip": [round(s, 3) for s in render_s],
            "s_per_clip_mean": round(sum(render_s[1:] or render_s) / len(render_s[1:] or render_s), 3),
            "host_gap_s_mean": round(sum(gaps) / len(gaps), 4) if gaps else None,
            "peak_torch_mib": round(peak), "resume_max_abs_diff": diff}


def through_runner(tmp: Path, weights: Path, image: Path, steps: int, jobs: int, seconds: float, gpus: int) -> dict:
    """Jobs through the real runner (actors, checkpoints, stitch): the share of the span the GPUs were idle."""
    from bench.common import media, speech_file
    from core.settings import Settings
    from orchestrator.run.runner import render

    d = tmp / f"runner-{steps}"
    specs = [{"id": f"g{i}", "audio": str(speech_file(d / f"a{i}.wav", seconds, seed=i)), "seed": i}
             for i in range(jobs)]
    m = media.write_manifest(d / "gpu.yaml", specs, {"image": str(image), "size": f"{REAL_W}*{REAL_H}",
                                                     "backend": "wan-s2v", "steps": steps, "model_dir": str(weights),
                                                     "output": str(d / "out")})
    settings = Settings(gpus=gpus, work=str(d / "work"), cache_dir=d / "cache", model_dir=str(weights))
    smi = SmiSampler()
    smi.start()
    res = render(str(m), settings)
    smi.stop.set()
    done = [e for e in res.events if e.kind == "done"]
    subs = [e for e in res.events if e.kind == "submit"]
    span = (max(e.t for e in done) - min(e.t for e in subs)) if done else 0.0
    clips = sum(j.clips_rendered for j in res.jobs.values())
    gpu_s = sum(j.gpu_s for j in res.jobs.values())  # Σ backend render seconds: time the GPUs had work
    busy = gpu_s / (span * gpus) if span else 0.0
    return {"steps": steps, "jobs": jobs, "clips": clips, "exit_code": res.exit_code, "span_s": round(span, 3),
            "s_per_clip": round(gpu_s / max(1, clips), 3), "gpu_idle_fraction": round(1 - busy, 4),
            "nvidia_smi_mean_util": round(sum(smi.util) / len(smi.util), 1) if smi.util else None,
            "nvidia_smi_peak_mib": max(smi.mem_mib) if smi.mem_mib else None,
            "loads": [i.get("loads") for i in res.actors]}


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__)
    ap.add_argument("--steps", default="40,4", help="comma list of step counts (40 = official, 4 = distilled)")
    ap.add_argument("--clips", type=int, default=3, help="clips in the direct chain")
    ap.add_argument("--jobs", type=int, default=2, help="jobs through the runner per step count")
    ap.add_argument("--seconds", type=float, default=15.0, help="audio per runner job")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    why = cuda_problem()
    if why:
        print(why, file=sys.stderr)
        return emit("gpu", {"skipped": why}, a.out)
    import torch
    from PIL import Image
    from skimage import data

    from pipeline.backends.wan_tiny import make_tiny

    steps = [int(s) for s in a.steps.split(",") if s.strip()]
    gpus = torch.cuda.device_count()
    with tempfile.TemporaryDirectory(prefix="s2v-bench-gpu-") as tmpd:
        tmp = Path(tmpd)
        weights = make_tiny(tmp / "tiny")
        image = tmp / "presenter.png"  # large enough that the real 832x480 size is not capped by "never upscale"
        Image.fromarray(data.astronaut()).resize((1280, 1280)).crop((0, 280, 1280, 1000)).save(image)
        result = {"device": torch.cuda.get_device_name(0), "gpus": gpus,
                  "direct": [direct(weights, image, s, a.clips) for s in steps],
                  "runner": [through_runner(tmp, weights, image, s, a.jobs, a.seconds, gpus) for s in steps]}
    return emit("gpu", result, a.out)


if __name__ == "__main__":
    main()
