"""The Wan 2.2 S2V backend on diffsynth: load once, audio embeddings once per scene, one clip per call from a tail."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ConfigError, MediaError, RenderError
from pipeline.backends.base import Backend, BackendSpec, ClipOutput, ClipRequest, SceneInput, fit_size
from pipeline.backends.wan_layout import missing_files, weights_files
from pipeline.backends.wan_loader import settings_problem

DIFFSYNTH_VERSION = "2.1.12"
DEFAULT_STEPS, DEFAULT_GUIDANCE, DEFAULT_SHIFT = 40, 4.5, 3.0
GEN_FRAMES = 80  # new frames the model makes per clip (diffsynth num_frames = 81 incl. the reference frame)
LEAD_IN = 3  # frames dropped from a chain's first clip (they morph out of the reference image), as upstream does
MOTION_FRAMES = 73
OFFICIAL_SIZE_DIVISOR = 64  # upstream picks sizes on a 64-pixel grid; the model itself needs 16
# Upstream's negative prompt for S2V, used when a job gives none: `s2v_14B.sample_neg_prompt` in Wan2.2's
# wan/configs/wan_s2v_14B.py (it overrides the generic one in shared_config.py; speech2video.py substitutes it for
# an empty n_prompt, and diffsynth's Wan2.2-S2V example passes the same text). It asks the model to avoid blur,
# violent emotion, fast shaking hands, subtitles, deformed hands/faces/limbs, frozen frames, clutter, crowds.
UPSTREAM_NEGATIVE_PROMPT = (
    "画面模糊，最差质量，画面模糊，细节模糊不清，情绪激动剧烈，手快速抖动，字幕，丑陋的，残缺的，多余的手指，画得不好的手部，"
    "画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走")


def official_size(image_wh: tuple[int, int], area_wh: tuple[int, int], divisor: int = OFFICIAL_SIZE_DIVISOR):
    """Upstream's sizing: the largest scale whose divisor-aligned size fits the area, aspect kept; never upscaled."""
    iw, ih = image_wh
    budget = area_wh[0] * area_wh[1]
    cap_w, cap_h = max(divisor, iw // divisor * divisor), max(divisor, ih // divisor * divisor)
    top = min(1.0, math.sqrt(budget / float(iw * ih)))
    for i in range(100):
        s = top * (1 - i / 100)
        # round up to the grid like upstream's padding, but never past the image itself (that would upscale)
        w = min(cap_w, max(divisor, -(-int(iw * s) // divisor) * divisor))
        h = min(cap_h, max(divisor, -(-int(ih * s) // divisor) * divisor))
        if w * h <= budget:
            return w, h
    return fit_size(image_wh, area_wh, divisor)


def fit_image(path: str, width: int, height: int):
    """The reference image resized to cover (width, height) and centre-cropped, as upstream prepares it."""
    from PIL import Image

    try:
        img = Image.open(path).convert("RGB")
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for a bad file
        raise MediaError(f"cannot read reference image {path}: {exc}") from exc
    return _cover_crop(img, width, height)


def _cover_crop(img, width: int, height: int):
    from PIL import Image

    s = max(width / img.width, height / img.height)
    img = img.convert("RGB").resize((max(width, round(img.width * s)), max(height, round(img.height * s))),
                                    Image.LANCZOS)
    left, top = (img.width - width) // 2, (img.height - height) // 2
    return img.crop((left, top, left + width, top + height))


@dataclass
class WanScene:
    """What prepare_scene computed once for a chain: per-clip audio embeddings and pose latents, and what the
    clips need from the actor's state (the weights folder they were computed with, the LoRA they render with)."""

    scene: SceneInput
    image: Any
    audio_embeds: list
    pose_latents: list | None
    steps: int
    guidance: float
    shift: float
    negative_prompt: str
    model_dir: str
    lora: tuple[str, float] | None = None
    info: dict = field(default_factory=dict)


class WanS2VBackend(Backend):
    """Wan 2.2 S2V (14B, or tiny test weights of the same classes) through diffsynth's WanVideoPipeline."""

    spec = BackendSpec(name="wan-s2v", version=f"2+diffsynth{DIFFSYNTH_VERSION}", fps=16, clip_frames=GEN_FRAMES,
                       first_clip_frames=GEN_FRAMES - LEAD_IN, tail_frames=MOTION_FRAMES, size_divisor=16,
                       sample_rate=16000, deterministic=True, default_negative_prompt=UPSTREAM_NEGATIVE_PROMPT,
                       weights=True, lora=True, needs_cuda=True)

    def __init__(self, settings=None, *, model_dir: str | None = None, dtype: str | None = None,
                 offload: str | None = None, vram_limit: float | None = None):
        super().__init__(settings)
        self.model_dir = model_dir or getattr(settings, "model_dir", None)
        self.dtype_name = dtype or getattr(settings, "wan_dtype", None)
        self.offload = offload or getattr(settings, "wan_offload", None)  # None | "cpu" | "disk"
        self.vram_limit = vram_limit if vram_limit is not None else getattr(settings, "wan_vram_limit", None)
        self.device = "cpu"
        self.pipe = None
        self.loaded_dir: str | None = None
        self.lora_active: tuple[str, float, tuple[str, ...]] | None = None  # path, scale, the layers it changed
        self.loads = 0

    @classmethod
    def output_size(cls, image_wh: tuple[int, int], area_wh: tuple[int, int]) -> tuple[int, int]:
        return official_size(image_wh, area_wh)

    @classmethod
    def check_settings(cls, settings) -> str | None:
        return settings_problem(getattr(settings, "wan_offload", None), getattr(settings, "wan_vram_limit", None))

    @classmethod
    def weights_files(cls, root: Path) -> list[str]:
        return weights_files(root)

    # ---- loading -------------------------------------------------------------------------------------------
    def load(self, device: str = "cpu") -> None:
        """Remember the device; load now when the model folder is known (else at the first scene that names one)."""
        why = settings_problem(self.offload, self.vram_limit)
        if why:
            raise ConfigError(f"wan-s2v: {why}")
        self.device = device
        if self.model_dir:
            self._load_dir(self.model_dir)
        self.loaded = True

    def _load_dir(self, model_dir: str) -> None:
        from pipeline.backends.wan_loader import load_pipeline, torch_dtype

        missing = missing_files(model_dir)
        if missing:
            raise ConfigError(f"wan-s2v: model folder {model_dir} is incomplete; missing: " + ", ".join(missing))
        dtype = torch_dtype(self.dtype_name, self.device)
        self._drop_pipeline()  # before the new load: two 14B pipelines do not fit one 80 GB card
        self.pipe = load_pipeline(Path(model_dir), self.device, dtype, self.offload, self.vram_limit)
        self.loaded_dir = str(model_dir)
        self.loads += 1

    def _drop_pipeline(self) -> None:
        from pipeline.backends.wan_loader import free_memory

        if self.pipe is not None:
            self.pipe = None
            self.loaded_dir = None
            self.lora_active = None
            free_memory(self.device)

    def _use_lora(self, want: tuple[str, float] | None) -> None:
        """Make the DiT carry exactly `want` (a LoRA path and scale, or none), changing only what differs."""
        from pipeline.backends.wan_loader import fuse_lora, restore_weights

        if self.lora_active is not None and (want is None or tuple(want) != self.lora_active[:2]):
            restore_weights(self.pipe, Path(self.loaded_dir), self.lora_active[2])
            self.lora_active = None
        if want is not None and self.lora_active is None:
            layers = fuse_lora(self.pipe, want[0], want[1])
            self.lora_active = (want[0], want[1], layers)

    # ---- per scene -----------------------------------------------------------------------------------------
    def prepare_scene(self, scene: SceneInput) -> WanScene:
        """Audio embeddings for the whole chain at once (they depend on all the audio they see) + pose latents."""
        from pipeline.backends.torch_compat import ensure_torchvision

        ensure_torchvision()  # before any diffsynth import, even when no model was loaded yet
        import torch
        from diffsynth.pipelines.wan_video import WanVideoUnit_S2V

        want_dir = getattr(scene, "model_dir", None) or self.model_dir
        if want_dir is None:
            raise ConfigError("wan-s2v needs a model folder: set model_dir in the manifest or S2V_MODEL_DIR")
        if self.pipe is None or str(want_dir) != self.loaded_dir:
            self._load_dir(str(want_dir))
        if scene.lora_path and not Path(scene.lora_path).is_file():
            raise ConfigError(f"wan-s2v: LoRA file {scene.lora_path} does not exist")
        w, h = scene.width, scene.height
        if w % 16 or h % 16:
            raise RenderError(f"wan-s2v: size {w}x{h} is not a multiple of 16")
        n = len(scene.clip_frames)
        spf = self.spec.sample_rate // self.spec.fps
        # A 3-frame lead-in of silence lines the kept frames of clip 0 up with the scene's first audio frame
        # (upstream instead shifts the whole video 3 frames early against its audio).
        pcm = np.zeros(n * GEN_FRAMES * spf, dtype=np.float32)
        src = np.asarray(scene.audio, dtype=np.float32).reshape(-1)[: pcm.size - LEAD_IN * spf]
        pcm[LEAD_IN * spf: LEAD_IN * spf + src.size] = src
        unit = WanVideoUnit_S2V()
        with torch.no_grad():
            embeds = unit.process_audio(self.pipe, pcm, self.spec.sample_rate, GEN_FRAMES + 1, fps=self.spec.fps,
                                        return_all=True)
            pose = self._pose_latents(unit, scene, n) if scene.pose_path else None
        if len(embeds) < n:
            raise RenderError(f"wan-s2v: audio gave {len(embeds)} clip embeddings for {n} clips")
        neg = self.spec.default_negative_prompt if scene.negative_prompt is None else scene.negative_prompt
        return WanScene(scene=scene, image=fit_image(scene.image_path, w, h), audio_embeds=list(embeds[:n]),
                        pose_latents=pose, steps=scene.steps or DEFAULT_STEPS,
                        guidance=DEFAULT_GUIDANCE if scene.guidance is None else scene.guidance,
                        shift=scene.shift or DEFAULT_SHIFT, negative_prompt=neg, model_dir=self.loaded_dir,
                        lora=(scene.lora_path, float(scene.lora_scale)) if scene.lora_path else None,
                        info={"model_dir": self.loaded_dir})

    def _pose_latents(self, unit, scene: SceneInput, clips: int) -> list:
        """One latent block per clip, encoded clip by clip (memory: one clip of frames at the output size).
        A clip wholly after the pose video's end gets the blank pose's latent, encoded once."""
        from pipeline.backends.wan_pose import PoseReader, blank_pose, clip_pose_frames

        w, h = scene.width, scene.height
        blank = blank_pose(w, h)

        def encode(frames):
            return unit.process_pose_cond(self.pipe, frames, GEN_FRAMES + 1, h, w, True, (30, 52), (15, 26),
                                          num_repeats=1, return_all=True)[0]

        out, blank_latent = [], None
        reader = PoseReader(scene.pose_path, self.spec.fps, w, h)
        for chunk in clip_pose_frames(reader, scene.start_frame, clips, GEN_FRAMES, LEAD_IN):
            if chunk is None:
                blank_latent = encode([blank] * GEN_FRAMES) if blank_latent is None else blank_latent
                out.append(blank_latent)
            else:
                out.append(encode([blank if f is None else f for f in chunk]))
        return out

    # ---- per clip ------------------------------------------------------------------------------------------
    def render_clip(self, ctx: WanScene, clip: ClipRequest, tail: np.ndarray | None) -> ClipOutput:
        import torch

        if ctx.model_dir != self.loaded_dir:  # another job's weights were loaded since: its embeddings are stale
            ctx.__dict__.update(self.prepare_scene(ctx.scene).__dict__)
        self._use_lora(ctx.lora)
        sc, r = ctx.scene, clip.index
        if not 0 <= r < len(ctx.audio_embeds):
            raise RenderError(f"wan-s2v: clip {r} is outside the scene's {len(ctx.audio_embeds)} clips")
        motion = None
        if r > 0:
            if tail is None:
                raise RenderError(f"wan-s2v: clip {r} needs the motion tail of clip {r - 1}")
            want = (1, 3, MOTION_FRAMES, sc.height, sc.width)
            tail = np.asarray(tail)
            if tail.shape != want or not np.isfinite(tail).all():
                raise RenderError(f"wan-s2v: motion tail has shape {tail.shape}, expected finite {want}")
            motion = torch.from_numpy(np.ascontiguousarray(tail, dtype=np.float32))
            motion = motion.to(device=self.pipe.device, dtype=self.pipe.torch_dtype)
        video = self.pipe(
            prompt=sc.prompt, negative_prompt=ctx.negative_prompt, input_image=ctx.image, seed=clip.seed,
            num_frames=GEN_FRAMES + 1, height=sc.height, width=sc.width, audio_embeds=ctx.audio_embeds[r],
            s2v_pose_latents=ctx.pose_latents[r] if ctx.pose_latents else None, motion_video=motion,
            num_inference_steps=ctx.steps, cfg_scale=ctx.guidance, sigma_shift=ctx.shift,
            progress_bar_cmd=lambda it: it, output_type="floatpoint",
        )
        new = video[:, :, -GEN_FRAMES:]
        if r == 0:
            new = new[:, :, LEAD_IN:]
        # The tail stays float in [-1, 1]: quantising it (or a video round trip) compounds over a long chain.
        tail_out = np.ascontiguousarray(new[:, :, -MOTION_FRAMES:].float().cpu().numpy())
        kept = new[0, :, : clip.frames].float().permute(1, 2, 3, 0)
        frames = np.ascontiguousarray(((kept + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu().numpy())
        if frames.shape[0] != clip.frames:
            raise RenderError(f"wan-s2v: clip {r} gave {frames.shape[0]} frames, {clip.frames} were planned")
        info = {"steps": ctx.steps, "guidance": ctx.guidance, "shift": ctx.shift, "seed": clip.seed}
        if ctx.lora:
            info["lora"] = {"path": ctx.lora[0], "scale": ctx.lora[1]}
        return ClipOutput(frames=frames, tail=tail_out, info=info)

    def unload(self) -> None:
        self._drop_pipeline()
        super().unload()
