"""Fault-injecting backend (like a stub broker): the draft renderer plus switches to fail, hang, die, emit NaN or crawl.

Rules come from settings.faults, e.g.
  [{"action": "fail", "job": "lesson-2", "times": 0},              # always fail that job's clips
   {"action": "kill", "job": "*", "scene": 0, "clip": 2, "times": 1},  # kill the actor process once
   {"action": "slow", "seconds": 0.5},                              # every clip takes ≥ 0.5 s
   {"action": "fail", "gpu": 1},                                    # a bad card: fails whatever it renders
   {"action": "wan_tail"}]                                          # tails shaped and valued like Wan's
times = how often the rule fires across all processes and runs (0 = every time); the count lives in
settings.faults_dir (files created with O_EXCL), so "once" means once even after the actor restarts."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from core.errors import RenderError
from pipeline.backends.base import BackendSpec, ClipOutput, ClipRequest
from pipeline.backends.draft import DraftBackend

ACTIONS = ("fail", "hang", "kill", "nan", "slow", "black", "wan_tail")
WAN_TAIL_FRAMES = 73


def wan_shaped_tail(frames: np.ndarray, state: np.ndarray, seed: int) -> np.ndarray:
    """What a Wan 14B clip hands its successor, made cheaply: float32 (1,3,73,H,W) in [-1,1] from the clip's last 73
    frames, with sub-level detail (decoded video is not quantised to 8 bits) and rounded to bf16 as a bf16 run's
    activations are. The draft's chain state (2 values) rides in the first two elements, so chains still chain."""
    idx = np.clip(np.arange(len(frames) - WAN_TAIL_FRAMES, len(frames)), 0, len(frames) - 1)
    x = np.empty((1, 3, WAN_TAIL_FRAMES, *frames.shape[1:3]), dtype=np.float32)
    rng = np.random.default_rng(seed)
    for c in range(3):  # a channel at a time: one tail-sized buffer, not three
        ch = x[0, c]
        ch[:] = frames[idx, :, :, c]
        ch += rng.random(ch.shape, dtype=np.float32) - 0.5
        ch *= 1 / 127.5
        ch -= 1.0
        np.clip(ch, -1.0, 1.0, out=ch)
    u = x.view(np.uint32)  # round to nearest even bf16: keep the high 16 bits
    u += 0x7FFF + ((u >> 16) & 1)
    u &= 0xFFFF0000
    x[0, 0, 0, 0, :2] = np.asarray(state, dtype=np.float32)[:2]
    return x


class InjectedFault(RenderError):
    """An application error injected on purpose."""


class FaultBackend(DraftBackend):
    spec = BackendSpec(name="faults", version="1", fps=16, clip_frames=80, first_clip_frames=80, tail_frames=1,
                       size_divisor=16, id_in_pixels=True)

    def load(self, device: str = "cpu") -> None:
        super().load(device)
        rules = getattr(self.settings, "faults", None) or []
        for r in rules:
            if r.get("action") not in ACTIONS:
                raise ValueError(f"fault rule {r}: action must be one of {ACTIONS}")
        self.rules = rules
        self.state = Path(getattr(self.settings, "faults_dir", None) or "/tmp/s2v-faults")
        self.state.mkdir(parents=True, exist_ok=True)
        delay = next((r.get("load_s", 0) for r in rules if r.get("load_s")), 0)
        if delay:  # a realistic model-load cost for benchmarks
            time.sleep(float(delay))

    def _fires(self, i: int, rule: dict, job: str, scene: int, clip: int) -> bool:
        if rule.get("job", "*") not in ("*", job):
            return False
        if rule.get("gpu") is not None:  # a bad card: only the actor holding this (logical) GPU id
            import ray

            if str(rule["gpu"]) not in [str(g) for g in ray.get_gpu_ids()]:
                return False
        if rule.get("scene") is not None and rule["scene"] != scene:
            return False
        if rule.get("clip") is not None and rule["clip"] != clip:
            return False
        times = int(rule.get("times", 0))
        if times == 0:
            return True
        for n in range(times):
            try:
                fd = os.open(self.state / f"rule{i}-{job}-{n}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.close(fd)
                return True
            except FileExistsError:
                continue
        return False

    def render_clip(self, ctx, clip: ClipRequest, tail: np.ndarray | None) -> ClipOutput:
        job, scene = ctx.inp.job_id, ctx.inp.scene_index
        # every render start is recorded, so drills count redone clips instead of guessing
        starts = self.state / "starts"
        starts.mkdir(exist_ok=True)
        (starts / f"{job}.s{scene}.c{clip.index}.{os.getpid()}.{time.monotonic_ns()}").touch()
        nan = black = wan = False
        if tail is not None and np.ndim(tail) == 5:  # a Wan-shaped tail: the draft state is in front
            tail = np.asarray(tail[0, 0, 0, 0, :2], dtype=np.float64)
        for i, rule in enumerate(self.rules):
            if not self._fires(i, rule, job, scene, clip.index):
                continue
            action = rule["action"]
            if action == "fail":
                raise InjectedFault(f"injected failure in {job} scene {scene} clip {clip.index}")
            if action == "hang":
                time.sleep(float(rule.get("seconds", 3600)))
            elif action == "kill":
                os._exit(137)  # like the OOM killer: no cleanup, no exception
            elif action == "slow":
                time.sleep(float(rule.get("seconds", 1.0)))
            elif action == "nan":
                nan = True
            elif action == "black":
                black = True
            elif action == "wan_tail":
                wan = True
        out = super().render_clip(ctx, clip, tail)
        frames, t = out.frames, out.tail
        if black:
            frames = np.zeros_like(frames)
        if wan:
            t = wan_shaped_tail(frames, t, clip.seed)
        if nan:
            t = np.full_like(t, np.nan)
        return ClipOutput(frames=frames, tail=t, info=out.info)
