"""Loads the Wan 2.2 S2V pipeline on diffsynth: dtype names, offload modes as diffsynth's vram_config, LoRA, freeing."""

from __future__ import annotations

import gc
import json
from pathlib import Path

from core.errors import ConfigError
from pipeline.backends.wan_layout import DIT_CONFIG, DIT_INDEX, T5_FILE, TOKENIZER_DIR, VAE_FILE, WAV2VEC_DIR, dit_shards

# Every name Settings.wan_dtype accepts, and the torch dtype it means (a test checks the two agree).
DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
          "fp32": "float32", "float32": "float32"}
OFFLOAD_MODES = ("cpu", "disk")
# The 14B DiT, used for config.json keys a checkpoint leaves out (diffsynth's registry entry for Wan2.2-S2V-14B).
DIT_DEFAULTS = {"dim": 5120, "in_dim": 16, "ffn_dim": 13824, "out_dim": 16, "text_dim": 4096, "freq_dim": 256,
                "eps": 1e-6, "patch_size": (1, 2, 2), "num_heads": 40, "num_layers": 40, "cond_dim": 16,
                "audio_dim": 1024, "num_audio_token": 4}
DIT_OPTIONAL = ("enable_adain", "audio_inject_layers", "zero_timestep", "add_last_motion", "framepack_drop_mode")


def torch_dtype(name: str | None, device: str):
    """The torch dtype for a Settings.wan_dtype name; None = bf16 on CUDA (what the 14B was trained in), fp32 on CPU."""
    import torch

    if name is None:
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"wan_dtype '{name}' is not one of {', '.join(DTYPES)}")
    return getattr(torch, DTYPES[name])


def settings_problem(offload: str | None, vram_limit: float | None) -> str | None:
    """Why these memory settings cannot work (no torch needed), or None."""
    if offload is not None and offload not in OFFLOAD_MODES:
        return f"wan_offload '{offload}' is not one of {', '.join(OFFLOAD_MODES)} (leave it unset to keep every model on the GPU)"
    if vram_limit is not None and offload is None:
        return ("wan_vram_limit only limits offloaded models: set wan_offload=cpu (layers stream in from RAM) "
                "or wan_offload=disk, or unset wan_vram_limit")
    return None


# ---- diffsynth's vram_config, per model ----------------------------------------------------------------------
def _config(offload_dtype, offload_device, onload_dtype, onload_device, dtype, device) -> dict:
    return {"offload_dtype": offload_dtype, "offload_device": offload_device, "onload_dtype": onload_dtype,
            "onload_device": onload_device, "preparing_dtype": dtype, "preparing_device": device,
            "computation_dtype": dtype, "computation_device": device}


def vram_configs(device: str, dtype, offload: str | None, vram_limit: float | None, dit_files: list[str]) -> dict:
    """diffsynth's vram_config for the DiT, the T5 and the VAE, following its VRAM management docs:
    - unset: every model resident on the device (offload_* None: diffsynth wraps nothing);
    - cpu: "CPU Offload" (idle models in RAM, the running one on the GPU); with a vram_limit, "Dynamic VRAM
      management" (onload stays in RAM and layers move to the GPU while there is room under the limit);
    - disk: "Disk Offload" for the safetensors DiT (layers read from disk when they run). diffsynth's disk offload
      reads only .safetensors: a .pth file (the T5, the VAE) would be torch.load-ed whole onto the first non-disk
      device, the GPU, so those two get the cpu mode instead.
    On a CPU device "cpu" has nowhere to go (everything is in RAM already) and vram_limit has no VRAM to measure."""
    on_cuda = str(device).startswith("cuda")
    resident = _config(None, None, dtype, device, dtype, device)
    if offload is None or (offload == "cpu" and not on_cuda):
        return {"dit": resident, "text_encoder": resident, "vae": resident}
    in_ram = _config(dtype, "cpu", dtype, "cpu" if (vram_limit is not None and on_cuda) else device, dtype, device)
    if not on_cuda:
        in_ram = resident
    if offload == "cpu":
        return {"dit": in_ram, "text_encoder": in_ram, "vae": in_ram}
    if not all(f.endswith(".safetensors") for f in dit_files):
        raise ConfigError("wan_offload=disk needs the DiT as .safetensors files (diffsynth reads nothing else lazily); "
                          f"found {', '.join(dit_files)}. Use wan_offload=cpu")
    return {"dit": _config("disk", "disk", "disk", "disk", dtype, device), "text_encoder": in_ram, "vae": in_ram}


