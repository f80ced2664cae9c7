"""The GPU actor: loads a backend once, renders one clip at a time from the chain's tail, checkpoints each clip."""

from __future__ import annotations

import os
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from orchestrator.checkpoints import WorkArea
from core.errors import ChainBroken, Preempted, RenderError
from orchestrator.planner import JobPlan, local_path
from core.settings import Settings
from pipeline import audio as audio_mod
from pipeline.backends import backend_class
from pipeline.backends.base import ClipRequest, SceneInput
from pipeline.media import EncodeParams, encode_frames


class _LRU(OrderedDict):
    def __init__(self, cap: int):
        super().__init__()
        self.cap = cap

    def put(self, k, v):
        self[k] = v
        self.move_to_end(k)
        while len(self) > self.cap:
            self.popitem(last=False)


def resolve_plan(handle, cache: "_LRU") -> JobPlan:
    """A clip call carries its job's plan as [ObjectRef] (put once by the driver, not pickled per call); the
    actor fetches it once and keeps it. A plain JobPlan is accepted too (direct callers, benchmarks)."""
    if isinstance(handle, JobPlan):
        return handle
    import ray

    ref = handle[0]
    key = ref.hex()
    if key not in cache:
        cache.put(key, ray.get(ref, timeout=120))
    return cache[key]


def pick_device() -> str:
    """'cuda:0' when Ray gave this actor a GPU that is real, else 'cpu' (logical GPUs on CPU machines)."""
    import ray

    if not ray.get_gpu_ids():
        return "cpu"
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return "cpu"
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


