"""Speech recognition for `captions: auto`: Whisper from a local folder (transformers, offline), word timestamps."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np

from core.errors import ConfigError, RenderError
from pipeline.captions import Word

SAMPLE_RATE = 16000
ASR_VERSION = "1"  # bump when word extraction changes: it changes every auto-caption key

# file → the alternatives any one of which will do (transformers 4 and 5 name a few of them differently)
REQUIRED = {
    "config.json": ("config.json",),
    "generation_config.json": ("generation_config.json",),
    "weights": ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"),
    "feature extractor": ("preprocessor_config.json", "processor_config.json"),
    "tokenizer": ("tokenizer.json", "vocab.json"),
    "tokenizer_config.json": ("tokenizer_config.json",),
}


def missing_files(model_dir: str | Path | None) -> list[str]:
    """Every file the Whisper loader needs and the folder lacks (empty = complete)."""
    if not model_dir:
        return ["S2V_ASR_MODEL_DIR is not set"]
    d = Path(model_dir).expanduser()
    if not d.is_dir():
        return [f"{d} (no such folder)"]
    out = [" or ".join(alts) for alts in REQUIRED.values() if not any((d / a).is_file() for a in alts)]
    if (d / "vocab.json").is_file() and not (d / "tokenizer.json").is_file() and not (d / "merges.txt").is_file():
        out.append("merges.txt")
    idx = d / "model.safetensors.index.json"
    if idx.is_file() and not (d / "model.safetensors").is_file():
        try:
            shards = sorted(set(json.loads(idx.read_text())["weight_map"].values()))
        except (ValueError, KeyError, OSError):
            shards = []
            out.append("model.safetensors.index.json (unreadable)")
        out += [s for s in shards if not (d / s).is_file()]
    return out


def check_model_dir(model_dir: str | Path | None) -> Path:
    missing = missing_files(model_dir)
    if missing:
        raise ConfigError(f"Whisper model folder {model_dir or '(unset)'} is incomplete: missing "
                          + ", ".join(missing) + " — point S2V_ASR_MODEL_DIR at a folder saved by transformers "
                          "(e.g. openai/whisper-small), or build test weights with `s2v models make-tiny-asr DIR`")
    return Path(model_dir).expanduser()


def model_identity(model_dir: str | Path) -> str:
    """A short fingerprint of a model folder (name, configs, weight sizes): part of every auto-caption key."""
    d = Path(model_dir).expanduser()
    h = hashlib.sha256(d.name.encode())
    for name in ("config.json", "generation_config.json"):
        p = d / name
        h.update(p.read_bytes() if p.is_file() else b"-")
    for p in sorted(d.glob("*.safetensors")) + sorted(d.glob("*.bin")):
        h.update(f"{p.name}:{p.stat().st_size}".encode())
    return h.hexdigest()[:16]


def whisper_language(bcp47: str) -> str:
    """Whisper's language code for a BCP-47 tag (its primary subtag; Cantonese and Chinese share 'zh')."""
    return bcp47.split("-")[0].lower()


@functools.lru_cache(maxsize=2)
def _load(model_dir: str):
    """Model + processor, once per worker process (Ray reuses workers, so later jobs find it loaded)."""
    from pipeline.backends.torch_compat import ensure_torchvision

    ensure_torchvision()  # transformers imports torchvision when present; its CPU wheel needs two op schemas
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    model = WhisperForConditionalGeneration.from_pretrained(model_dir, local_files_only=True).eval()
    processor = WhisperProcessor.from_pretrained(model_dir, local_files_only=True)
    if not getattr(model.generation_config, "alignment_heads", None):
        raise ConfigError(f"{model_dir}: generation_config.json has no alignment_heads, so Whisper cannot give word "
                          "timestamps; use a checkpoint that has them (every openai/whisper-* does)")
    return model, processor


def transcribe(pcm: np.ndarray, model_dir: str | Path, language: str, threads: int = 1) -> list[Word]:
    """Words with start/end seconds for 16 kHz mono float PCM; long audio uses Whisper's own sequential
    long-form decoding (30 s windows, each continuing from the last timestamp)."""
    import torch

    d = str(check_model_dir(model_dir))
    torch.set_num_threads(max(1, threads))
    model, processor = _load(d)
    lang = whisper_language(language)
    multilingual = getattr(model.generation_config, "is_multilingual", True)
    known = (getattr(model.generation_config, "lang_to_id", None) or {}) if multilingual else {"<|en|>": 0}
    if f"<|{lang}|>" not in known:
        raise ConfigError(f"Whisper model {d} does not know language '{language}'")
    task = {"language": lang, "task": "transcribe"} if multilingual else {}  # *.en models take neither
    long = len(pcm) > 30 * SAMPLE_RATE
    feats = processor.feature_extractor(pcm, sampling_rate=SAMPLE_RATE, return_tensors="pt",
                                        truncation=not long, padding="longest" if long else "max_length",
                                        return_attention_mask=True)
    try:
        with torch.inference_mode():
            out = model.generate(feats.input_features, attention_mask=feats.attention_mask, **task,
                                 return_timestamps=True, return_token_timestamps=True,
                                 return_segments=True, return_dict_in_generate=True)
    except (RuntimeError, ValueError) as e:
        raise RenderError(f"speech recognition failed: {e}") from None
    return words_from_segments(out["segments"][0], processor.tokenizer, model.generation_config, lang)


def words_from_segments(segments, tokenizer, generation_config, language: str) -> list[Word]:
    """Group each segment's text tokens into words: a token whose text begins with a space starts a word
    (languages written without spaces: every token is a word). A token starts at its DTW time and ends where
    the next one starts (the segment's end for the last)."""
    first_ts = int(generation_config.no_timestamps_token_id) + 1
    special = set(tokenizer.all_special_ids)
    spaced = language not in {"zh", "ja", "th", "lo", "km", "my", "yue", "bo"}
    words: list[Word] = []
    for seg in segments:
        ids = [int(t) for t in seg["tokens"]]
        times = [float(t) for t in seg["token_timestamps"]]
        seg_end = float(seg["end"])
        keep = [i for i, t in enumerate(ids) if t < first_ts and t not in special]
        group: list[int] = []

        def flush(next_start: float) -> None:
            if group:
                text = tokenizer.decode([ids[i] for i in group], skip_special_tokens=True).strip()
                start = times[group[0]]
                words.append(Word(text, start, max(start, next_start)))
                group.clear()

        for i in keep:
            piece = tokenizer.convert_ids_to_tokens(ids[i]) or ""
            if group and (not spaced or piece.startswith(("Ġ", " "))):
                flush(times[i])
            group.append(i)
        if keep:
            nxt = keep[-1] + 1
            flush(times[nxt] if nxt < len(times) else max(seg_end, times[keep[-1]]))
    return words
