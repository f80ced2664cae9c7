"""Fault-injecting backend (like a stub broker): the draft renderer plus switches to fail, hang, die, emit NaN or crawl.

Rules come from settings.faults, e.g.
  [{"action": "fail", "job": "lesson-2", "times": 0},              # always fail that job's clips
   {"action": "kill", "job": "*", "scene": 0, "clip": 2, "times": 1},  # kill the actor process once
   {"action": "slow", "seconds": 0.5},                              # every clip takes ≥ 0.5 s
   {"action": "fail", "gpu": 1},                                    # a bad card: fails whatever it renders
   {"action": "kill", "clip": 2, "at": "save", "times": 1},         # die after rendering clip 2, before its marker
   {"action": "wait", "clip": 4, "file": "/tmp/go"},                # hold clip 4 until a drill creates that file
   {"action": "wait", "clip": 2, "url": "http://127.0.0.1:9/gate"}, # ... or until that URL answers 200
   {"action": "wan_tail"}]                                          # tails shaped and valued like Wan's
"at": "render" (default) fires when a clip starts rendering, "save" just before its checkpoint is written.
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

ACTIONS = ("fail", "hang", "kill", "nan", "slow", "black", "wait", "wan_tail")
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


def _gate_open(rule: dict) -> bool:
    """A wait rule's gate: a file that exists, or a URL that answers 200 (nodes that share no disk)."""
    if "url" in rule:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(rule["url"], timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False
    return os.path.exists(rule["file"])


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
        import ray

        if ray.is_initialized():  # which Ray node each rendering process is on (records name processes)
            (self.state / "nodes").mkdir(exist_ok=True)
            (self.state / "nodes" / str(os.getpid())).write_text(ray.get_runtime_context().get_node_id())
        delay = next((r.get("load_s", 0) for r in rules if r.get("load_s")), 0)
        if delay:  # a realistic model-load cost for benchmarks
            time.sleep(float(delay))

    def _fires(self, i: int, rule: dict, job: str, scene: int, clip: int, at: str = "render") -> bool:
        if rule.get("at", "render") != at or rule.get("job", "*") not in ("*", job):
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

    def _record(self, what: str, job: str, scene: int, clip: int) -> None:
        """Every render start and finish is recorded, so drills count redone clips instead of guessing."""
        d = self.state / what
        d.mkdir(exist_ok=True)
        (d / f"{job}.s{scene}.c{clip}.{os.getpid()}.{time.monotonic_ns()}").touch()

    def checkpointing(self, ctx, clip: ClipRequest) -> None:
        job, scene = ctx.inp.job_id, ctx.inp.scene_index
        self._record("saving", job, scene, clip.index)
        for i, rule in enumerate(self.rules):
            if self._fires(i, rule, job, scene, clip.index, at="save"):
                if rule["action"] == "kill":
                    os._exit(137)
                if rule["action"] == "fail":
                    raise InjectedFault(f"injected checkpoint failure in {job} scene {scene} clip {clip.index}")
                if rule["action"] in ("slow", "hang"):
                    time.sleep(float(rule.get("seconds", 1.0)))

    def render_clip(self, ctx, clip: ClipRequest, tail: np.ndarray | None) -> ClipOutput:
        job, scene = ctx.inp.job_id, ctx.inp.scene_index
        self._record("starts", job, scene, clip.index)
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
            elif action == "wait":  # a drill orders events across nodes without guessing at timings
                deadline = time.monotonic() + float(rule.get("seconds", 600))
                while not _gate_open(rule) and time.monotonic() < deadline:
                    time.sleep(0.05)
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
        self._record("finished", job, scene, clip.index)
        return ClipOutput(frames=frames, tail=t, info=out.info)
