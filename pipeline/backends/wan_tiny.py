"""Builds tiny random weights of the real Wan 2.2 S2V classes, offline, in the official checkpoint folder layout."""

from __future__ import annotations

import json
import re
import string
from pathlib import Path

from pipeline.backends.wan_layout import DIT_CONFIG, DIT_INDEX, T5_FILE, TOKENIZER_DIR, VAE_FILE, WAV2VEC_DIR, dit_shards

# Tiny but structurally faithful: head dim 24 (the 3-D RoPE splits it into 8/8/8), z_dim 16 (the frame packer
# hard-codes 16 latent channels), and a wav2vec2 with 24 layers because the DiT's audio encoder learns a
# weighted average over exactly 25 hidden states.
TINY_DIT = {
    "dim": 48, "ffn_dim": 96, "num_heads": 2, "num_layers": 2, "freq_dim": 32, "text_dim": 32,
    "in_dim": 16, "out_dim": 16, "cond_dim": 16, "audio_dim": 32, "num_audio_token": 4,
    "patch_size": [1, 2, 2], "eps": 1e-6, "audio_inject_layers": [0, 1], "enable_adain": True,
    "zero_timestep": True, "framepack_drop_mode": "padd",
}
TINY_T5 = {"dim": 32, "dim_attn": 32, "dim_ffn": 64, "num_heads": 2, "num_layers": 1, "num_buckets": 32}
TINY_VAE_DIM = 8
TINY_WAV2VEC = {
    "hidden_size": 32, "num_hidden_layers": 24, "num_attention_heads": 2, "intermediate_size": 64,
    "conv_dim": [32] * 7, "conv_kernel": [10, 3, 3, 3, 3, 2, 2], "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2, "do_stable_layer_norm": True,
    "feat_extract_norm": "layer", "vocab_size": 33, "layerdrop": 0.0, "mask_time_prob": 0.0,
}


def _tokenizer(out: Path) -> int:
    """A small Unigram tokenizer with umt5's special-token ids (pad 0, eos 1, unk 2); returns its size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pieces = ["<pad>", "</s>", "<unk>", "\u2581"] + list(string.ascii_letters + string.digits + string.punctuation)
    vocab = [(p, 0.0 if i < 3 else -float(len(p))) for i, p in enumerate(pieces)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=512)
    fast.save_pretrained(str(out))
    return len(pieces)


def _save_sharded(state: dict, folder: Path, shards: int) -> None:
    """diffusers-style shards + index, like the official DiT checkpoint (the loader must follow the index)."""
    from safetensors.torch import save_file

    keys = sorted(state)
    per = -(-len(keys) // shards)
    weight_map, total = {}, 0
    for s in range(shards):
        name = f"diffusion_pytorch_model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k].contiguous() for k in keys[s * per:(s + 1) * per]}
        save_file(part, str(folder / name))
        for k, v in part.items():
            weight_map[k] = name
            total += v.numel() * v.element_size()
    (folder / DIT_INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))


def make_tiny(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a complete tiny Wan2.2-S2V checkpoint folder to out_dir (created if needed) and return it."""
    from pipeline.backends.torch_compat import ensure_torchvision

    ensure_torchvision()
    import torch
    from diffsynth.models.wan_video_dit_s2v import WanS2VModel
    from diffsynth.models.wan_video_text_encoder import WanTextEncoder
    from diffsynth.models.wan_video_vae import VideoVAE_
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    vocab = _tokenizer(out / TOKENIZER_DIR)
    t5 = WanTextEncoder(vocab=max(128, vocab), dropout=0.0, **TINY_T5)
    torch.save(t5.state_dict(), out / T5_FILE)

    # The official VAE file holds the bare VideoVAE_ state dict (diffsynth adds the "model." prefix on load).
    vae = VideoVAE_(dim=TINY_VAE_DIM, z_dim=16)
    torch.save(vae.state_dict(), out / VAE_FILE)

    dit_kwargs = dict(TINY_DIT, patch_size=tuple(TINY_DIT["patch_size"]))
    dit = WanS2VModel(**dit_kwargs)
    _save_sharded({k: v.detach() for k, v in dit.state_dict().items()}, out, shards=2)
    (out / DIT_CONFIG).write_text(json.dumps({"_class_name": "WanModel_S2V", "model_type": "s2v", "tiny": True,
                                              **TINY_DIT}, indent=1))

    wdir = out / WAV2VEC_DIR
    w2v = Wav2Vec2ForCTC(Wav2Vec2Config(**TINY_WAV2VEC))
    w2v.save_pretrained(str(wdir), safe_serialization=True)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                             return_attention_mask=True).save_pretrained(str(wdir))
    (out / "configuration.json").write_text(json.dumps({"framework": "Pytorch", "task": "speech-to-video",
                                                        "note": "tiny random weights for tests (s2v models make-tiny)"}))
    return out


LORA_TARGET = re.compile(r"^blocks\.\d+\.(self_attn|cross_attn)\.(q|k|v|o)\.weight$|^blocks\.\d+\.ffn\.(0|2)\.weight$")


def make_tiny_lora(weights_dir: str | Path, out_file: str | Path, rank: int = 4, seed: int = 0,
                   strength: float = 0.5) -> Path:
    """Write a random LoRA for the DiT in weights_dir (its attention and FFN layers, shapes read from the shards)
    in the layout distillation LoRAs for Wan ship in: `diffusion_model.<layer>.lora_A/lora_B.weight`.
    `strength` sets the update's size relative to each layer's weights, so the frames visibly change."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file


    root = Path(weights_dir)
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for shard in dit_shards(root):
        with safe_open(str(root / shard), framework="pt", device="cpu") as f:
            for key in sorted(k for k in f.keys() if LORA_TARGET.match(k)):
                w = f.get_tensor(key).float()
                out_dim, in_dim = w.shape
                # entries of up @ down then have std = strength × the layer's weight std
                down = torch.randn(rank, in_dim, generator=gen)
                up = torch.randn(out_dim, rank, generator=gen) * (strength * float(w.std()) / rank ** 0.5)
                name = key[: -len(".weight")]
                state[f"diffusion_model.{name}.lora_A.weight"] = down.contiguous()
                state[f"diffusion_model.{name}.lora_B.weight"] = up.contiguous()
    if not state:
        raise ValueError(f"{root}: no DiT attention/FFN layers found to build a LoRA for")
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out))
    return out