def load_device(cfg: dict) -> str:
    """Where diffsynth's load_model puts a model's weights first: the first non-disk device of its vram_config."""
    devices = [cfg["offload_device"], cfg["onload_device"], cfg["preparing_device"], cfg["computation_device"]]
    return str([d for d in devices if d not in (None, "disk")][0])


# ---- loading ---------------------------------------------------------------------------------------------------
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
    from pipeline.backends.torch_compat import ensure_cpu_empty_cache, ensure_torchvision

    ensure_torchvision()
    ensure_cpu_empty_cache()
    from diffsynth.core.loader.model import load_model
    from diffsynth.core.vram.initialization import skip_model_initialization
    from diffsynth.models.model_loader import ModelPool
    from diffsynth.models.wan_video_dit_s2v import WanS2VModel
    from diffsynth.models.wan_video_text_encoder import HuggingfaceTokenizer, WanTextEncoder
    from diffsynth.models.wav2vec import WanS2VAudioEncoder
    from diffsynth.pipelines.wan_video import WanVideoPipeline
    from diffsynth.utils.state_dict_converters.wan_video_vae import WanVideoVAEStateDictConverter
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

    shards = [str(root / n) for n in dit_shards(root)]
    limit = vram_limit if str(device).startswith("cuda") else None
    vram = vram_configs(device, dtype, offload, limit, shards)
    pool = ModelPool()

    def build(factory, registry_name: str, path, kwargs: dict, cfg: dict, converter=None):
        module_map = pool.fetch_module_map(registry_name, cfg)
        return load_model(factory, path, kwargs, dtype, device, converter, use_disk_map=True, vram_config=cfg,
                          module_map=module_map, vram_limit=limit)

    cfg = json.loads((root / DIT_CONFIG).read_text())
    dit_kwargs = {k: cfg.get(k, v) for k, v in DIT_DEFAULTS.items()}
    dit_kwargs.update({k: cfg[k] for k in DIT_OPTIONAL if k in cfg})
    dit_kwargs["patch_size"] = tuple(dit_kwargs["patch_size"])
    pipe = WanVideoPipeline(device=device, torch_dtype=dtype)
    pipe.dit = build(WanS2VModel, "diffsynth.models.wan_video_dit_s2v.WanS2VModel",
                     shards if len(shards) > 1 else shards[0], dit_kwargs, vram["dit"])

    t5 = _shapes(root / T5_FILE)
    t5_kwargs = {"vocab": t5["token_embedding.weight"][0], "dim": t5["token_embedding.weight"][1],
                 "dim_attn": t5["blocks.0.attn.q.weight"][0], "dim_ffn": t5["blocks.0.ffn.fc1.weight"][0],
                 "num_heads": t5["blocks.0.pos_embedding.embedding.weight"][1],
                 "num_layers": len({k.split(".")[1] for k in t5 if k.startswith("blocks.")}),
                 "num_buckets": t5["blocks.0.pos_embedding.embedding.weight"][0], "dropout": 0.0}
    pipe.text_encoder = build(WanTextEncoder, "diffsynth.models.wan_video_text_encoder.WanTextEncoder",
                              str(root / T5_FILE), t5_kwargs, vram["text_encoder"])

    vae = _shapes(root / VAE_FILE)
    pipe.vae = build(_sized_vae, "diffsynth.models.wan_video_vae.WanVideoVAE", str(root / VAE_FILE),
                     {"z_dim": vae["conv2.weight"][0], "dim": vae["encoder.conv1.weight"][0]}, vram["vae"],
                     WanVideoVAEStateDictConverter)

    # The audio encoder class hard-codes wav2vec2-large; build it empty and put the folder's own model inside,
    # so the same code loads the real large checkpoint and a tiny one. It stays resident (≈0.6 GB in bf16).
    with skip_model_initialization():
        audio = WanS2VAudioEncoder()
    audio.model = Wav2Vec2ForCTC.from_pretrained(str(root / WAV2VEC_DIR), dtype=dtype, local_files_only=True)
    pipe.audio_encoder = audio.to(device=device, dtype=dtype).eval()
    pipe.audio_processor = Wav2Vec2FeatureExtractor.from_pretrained(str(root / WAV2VEC_DIR), local_files_only=True)
    pipe.tokenizer = HuggingfaceTokenizer(name=str(root / TOKENIZER_DIR), seq_len=512, clean="whitespace")
    pipe.height_division_factor = pipe.width_division_factor = pipe.vae.upsampling_factor * 2
    pipe.vram_management_enabled = pipe.check_vram_management_state()
    return pipe


