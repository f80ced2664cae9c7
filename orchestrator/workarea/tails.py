"""Motion tails stored losslessly: byte-shuffled values in checksummed zstd frames, coded on a few threads."""

from __future__ import annotations

import json
import struct
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from core.errors import StorageError

# A Wan tail is float32 (1,3,73,H,W): 350 MB at 832×480. Byte-shuffled (byte i of every value together) and
# compressed with zstd, bit-exactly. Values decoded from bf16 activations have two zero low bytes, so a 14B run's
# tails shrink ~4×; full float32 ones ~1.35×. Chunks are independent zstd frames (each with its checksum),
# coded on a few threads, so neither side ever holds a second full-size copy of the tail.
TAIL_MAGIC = b"S2VTAIL1"
CHUNK_ITEMS = 1 << 21  # 8 MiB of float32 per frame: ratios as good as one frame, and parallel
ZSTD_LEVEL = 3
_KINDS = "fiub"  # plain numbers only: a tail never unpickles anything


def _zstd():
    try:
        from compression import zstd  # Python ≥ 3.14
    except ImportError:
        from backports import zstd
    return zstd


def _threads(n_chunks: int) -> int:
    import os

    return max(1, min(4, os.cpu_count() or 1, n_chunks))


def encode_tail(tail: np.ndarray) -> bytes:
    """Header (magic, length, JSON: dtype, shape, chunk sizes) + one zstd frame per chunk of byte-shuffled values."""
    zstd = _zstd()
    a = np.asarray(tail, order="C")  # not ascontiguousarray: that turns a 0-d array into 1-d
    if a.dtype.kind not in _KINDS:
        raise ValueError(f"a motion tail must hold numbers, not {a.dtype}")
    flat, isz = a.reshape(-1), a.dtype.itemsize
    opts = {zstd.CompressionParameter.compression_level: ZSTD_LEVEL, zstd.CompressionParameter.checksum_flag: 1}

    def one(i: int) -> bytes:
        block = flat[i : i + CHUNK_ITEMS].view(np.uint8).reshape(-1, isz).T.tobytes()  # the shuffle is the copy
        return zstd.compress(block, options=opts)

    starts = range(0, max(flat.size, 1), CHUNK_ITEMS)
    with ThreadPoolExecutor(max_workers=_threads(len(starts))) as pool:
        frames = list(pool.map(one, starts))
    head = json.dumps({"dtype": a.dtype.str, "shape": list(a.shape), "chunk_items": CHUNK_ITEMS, "codec": "zstd",
                       "shuffle": isz, "frames": [len(f) for f in frames]}).encode()
    return b"".join([TAIL_MAGIC, struct.pack("<I", len(head)), head, *frames])


def decode_tail(data: bytes) -> np.ndarray:
    """Inverse of encode_tail; also reads plain .npy tails (work areas from before compression)."""
    if data[:6] == b"\x93NUMPY":
        import io

        return np.load(io.BytesIO(data), allow_pickle=False)
    if data[: len(TAIL_MAGIC)] != TAIL_MAGIC:
        raise StorageError("not a motion tail checkpoint (unknown format); delete the job's checkpoints to re-render")
    zstd = _zstd()
    view = memoryview(data)
    n_head = struct.unpack_from("<I", data, len(TAIL_MAGIC))[0]
    off = len(TAIL_MAGIC) + 4 + n_head
    head = json.loads(bytes(view[len(TAIL_MAGIC) + 4 : off]))
    dtype = np.dtype(head["dtype"])
    if dtype.kind not in _KINDS or head.get("codec") != "zstd" or head.get("shuffle") != dtype.itemsize:
        raise StorageError(f"motion tail checkpoint with an unsupported layout {head}")
    if off + sum(head["frames"]) != len(data):
        raise StorageError("motion tail checkpoint is truncated; delete the job's checkpoints to re-render")
    n, chunk, isz, offsets = int(np.prod(head["shape"], dtype=np.int64)), int(head["chunk_items"]), dtype.itemsize, []
    if chunk <= 0 or len(head["frames"]) != max(1, -(-n // chunk)):
        raise StorageError(f"motion tail checkpoint with an inconsistent header {head}")
    out = np.empty(n, dtype=dtype)
    for size in head["frames"]:
        offsets.append((off, size))
        off += size

    def one(i: int) -> None:
        start, size = offsets[i]
        try:
            raw = zstd.decompress(view[start : start + size])  # checks the frame's checksum
        except zstd.ZstdError as e:
            raise StorageError(f"motion tail checkpoint is corrupt ({e}); delete the job's checkpoints") from None
        dest = out[i * chunk : (i + 1) * chunk]
        if len(raw) != dest.nbytes:
            raise StorageError("motion tail checkpoint does not match its header; delete the job's checkpoints")
        dest.view(np.uint8).reshape(-1, isz)[:] = np.frombuffer(raw, np.uint8).reshape(isz, -1).T

    with ThreadPoolExecutor(max_workers=_threads(len(offsets))) as pool:
        list(pool.map(one, range(len(offsets))))
    return out.reshape(head["shape"])
