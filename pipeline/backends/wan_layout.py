"""The official Wan2.2-S2V-14B folder layout: the file names the loader reads, what is missing from a folder, and
which files make up the weights' identity. No torch needed."""

from __future__ import annotations

import json
from pathlib import Path

DIT_CONFIG = "config.json"
DIT_INDEX = "diffusion_pytorch_model.safetensors.index.json"
DIT_SINGLE = "diffusion_pytorch_model.safetensors"
T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
VAE_FILE = "Wan2.1_VAE.pth"
TOKENIZER_DIR = "google/umt5-xxl"
WAV2VEC_DIR = "wav2vec2-large-xlsr-53-english"


def dit_shards(root: Path) -> list[str]:
    """The DiT weight files: the shards named by the index, else the single unsharded file."""
    index = root / DIT_INDEX
    if index.is_file():
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    return [DIT_SINGLE]


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


def weights_files(root: Path) -> list[str]:
    """Every file the loader reads, relative to the folder: what the job key's weights fingerprint covers."""
    out = [DIT_CONFIG, T5_FILE, VAE_FILE, *dit_shards(root)]
    if (root / DIT_INDEX).is_file():
        out.append(DIT_INDEX)
    for sub in (TOKENIZER_DIR, WAV2VEC_DIR):
        if (root / sub).is_dir():
            out += sorted(str(p.relative_to(root)) for p in (root / sub).rglob("*")
                          if p.is_file() and not p.name.startswith("."))
    return out
