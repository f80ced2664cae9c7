"""The Wan 2.2 S2V backend on diffsynth: load once, audio embeddings once per scene, one clip per call from a tail."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ConfigError, MediaError, RenderError
from pipeline.backends.base import Backend, BackendSpec, ClipOutput, ClipRequest, SceneInput, fit_size
from pipeline.backends.wan_tiny import DIT_CONFIG, DIT_INDEX, T5_FILE, TOKENIZER_DIR, VAE_FILE, WAV2VEC_DIR

DIFFSYNTH_VERSION = "2.1.12"
DEFAULT_STEPS, DEFAULT_GUIDANCE, DEFAULT_SHIFT = 40, 4.5, 3.0
GEN_FRAMES = 80  # new frames the model makes per clip (diffsynth num_frames = 81 incl. the reference frame)
LEAD_IN = 3  # frames dropped from a chain's first clip (they morph out of the reference image), as upstream does
MOTION_FRAMES = 73
OFFICIAL_SIZE_DIVISOR = 64  # upstream picks sizes on a 64-pixel grid; the model itself needs 16
# The 14B DiT, used for config.json keys a checkpoint leaves out (diffsynth's registry entry for Wan2.2-S2V-14B).
DIT_DEFAULTS = {"dim": 5120, "in_dim": 16, "ffn_dim": 13824, "out_dim": 16, "text_dim": 4096, "freq_dim": 256,
                "eps": 1e-6, "patch_size": (1, 2, 2), "num_heads": 40, "num_layers": 40, "cond_dim": 16,
                "audio_dim": 1024, "num_audio_token": 4}
DIT_OPTIONAL = ("enable_adain", "audio_inject_layers", "zero_timestep", "add_last_motion", "framepack_drop_mode")


def missing_files(model_dir: str | Path) -> list[str]:
    """Every file of the official layout that the loader needs and cannot find (no torch needed)."""
    root = Path(model_dir)
    if not root.is_dir():
        return [f"{root} (not a directory)"]
    need = [DIT_CONFIG, T5_FILE, VAE_FILE, f"{TOKENIZER_DIR}/tokenizer_config.json",
            f"{WAV2VEC_DIR}/config.json", f"{WAV2VEC_DIR}/preprocessor_config.json"]
    out = [n for n in need if not (root / n).is_file()]
    if not any((root / TOKENIZER_DIR / n).is_file() for n in ("tokenizer.json", "spiece.model")):
        out.append(f"{TOKENIZER_DIR}/tokenizer.json (or spiece.model)")
    if not any((root / WAV2VEC_DIR / n).is_file() for n in ("model.safetensors", "pytorch_model.bin")):
        out.append(f"{WAV2VEC_DIR}/model.safetensors (or pytorch_model.bin)")
    out += [n for n in dit_shards(root) if not (root / n).is_file()]
    return out


def dit_shards(root: Path) -> list[str]:
    """The DiT weight files: the shards named by the index, else the single unsharded file."""
    index = root / DIT_INDEX
    if index.is_file():
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    return ["diffusion_pytorch_model.safetensors"]


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


def read_pose(path: str, start_frame: int, count: int, fps: int, width: int, height: int) -> list:
    """`count` pose frames from job frame `start_frame` on, at `fps`, fitted like the reference (last one held)."""
    import av

    want = [(start_frame + j) / fps for j in range(count)]
    out: list = []
    try:
        with av.open(path) as box:
            last = None
            for frame in box.decode(video=0):
                t = float(frame.time or 0.0)
                while len(out) < count and want[len(out)] < t and last is not None:
                    out.append(last)
                last = frame.to_image()
                if len(out) >= count:
                    break
            while len(out) < count and last is not None:
                out.append(last)
    except av.error.FFmpegError as exc:
        raise MediaError(f"cannot read pose video {path}: {exc}") from exc
    if not out:
        raise MediaError(f"pose video {path} has no frames")
    return [_cover_crop(im, width, height) for im in out]


@dataclass
class WanScene:
    """What prepare_scene computed once for a chain: per-clip audio embeddings and pose latents."""

    scene: SceneInput
    image: Any
    audio_embeds: list
    pose_latents: list | None
    steps: int
    guidance: float
    shift: float
    info: dict = field(default_factory=dict)


class WanS2VBackend(Backend):
    """Wan 2.2 S2V (14B, or tiny test weights of the same classes) through diffsynth's WanVideoPipeline."""

    spec = BackendSpec(name="wan-s2v", version=f"1+diffsynth{DIFFSYNTH_VERSION}", fps=16, clip_frames=GEN_FRAMES,
                       first_clip_frames=GEN_FRAMES - LEAD_IN, tail_frames=MOTION_FRAMES, size_divisor=16,
                       sample_rate=16000, deterministic=True, needs_cuda=True)

    def __init__(self, settings=None, *, model_dir: str | None = None, dtype: str | None = None,
                 offload: str | None = None, vram_limit: float | None = None):
        super().__init__(settings)
        self.model_dir = model_dir or getattr(settings, "model_dir", None)
        self.dtype_name = dtype or getattr(settings, "wan_dtype", None)
        self.offload = offload or getattr(settings, "wan_offload", None)  # None | "cpu" | "disk" (CUDA only)
        self.vram_limit = vram_limit if vram_limit is not None else getattr(settings, "wan_vram_limit", None)
        self.device = "cpu"
        self.pipe = None
        self.loaded_dir: str | None = None
        self.loads = 0

    @classmethod
    def output_size(cls, image_wh: tuple[int, int], area_wh: tuple[int, int]) -> tuple[int, int]:
        return official_size(image_wh, area_wh)

    # ---- loading -------------------------------------------------------------------------------------------
    def load(self, device: str = "cpu") -> None:
        """Remember the device; load now when the model folder is known (else at the first scene that names one)."""
        self.device = device
        if self.model_dir:
            self._load_dir(self.model_dir)
        self.loaded = True

    def _load_dir(self, model_dir: str) -> None:
        missing = missing_files(model_dir)
        if missing:
            raise ConfigError(f"wan-s2v: model folder {model_dir} is incomplete; missing: " + ", ".join(missing))
        self.pipe = load_pipeline(Path(model_dir), self.device, self._dtype(), self.offload, self.vram_limit)
        self.loaded_dir = str(model_dir)
        self.loads += 1

    def _dtype(self):
        import torch

        if self.dtype_name:
            return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[self.dtype_name]
        # bf16 is what the 14B was trained in; CPUs (tests, tiny weights) run fp32, which is also exact to resume
        return torch.bfloat16 if str(self.device).startswith("cuda") else torch.float32

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
            pose = None
            if scene.pose_path:
                frames = read_pose(scene.pose_path, scene.start_frame, n * GEN_FRAMES - LEAD_IN, self.spec.fps, w, h)
                frames = [frames[0]] * LEAD_IN + frames
                pose = unit.process_pose_cond(self.pipe, frames, GEN_FRAMES + 1, h, w, True, (30, 52), (15, 26),
                                              num_repeats=n, return_all=True)
        if len(embeds) < n:
            raise RenderError(f"wan-s2v: audio gave {len(embeds)} clip embeddings for {n} clips")
        return WanScene(scene=scene, image=fit_image(scene.image_path, w, h), audio_embeds=list(embeds[:n]),
                        pose_latents=pose, steps=scene.steps or DEFAULT_STEPS,
                        guidance=DEFAULT_GUIDANCE if scene.guidance is None else scene.guidance,
                        shift=scene.shift or DEFAULT_SHIFT, info={"model_dir": self.loaded_dir})

    # ---- per clip ------------------------------------------------------------------------------------------
    def render_clip(self, ctx: WanScene, clip: ClipRequest, tail: np.ndarray | None) -> ClipOutput:
        import torch

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
            prompt=sc.prompt, negative_prompt=sc.negative_prompt, input_image=ctx.image, seed=clip.seed,
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
        return ClipOutput(frames=frames, tail=tail_out,
                          info={"steps": ctx.steps, "guidance": ctx.guidance, "shift": ctx.shift, "seed": clip.seed})

    def unload(self) -> None:
        self.pipe = None
        self.loaded_dir = None
        super().unload()