class RenderWorker:
    """Plain class wrapped as a Ray actor by the scheduler (num_gpus=gpus_per_actor, num_cpus=0)."""

    def __init__(self, settings: Settings, backends: tuple[str, ...] = ()):
        self.settings = settings
        self.backends: dict = {}
        self.loads: dict[str, int] = {}
        self.scenes = _LRU(4)
        self.audio = _LRU(2)
        # last tail per running chain; bounded: a chain moved to another actor leaves its tail behind, and a
        # Wan tail at 832×480 is ~175 MB
        self.tails = _LRU(4)
        self.plans = _LRU(64)
        self.clips_rendered = 0
        self.watcher = None
        self._start_watcher()
        for name in backends:  # load now, not in the first clip: a restart reloads here, once
            self._backend(name)

    def _start_watcher(self) -> None:
        from infra.preemption import watcher_from_settings

        try:
            # the watcher drains this node for an interruption only (never for a rebalance warning), so Ray
            # places nothing new here; chains resume elsewhere from their checkpoints
            self.watcher = watcher_from_settings(self.settings, drain=True)
            if self.watcher is not None:
                self.watcher.start()
        except Exception:  # noqa: BLE001 - a broken watcher must not stop rendering
            self.watcher = None

    def info(self) -> dict:
        import ray

        ctx = ray.get_runtime_context()
        return {"node": ctx.get_node_id(), "pid": os.getpid(), "loads": dict(self.loads),
                "gpus": [str(g) for g in ray.get_gpu_ids()], "clips": self.clips_rendered,
                "actor": ctx.get_actor_id()}

    def ping(self) -> bool:
        return True

    def _backend(self, name: str):
        if name not in self.backends:
            b = backend_class(name)(self.settings)
            b.load(pick_device())
            self.backends[name] = b
            self.loads[name] = self.loads.get(name, 0) + 1
        return self.backends[name]

    def _job_audio(self, plan: JobPlan, sample_rate: int) -> np.ndarray:
        k = (plan.key, sample_rate)
        if k not in self.audio:
            path = local_path(plan.job.audio, self.settings)
            self.audio.put(k, audio_mod.decode(str(path), sample_rate))
        return self.audio[k]

    def _scene(self, plan: JobPlan, si: int, backend):
        k = (plan.key, plan.job.id, si, plan.job.backend)
        if k in self.scenes:
            return self.scenes[k]
        spec = backend.spec
        scene = plan.scenes[si]
        spf = spec.sample_rate // spec.fps
        padded = spec.first_clip_frames + (len(scene.clips) - 1) * spec.clip_frames
        pcm = self._job_audio(plan, spec.sample_rate)
        a0 = scene.start_frame * spf
        chunk = np.zeros(padded * spf, dtype=np.float32)
        seg = pcm[a0 : a0 + chunk.size]
        chunk[: seg.size] = seg
        inp = SceneInput(
            job_id=plan.job.id, job_key=plan.key, scene_index=si,
            image_path=str(local_path(plan.job.image, self.settings)),
            pose_path=str(local_path(plan.job.pose, self.settings)) if plan.job.pose else None,
            prompt=plan.job.prompt, negative_prompt=plan.job.negative_prompt, seed=plan.job.seed,
            width=plan.width, height=plan.height, start_frame=scene.start_frame, frames=scene.frames,
            clip_frames=tuple(c.frames for c in scene.clips), audio=chunk,
            steps=plan.job.steps, guidance=plan.job.guidance, shift=plan.job.shift,
            model_dir=str(local_path(plan.job.model_dir, self.settings)) if plan.job.model_dir else None,
            lora_path=str(local_path(plan.job.lora, self.settings)) if plan.job.lora else None,
            lora_scale=plan.job.lora_scale,
        )
        ctx = backend.prepare_scene(inp)
        self.scenes.put(k, ctx)
        return ctx

    def render_clip(self, plan_handle, si: int, ci: int, work: str) -> dict:
        """Render clip ci of scene si and checkpoint it. Returns timings for the report."""
        plan = resolve_plan(plan_handle, self.plans)
        notice = self.watcher.notice() if self.watcher is not None else None
        if notice is not None:  # take no new clip: the previous clip is checkpointed, the chain moves on
            import ray

            raise Preempted(f"preemption notice ({notice.source}): {notice.reason}",
                            ray.get_runtime_context().get_node_id())
        t0 = time.monotonic()
        wa = WorkArea.at(work, self.settings)
        backend = self._backend(plan.job.backend)
        ctx = self._scene(plan, si, backend)
        clip = plan.scenes[si].clips[ci]
        tail = None
        if ci > 0:
            tail = self.tails.pop((plan.key, si, ci - 1), None)
            if tail is None:
                tail = wa.load_tail(plan.key, si, ci - 1)
            if tail is None:
                raise ChainBroken(f"{plan.job.id} scene {si} clip {ci}: no tail for clip {ci - 1}")
        t1 = time.monotonic()
        out = backend.render_clip(ctx, ClipRequest(index=ci, scene_frame_start=clip.scene_frame_start,
                                                   frames=clip.frames, job_clip_index=clip.job_clip_index,
                                                   seed=clip.seed), tail)
        render_s = time.monotonic() - t1
        frames = np.asarray(out.frames)
        want = (clip.frames, plan.height, plan.width, 3)
        if frames.shape != want or frames.dtype != np.uint8:
            raise RenderError(f"{plan.job.id}: backend returned frames {frames.shape} {frames.dtype}, expected {want} uint8")
        tail_arr = np.asarray(out.tail)
        if tail_arr.dtype.kind == "f" and not np.isfinite(tail_arr).all():
            raise RenderError(f"{plan.job.id} scene {si} clip {ci}: the backend produced NaN/inf values")
        with tempfile.TemporaryDirectory(prefix="s2v-clip-") as tmp:
            mp4 = Path(tmp) / "clip.mp4"
            encode_frames(frames, EncodeParams(plan.fps, plan.width, plan.height, self.settings.crf,
                                               self.settings.preset), mp4)
            marker = {"job": plan.job.id, "key": plan.key, "scene": si, "clip": ci, "frames": clip.frames,
                      "seed": clip.seed, "render_s": round(render_s, 4)}
            wa.save_clip(plan.key, si, ci, mp4, tail_arr, marker)
        if ci + 1 < len(plan.scenes[si].clips):
            self.tails.put((plan.key, si, ci), tail_arr)
        self.clips_rendered += 1
        import ray

        return {"job": plan.job.id, "scene": si, "clip": ci, "frames": clip.frames, "render_s": render_s,
                "total_s": time.monotonic() - t0, "node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}