def free_memory(device: str) -> None:
    """Give back what a dropped pipeline held: Python cycles first (diffsynth's wrappers keep some), then CUDA's
    cached blocks, so the next load starts from an empty card instead of beside the old 46 GB."""
    gc.collect()
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


# ---- LoRA ------------------------------------------------------------------------------------------------------
def fuse_lora(pipe, path: str, scale: float) -> tuple[str, ...]:
    """Fuse a LoRA into the DiT with diffsynth's own loader (GeneralLoRALoader: lora_A/lora_B or lora_down/lora_up
    keys, a `diffusion_model.` prefix, alpha keys); returns the DiT layers it changed, for restore_weights.
    diffsynth can only hot-load a LoRA into layers it wraps one by one, and its S2V DiT map wraps whole blocks,
    so fusing into resident weights is the one way that reaches the attention and FFN layers."""
    from diffsynth.core.loader import load_state_dict

    if getattr(pipe.dit, "vram_management_enabled", False):
        raise ConfigError("a LoRA needs the DiT resident (wan_offload unset): under diffsynth's VRAM management the "
                          "S2V DiT's blocks are wrapped whole and its LoRA loader cannot reach their layers")
    try:
        raw = load_state_dict(str(path), torch_dtype=pipe.torch_dtype, device=pipe.device)
    except Exception as exc:  # noqa: BLE001 - safetensors/torch raise many types for a bad file
        raise ConfigError(f"cannot read LoRA {path}: {exc}") from exc
    loader = pipe.lora_loader(torch_dtype=pipe.torch_dtype, device=pipe.device)
    lora = loader.convert_state_dict(raw)
    modules = dict(pipe.dit.named_modules())
    targets = sorted(k[: -len(".lora_B.weight")] for k in lora if k.endswith(".lora_B.weight"))
    hit = [n for n in targets if n in modules]
    if not hit:
        example = next((n for n, m in modules.items() if n.startswith("blocks.0.") and hasattr(m, "weight")), "")
        raise ConfigError(f"LoRA {path} matches no layer of the S2V DiT (its keys name e.g. "
                          f"'{targets[0] if targets else 'nothing'}'; the DiT's layers are named like '{example}')")
    for name in hit:  # check every shape before changing any weight: a half-fused DiT would be worse than none
        w, up, down = modules[name].weight, lora[f"{name}.lora_B.weight"], lora[f"{name}.lora_A.weight"]
        if (up.shape[0], down.shape[-1]) != (w.shape[0], w.shape[1]) or up.shape[1] != down.shape[0]:
            raise ConfigError(f"LoRA {path}: layer {name} is {tuple(w.shape)} in the DiT but the LoRA gives "
                              f"{tuple(up.shape)} x {tuple(down.shape)}; is it a LoRA for another model size?")
    pipe.load_lora(pipe.dit, state_dict={k: lora[k] for n in hit for k in (f"{n}.lora_A.weight", f"{n}.lora_B.weight")},
                   alpha=scale, hotload=False, verbose=0)
    return tuple(hit)


def restore_weights(pipe, root: Path, layers: tuple[str, ...]) -> None:
    """Put the DiT layers a LoRA changed back to the checkpoint's exact values, read again from the shards
    (subtracting the delta would not give the same bits back, and a job without the LoRA must render as if the
    actor had never seen one)."""
    import torch
    from safetensors import safe_open

    index = root / DIT_INDEX
    weight_map = json.loads(index.read_text())["weight_map"] if index.is_file() else None
    modules = dict(pipe.dit.named_modules())
    by_file: dict[str, list[str]] = {}
    for name in layers:
        key = f"{name}.weight"
        by_file.setdefault(weight_map[key] if weight_map else dit_shards(root)[0], []).append(name)
    with torch.no_grad():
        for fname, names in by_file.items():
            with safe_open(str(root / fname), framework="pt", device="cpu") as f:
                for name in names:
                    param = modules[name].weight
                    param.copy_(f.get_tensor(f"{name}.weight").to(param.dtype))
