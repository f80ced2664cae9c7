"""The GPU actor: loads a backend once, renders one clip at a time from the chain's tail, checkpoints each clip
in the background while the next one renders."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from core.errors import ChainBroken, Preempted, RenderError, Warned
from core.settings import Settings
from orchestrator.workarea.layout import WorkArea
from orchestrator.intake.inputs import local_path
from orchestrator.render.cuda import pick_device
from orchestrator.plan.records import JobPlan
from pipeline import audio as audio_mod
from pipeline.backends import backend_class
from pipeline.backends.base import ClipRequest, SceneInput
from pipeline.media import EncodeParams, encode_frames

log = logging.getLogger("s2v.worker")


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


class _Saver:
    """One clip's encode + checkpoint on a background thread while the next clip renders; at most one pending."""

    def __init__(self):
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="s2v-save")
        self.pending: tuple[list, object] | None = None  # ([job id, scene, clip], future)

    def submit(self, ident: list, fn) -> None:
        assert self.pending is None, "settle the previous save first"
        self.pending = (ident, self.pool.submit(fn))

    def settle(self) -> list:
        """Wait for the pending save; [its ident] once its marker exists; raises the save's error."""
        if self.pending is None:
            return []
        (ident, fut), self.pending = self.pending, None
        fut.result()
        return [ident]

    def settle_quietly(self) -> list:
        ident = self.pending[0] if self.pending else None
        try:
            return self.settle()
        except Exception as e:  # noqa: BLE001 - the chain resumes from the markers; this clip is redone
            log.warning("checkpoint of %s failed: %s", ident, e)
            return []


def weights_dir(location: str, settings) -> str:
    """A weights folder on this node: a path as it is; an s3:// or gs:// folder as the node's local copy, which the
    node's setup started syncing at boot (infra/clusters/weights.py: waited for, or made here when no setup ran)."""
    from infra.storage import parse

    u = parse(location)
    if u.scheme == "file":
        return u.key
    from infra.clusters.weights import ensure_local

    return str(ensure_local(str(u), settings))