# ---- the loader ------------------------------------------------------------------------------------------------
def _vram_config(device: str, dtype, offload: str | None) -> dict:
    """diffsynth's per-model placement: everything on the device, or parked in CPU RAM / on disk between uses."""
    park = "cpu" if offload == "cpu" else "disk" if offload == "disk" else None
    if park is None or not device.startswith("cuda"):
        return {"offload_dtype": None, "offload_device": None, "onload_dtype": dtype, "onload_device": device,
                "preparing_dtype": dtype, "preparing_device": device, "computation_dtype": dtype,
                "computation_device": device}
    return {"offload_dtype": dtype if park == "cpu" else "disk", "offload_device": park,
            "onload_dtype": dtype if park == "cpu" else "disk", "onload_device": park,
            "preparing_dtype": dtype, "preparing_device": device, "computation_dtype": dtype,
            "computation_device": device}


def _shapes(path: Path) -> dict:
    import torch

    try:  # mmap: reading the shapes of an 11 GB .pth must not load it
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) .pth files cannot be memory-mapped
        state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: tuple(v.shape) for k, v in state.items()}


def _sized_vae(z_dim: int = 16, dim: int = 96):
    from diffsynth.models.wan_video_vae import VideoVAE_, WanVideoVAE

    vae = WanVideoVAE(z_dim=z_dim)  # hard-codes the 96-wide VideoVAE_; a tiny checkpoint swaps in its own width
    if dim != vae.model.dim:
        vae.model = VideoVAE_(dim=dim, z_dim=z_dim).eval().requires_grad_(False)
    return vae


