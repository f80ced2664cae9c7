"""Builds tiny random Whisper weights of the real transformers classes, offline, in a from_pretrained folder."""

from __future__ import annotations

from pathlib import Path

# Structurally Whisper: 80 mel bins and 1500 encoder positions (a 30 s window), a byte-level BPE tokenizer with
# Whisper's special tokens in Whisper's order (languages, tasks, <|notimestamps|>, then 1501 timestamp tokens).
TINY = {"d_model": 64, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 2,
        "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "num_mel_bins": 80,
        "max_source_positions": 1500, "max_target_positions": 64}
MAX_LENGTH = 40  # tokens per 30 s window: random weights rarely stop early, so this bounds test time


def _byte_vocab() -> dict[str, int]:
    """GPT-2's printable stand-ins for the 256 bytes (what Whisper's byte-level BPE is built on)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return {chars[b]: b for b in range(256)}


def make_tiny_asr(directory: str | Path, seed: int = 0) -> Path:
    """Write config, generation config (with alignment heads: word timestamps), weights, tokenizer, features."""
    from pipeline.backends.torch_compat import ensure_torchvision

    ensure_torchvision()
    import torch
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration, WhisperProcessor, WhisperTokenizer)
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    out = Path(directory).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    vocab = _byte_vocab()
    vocab["<|endoftext|>"] = len(vocab)
    tok = WhisperTokenizer(vocab=vocab, merges=[])
    specials = ["<|startoftranscript|>", *[f"<|{k}|>" for k in LANGUAGES], "<|translate|>", "<|transcribe|>",
                "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
    tok.add_special_tokens({"additional_special_tokens": specials})
    tok.add_tokens([f"<|{i * 0.02:.2f}|>" for i in range(1501)])
    ids = tok.convert_tokens_to_ids
    eot, sot = ids("<|endoftext|>"), ids("<|startoftranscript|>")
    suppress_begin = [ids("Ġ"), eot]
    cfg = WhisperConfig(vocab_size=len(tok), pad_token_id=eot, bos_token_id=eot, eos_token_id=eot,
                        decoder_start_token_id=sot, begin_suppress_tokens=suppress_begin, suppress_tokens=[], **TINY)
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(cfg).eval()
    model.generation_config = GenerationConfig(
        alignment_heads=[[0, 0], [1, 1]], begin_suppress_tokens=suppress_begin, suppress_tokens=[],
        bos_token_id=eot, eos_token_id=eot, pad_token_id=eot, decoder_start_token_id=sot, is_multilingual=True,
        lang_to_id={f"<|{k}|>": ids(f"<|{k}|>") for k in LANGUAGES},
        task_to_id={"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")},
        no_timestamps_token_id=ids("<|notimestamps|>"), prev_sot_token_id=ids("<|startofprev|>"),
        max_initial_timestamp_index=50, max_length=MAX_LENGTH)
    model.save_pretrained(out)
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tok).save_pretrained(out)
    return out
