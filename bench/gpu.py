"""Benchmark 6 (CUDA only): tiny-weight wan-s2v through the real runner; seconds per clip and GPU idle between clips."""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from bench.common import emit


def cuda_problem() -> str | None:
    """Why this machine cannot run the benchmark, or None."""
    for mod in ("torch", "diffsynth"):
        if importlib.util.find_spec(mod) is None:
            return f"no CUDA: {mod} is not installed (pip install -e '.[wan]' on a CUDA machine)"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA: torch sees no CUDA device on this machine; run bench.gpu on a GPU node"
    return None


class UtilSampler(threading.Thread):
    """nvidia-smi utilisation every 100 ms, when the tool exists (a second opinion on the idle figure)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        exe = shutil.which("nvidia-smi")
        while exe and not self.stop.wait(0.1):
            try:
                out = subprocess.run([exe, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5, check=False).stdout
                self.samples += [int(x) for x in out.split() if x.strip().isdigit()]
            except (OSError, subprocess.SubprocessError):
                return


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__)
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=20.0, help="audio per job")
    ap.add_argument("--size", default="256*256")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    why = cuda_problem()
    if why:
        print(why, file=sys.stderr)
        return emit("gpu", {"skipped": why}, a.out)
    import torch

    from bench.realjobs import (
        media,
        plans_for,  # noqa: F401 - imports the test media generator
        speech_file,
    )
    from orchestrator.runner import render
    from core.settings import Settings
    from pipeline.backends.wan_tiny import make_tiny

    gpus = torch.cuda.device_count()
    with tempfile.TemporaryDirectory(prefix="s2v-bench-gpu-") as tmpd:
        tmp = Path(tmpd)
        weights = make_tiny(tmp / "tiny")
        image = media.presenter(tmp / "p.png")
        jobs = [{"id": f"g{i}", "audio": str(speech_file(tmp / f"a{i}.wav", a.seconds, seed=i)), "seed": i}
                for i in range(a.jobs)]
        m = media.write_manifest(tmp / "gpu.yaml", jobs, {"image": str(image), "size": a.size, "backend": "wan-s2v",
                                                          "steps": a.steps, "model_dir": str(weights),
                                                          "output": str(tmp / "out")})
        settings = Settings(gpus=gpus, work=str(tmp / "work"), cache_dir=tmp / "cache", model_dir=str(weights))
        sampler = UtilSampler()
        sampler.start()
        res = render(str(m), settings)
        sampler.stop.set()
    done = [e for e in res.events if e[1] == "done"]
    subs = [e for e in res.events if e[1] == "submit"]
    span = (max(e[0] for e in done) - min(e[0] for e in subs)) if done else 0.0
    clips = sum(j.clips_rendered for j in res.jobs.values())
    gpu_s = sum(j.gpu_s for j in res.jobs.values())  # Σ backend render seconds: time the GPU had work
    busy = gpu_s / (span * gpus) if span else 0.0
    util = sampler.samples
    return emit("gpu", {"device": torch.cuda.get_device_name(0), "gpus": gpus, "jobs": a.jobs, "clips": clips,
                        "exit_code": res.exit_code, "s_per_clip": gpu_s / max(1, clips), "span_s": span,
                        "backend_busy_fraction": busy, "idle_waiting_fraction": 1 - busy,
                        "nvidia_smi_mean_util": sum(util) / len(util) if util else None,
                        "loads": [i.get("loads") for i in res.actors]}, a.out)


if __name__ == "__main__":
    main()