class RenderWorker:
    """Plain class wrapped as a Ray actor by the pool (num_gpus=gpus_per_actor, num_cpus=0)."""

    def __init__(self, settings: Settings, backends: tuple[str, ...] = ()):
        import ray

        self.settings = settings
        self.node = ray.get_runtime_context().get_node_id()
        self.backends: dict = {}
        self.loads: dict[str, int] = {}
        self.scenes = _LRU(4)
        self.audio = _LRU(2)
        self.plans = _LRU(64)
        # The one motion tail this actor holds: its chain's last clip ((key, scene), clip, array). A Wan tail at
        # 832×448 is ~334 MiB; a chain that leaves this actor (finished, moved, failed) leaves no tail behind.
        self.tail: tuple | None = None
        self.saver = _Saver()
        self.clips_rendered = 0
        self.broken: Exception | None = None
        self.node_notices = None
        self._start_notices()
        try:
            for name in backends:  # load now, not in the first clip: a restart reloads here, once
                self._backend(name)
        except Exception as e:  # noqa: BLE001 - kept and raised by every call, so the run learns why
            self.broken = e

    def _start_notices(self) -> None:
        from orchestrator.render.notices import NodeNotices

        try:
            self.node_notices = NodeNotices(self.settings, self.node)
        except Exception as e:  # noqa: BLE001 - a broken watcher must not stop rendering
            log.warning("no spot notices on this node: %s", e)

    # ---------- calls the scheduler makes ----------
    def ping(self) -> dict:
        """Answers once the model is loaded (or raises why it could not be); says where the actor runs."""
        if self.broken is not None:
            raise self.broken
        return {"node": self.node, "pid": os.getpid()}

    def info(self) -> dict:
        import ray

        ctx = ray.get_runtime_context()
        return {"node": self.node, "pid": os.getpid(), "loads": dict(self.loads),
                "gpus": [str(g) for g in ray.get_gpu_ids()], "clips": self.clips_rendered,
                "actor": ctx.get_actor_id(), "tails": int(self.tail is not None),
                "tail_bytes": int(self.tail[2].nbytes) if self.tail is not None else 0,
                "code": str(Path(__file__).resolve().parents[1])}  # the installed project this node runs

    def notices(self) -> dict:
        """The node's active spot notices now (the scheduler asks while a slot is warned or draining)."""
        state = self.node_notices.state() if self.node_notices else {"interruption": None, "warning": None}
        return {"node": self.node, **state}

    def release(self) -> list:
        """The chain left this actor: land its pending checkpoint and free its tail."""
        self.tail = None
        return self.saver.settle_quietly()

    def render_clip(self, plan_handle, si: int, ci: int, work: str, more: bool = False,
                    starts_chain: bool = False) -> dict:
        """Render clip ci of scene si and queue its checkpoint.

        Returns {"clip": ci, "saved": [[job, scene, clip], …]: clips whose markers exist now, …}. The checkpoint
        of ci is written while the next clip renders when `more` (the scheduler queued clip ci+1 here), else
        before returning. A refusal (preemption notice; early warning when `starts_chain`) lands the pending
        checkpoint first."""
        plan = resolve_plan(plan_handle, self.plans)
        if self.broken is not None:
            raise self.broken
        t0 = time.monotonic()
        scene = plan.scenes[si]
        clip = scene.clips[ci]
        req = ClipRequest(index=ci, scene_frame_start=clip.scene_frame_start, frames=clip.frames,
                          job_clip_index=clip.job_clip_index, seed=clip.seed)
        try:
            self._refuse_if_noticed(starts_chain)
            wa = WorkArea.at(work, self.settings)
            backend = self._backend(plan.job.backend)
            ctx = self._scene(plan, si, backend)
            tail = self._tail_for(plan, si, ci, wa)
            t1 = time.monotonic()
            out = backend.render_clip(ctx, req, tail)
            render_s = time.monotonic() - t1
            frames = np.asarray(out.frames)
            want = (clip.frames, plan.height, plan.width, 3)
            if frames.shape != want or frames.dtype != np.uint8:
                raise RenderError(f"{plan.job.id}: backend returned frames {frames.shape} {frames.dtype}, "
                                  f"expected {want} uint8")
            tail_arr = np.asarray(out.tail)
            if tail_arr.dtype.kind == "f" and not np.isfinite(tail_arr).all():
                raise RenderError(f"{plan.job.id} scene {si} clip {ci}: the backend produced NaN/inf values")
            saved = self.saver.settle()  # the previous clip counts only once its marker exists
        except BaseException:
            self.tail = None
            self.saver.settle_quietly()
            raise
        last = ci + 1 >= len(scene.clips)
        self.tail = None if last else ((plan.key, si), ci, tail_arr)
        # where and when the clip was made: after a night of preemptions, the markers say which node rendered what
        marker = {"job": plan.job.id, "key": plan.key, "scene": si, "clip": ci, "frames": clip.frames,
                  "seed": clip.seed, "render_s": round(render_s, 4), "node": self.node, "at": round(time.time(), 3)}
        self.saver.submit([plan.job.id, si, ci],
                          lambda: self._save(wa, backend, ctx, req, plan, frames, tail_arr, marker))
        self.clips_rendered += 1
        if last or not more:
            try:
                saved += self.saver.settle()
            except BaseException:
                self.tail = None
                raise
        warned = self.node_notices is not None and self.node_notices.warning() is not None
        return {"job": plan.job.id, "scene": si, "clip": ci, "frames": clip.frames, "render_s": render_s,
                "total_s": time.monotonic() - t0, "node": self.node, "pid": os.getpid(), "saved": saved,
                "warning": warned}

    # ---------- pieces ----------
    def _refuse_if_noticed(self, starts_chain: bool) -> None:
        if self.node_notices is None:
            return
        n = self.node_notices.interruption()
        if n is not None:  # take no new clip: the chain moves on from its checkpoints
            self.saver.settle_quietly()
            raise Preempted(f"preemption notice ({n.source}): {n.reason}", self.node)
        if starts_chain and self.node_notices.warning() is not None:
            w = self.node_notices.warning()
            self.saver.settle_quietly()
            raise Warned(f"early spot warning ({getattr(w, 'source', '?')}): no new chain on this node")

    def _tail_for(self, plan: JobPlan, si: int, ci: int, wa: WorkArea):
        """The previous clip's tail: from memory when this actor rendered it, else from its checkpoint."""
        held, self.tail = self.tail, None  # whatever happens, no other chain's tail stays here
        if ci == 0:
            return None
        if held is not None and held[0] == (plan.key, si) and held[1] == ci - 1:
            return held[2]
        del held
        self.saver.settle_quietly()  # a checkpoint this actor is still writing is the one to read
        tail = wa.load_tail(plan.key, si, ci - 1)
        if tail is None:
            raise ChainBroken(f"{plan.job.id} scene {si} clip {ci}: no tail for clip {ci - 1}")
        return tail

    def _save(self, wa: WorkArea, backend, ctx, req: ClipRequest, plan: JobPlan, frames, tail, marker) -> None:
        backend.checkpointing(ctx, req)
        with tempfile.TemporaryDirectory(prefix="s2v-clip-") as tmp:
            mp4 = Path(tmp) / "clip.mp4"
            encode_frames(frames, EncodeParams(plan.fps, plan.width, plan.height, self.settings.crf,
                                               self.settings.preset), mp4)
            wa.save_clip(plan.key, marker["scene"], marker["clip"], mp4, tail, marker)

    def _backend(self, name: str):
        if name not in self.backends:
            cls = backend_class(name)
            settings = self.settings
            if cls.spec.weights and settings.model_dir:  # a bucket's weights: this node's copy (see weights_dir)
                settings = settings.model_copy(update={"model_dir": weights_dir(settings.model_dir, settings)})
            b = cls(settings)
            b.load(pick_device(self.settings, cls.spec.needs_cuda, name))
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
            model_dir=weights_dir(plan.job.model_dir, self.settings) if plan.job.model_dir else None,
            lora_path=str(local_path(plan.job.lora, self.settings)) if plan.job.lora else None,
            lora_scale=plan.job.lora_scale,
        )
        ctx = backend.prepare_scene(inp)
        self.scenes.put(k, ctx)
        return ctx
