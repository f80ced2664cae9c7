"""What a local input file is, from its first bytes: `render --cluster` uploads a file only when its content is the
kind its field names (a credentials file is not audio, whatever the manifest says)."""

from __future__ import annotations

import re
from pathlib import Path

HEAD_BYTES = 64 * 1024
# an SRT/WebVTT timing line: 00:00:01,000 --> 00:00:02,500 (hours optional in WebVTT)
_TIMING = re.compile(r"(?m)^\s*(?:\d+:)?\d{1,2}:\d{2}[,.]\d{1,3}\s+-->\s+(?:\d+:)?\d{1,2}:\d{2}[,.]\d{1,3}")
# the manifest field → the kind of file it takes
FIELD_KINDS = {"audio": "audio", "image": "image", "pose": "video", "captions": "captions", "lora": "safetensors"}
WHAT = {"audio": "an audio file (WAV, FLAC, MP3, M4A/AAC, Ogg/Opus, AIFF, WebM/Matroska)",
        "image": "an image (PNG, JPEG, WebP, GIF, BMP, TIFF)",
        "video": "a video (MP4/MOV, WebM/Matroska, AVI, Ogg)",
        "captions": "a caption file (UTF-8 SRT or WebVTT)",
        "safetensors": "a .safetensors file"}


def _containers(head: bytes, size: int) -> set[str]:
    riff = head[8:12] if head[:4] == b"RIFF" else b""
    kinds: set[str] = set()
    if riff == b"WAVE" or head[:4] in (b"fLaC", b"caff") or head[:3] == b"ID3" or (
            head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC")):
        kinds.add("audio")
    if len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        kinds.add("audio")  # an MPEG audio frame (MP3) or ADTS (AAC) with no container
    if head[4:8] == b"ftyp" or head[:4] in (b"OggS", b"\x1aE\xdf\xa3") or head[:4] == b"\x30\x26\xb2\x75":
        kinds |= {"audio", "video"}  # MP4/M4A/MOV, Ogg, WebM/Matroska, ASF: one container for both
    if riff == b"AVI ":
        kinds.add("video")
    if (head[:8] == b"\x89PNG\r\n\x1a\n" or head[:3] == b"\xff\xd8\xff" or riff == b"WEBP"
            or head[:6] in (b"GIF87a", b"GIF89a") or head[:4] in (b"II*\x00", b"MM\x00*")
            or (head[:2] == b"BM" and int.from_bytes(head[2:6], "little") == size)):  # BMP: its size in its header
        kinds.add("image")
    return kinds


def _is_safetensors(head: bytes, size: int) -> bool:
    """8 bytes of header length (little-endian), then the JSON header itself."""
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n <= size - 8 and head[8:9] == b"{"


def _is_captions(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:  # a multi-byte character cut at the end of the head is still text
        if e.start < len(head) - 4:
            return False
        text = head[:e.start].decode("utf-8")
    text = text.lstrip("\ufeff")
    return text.startswith("WEBVTT") or _TIMING.search(text) is not None


def kinds_of(path: Path) -> set[str]:
    """The kinds of file `path`'s content can be (empty: none we take)."""
    with open(path, "rb") as fh:
        head = fh.read(HEAD_BYTES)
    size = path.stat().st_size
    kinds = _containers(head, size)
    if _is_safetensors(head, size):
        kinds.add("safetensors")
    if _is_captions(head):
        kinds.add("captions")
    return kinds


def misfit(field: str, path: Path) -> str | None:
    """Why `path` is not the kind of file `field` takes (None when it is)."""
    want = FIELD_KINDS[field]
    try:
        if want in kinds_of(path):
            return None
    except OSError as e:
        return f"cannot read {path}: {e.strerror or e}"
    return f"{path} is not {WHAT[want]} (judged by its content, not its name)"