def load_pipeline(root: Path, device: str, dtype, offload: str | None, vram_limit: float | None):
    """A WanVideoPipeline from the official folder layout, each model built by diffsynth's own loader with an
    explicit class and config (its automatic detection hashes key names and shapes, so it only knows the 14B)."""
    from pipeline.backends.torch_compat import ensure_torchvision

    ensure_torchvision()
    from diffsynth.core.loader.model import load_model
    from diffsynth.core.vram.initialization import skip_model_initialization
    from diffsynth.models.model_loader import ModelPool
    from diffsynth.models.wan_video_dit_s2v import WanS2VModel
    from diffsynth.models.wan_video_text_encoder import HuggingfaceTokenizer, WanTextEncoder
    from diffsynth.models.wav2vec import WanS2VAudioEncoder
    from diffsynth.pipelines.wan_video import WanVideoPipeline
    from diffsynth.utils.state_dict_converters.wan_video_vae import WanVideoVAEStateDictConverter
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

    vram = _vram_config(device, dtype, offload)
    pool = ModelPool()

    def build(factory, registry_name: str, path, kwargs: dict, converter=None):
        module_map = pool.fetch_module_map(registry_name, vram)
        return load_model(factory, path, kwargs, dtype, device, converter, use_disk_map=True, vram_config=vram,
                          module_map=module_map, vram_limit=vram_limit)

    cfg = json.loads((root / DIT_CONFIG).read_text())
    dit_kwargs = {k: cfg.get(k, v) for k, v in DIT_DEFAULTS.items()}
    dit_kwargs.update({k: cfg[k] for k in DIT_OPTIONAL if k in cfg})
    dit_kwargs["patch_size"] = tuple(dit_kwargs["patch_size"])
    shards = [str(root / n) for n in dit_shards(root)]
    pipe = WanVideoPipeline(device=device, torch_dtype=dtype)
    pipe.dit = build(WanS2VModel, "diffsynth.models.wan_video_dit_s2v.WanS2VModel",
                     shards if len(shards) > 1 else shards[0], dit_kwargs)

    t5 = _shapes(root / T5_FILE)
    t5_kwargs = {"vocab": t5["token_embedding.weight"][0], "dim": t5["token_embedding.weight"][1],
                 "dim_attn": t5["blocks.0.attn.q.weight"][0], "dim_ffn": t5["blocks.0.ffn.fc1.weight"][0],
                 "num_heads": t5["blocks.0.pos_embedding.embedding.weight"][1],
                 "num_layers": len({k.split(".")[1] for k in t5 if k.startswith("blocks.")}),
                 "num_buckets": t5["blocks.0.pos_embedding.embedding.weight"][0], "dropout": 0.0}
    pipe.text_encoder = build(WanTextEncoder, "diffsynth.models.wan_video_text_encoder.WanTextEncoder",
                              str(root / T5_FILE), t5_kwargs)

    vae = _shapes(root / VAE_FILE)
    pipe.vae = build(_sized_vae, "diffsynth.models.wan_video_vae.WanVideoVAE", str(root / VAE_FILE),
                     {"z_dim": vae["conv2.weight"][0], "dim": vae["encoder.conv1.weight"][0]},
                     WanVideoVAEStateDictConverter)

    # The audio encoder class hard-codes wav2vec2-large; build it empty and put the folder's own model inside,
    # so the same code loads the real large checkpoint and a tiny one.
    with skip_model_initialization():
        audio = WanS2VAudioEncoder()
    audio.model = Wav2Vec2ForCTC.from_pretrained(str(root / WAV2VEC_DIR), dtype=dtype, local_files_only=True)
    pipe.audio_encoder = audio.to(device=device, dtype=dtype).eval()
    pipe.audio_processor = Wav2Vec2FeatureExtractor.from_pretrained(str(root / WAV2VEC_DIR), local_files_only=True)
    pipe.tokenizer = HuggingfaceTokenizer(name=str(root / TOKENIZER_DIR), seq_len=512, clean="whitespace")
    pipe.height_division_factor = pipe.width_division_factor = pipe.vae.upsampling_factor * 2
    pipe.vram_management_enabled = pipe.check_vram_management_state()
    return pipe
