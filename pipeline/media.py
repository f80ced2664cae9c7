"""ffmpeg: find the binary, build argv lists with pure functions, run them in one place, probe with PyAV."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from core.errors import MediaError, RenderError, TransientError

# Identical encoder parameters for every clip are what make stream-copy concatenation valid.
BITEXACT = ["-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact", "-map_metadata", "-1"]
# Colour: RGB → Y'CbCr with the BT.709 matrix in limited ("tv") range, and the stream tagged BT.709 everywhere
# (H.264 VUI + the MP4 colr atom), which is what players assume for HD anyway and now also read. Without tags a
# player guesses from the size (BT.601 below 720p in most), so untagged BT.601 looked right small and shifted
# hues at 720p and above. Part of the job key: clips of one stitch must share it.
COLOUR = "bt709-tv"
COLOUR_TAGS = ["-color_primaries", "bt709", "-color_trc", "bt709", "-colorspace", "bt709", "-color_range", "tv"]
# swscale does the conversion with these matrices; setparams stamps the frames, because ffmpeg ≥ 7 takes the
# encoder's colour fields from the frames and the -color_* options alone would leave primaries/transfer unset.
COLOUR_FILTER = ("scale=out_color_matrix=bt709:out_range=tv:flags=accurate_rnd+full_chroma_int,format=yuv420p,"
                 "setparams=color_primaries=bt709:color_trc=bt709:colorspace=bt709:range=tv")


@functools.lru_cache(maxsize=1)
def ffmpeg_bin() -> str:
    """The system ffmpeg when present, else the static build shipped by imageio-ffmpeg."""
    env = os.environ.get("S2V_FFMPEG")
    if env:
        return env
    found = shutil.which("ffmpeg")
    if found:
        return found
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


# ---------- argv builders (pure) ----------

def decode_audio_argv(src: str, sample_rate: int = 16000) -> list[str]:
    """Any ffmpeg-readable audio → float32 little-endian mono PCM on stdout."""
    return ["-nostdin", "-v", "error", "-i", src, "-map", "0:a:0", "-vn", "-ac", "1", "-ar", str(sample_rate),
            "-f", "f32le", "-acodec", "pcm_f32le", "pipe:1"]


@dataclass(frozen=True)
class EncodeParams:
    fps: int
    width: int
    height: int
    crf: int = 18
    preset: str = "veryfast"


def encode_clip_argv(p: EncodeParams, dest: str) -> list[str]:
    """Raw RGB frames on stdin → H.264 clip in BT.709 (converted and tagged). Fixed GOP and one thread: same
    input, same bytes."""
    return ["-nostdin", "-v", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{p.width}x{p.height}", "-r", str(p.fps), "-i", "pipe:0",
            "-an", "-vf", COLOUR_FILTER, "-c:v", "libx264", "-preset", p.preset, "-crf", str(p.crf),
            "-pix_fmt", "yuv420p", *COLOUR_TAGS,
            "-g", "1000", "-keyint_min", "1000", "-sc_threshold", "0", "-bf", "0", "-threads", "1",
            "-x264-params", "threads=1:sliced-threads=0",
            "-video_track_timescale", str(p.fps * 1000), *BITEXACT, "-f", "mp4", dest]


def concat_list(paths: Sequence[str]) -> str:
    """The concat demuxer's list file content; quotes escaped as the demuxer expects."""
    return "".join("file '" + str(p).replace("'", "'\\''") + "'\n" for p in paths)


def stitch_argv(list_file: str, audio_src: str, dest: str, audio_bitrate: str = "192k",
                copy_audio: bool = False) -> list[str]:
    """Concatenate clips by stream copy and mux the ORIGINAL audio, moov atom first. copy_audio when the audio
    is already AAC (the source itself, or encoded once per job by encode_audio_argv while the job rendered)."""
    audio = ["-c:a", "copy"] if copy_audio else ["-c:a", "aac", "-b:a", audio_bitrate, "-ac", "2"]
    return ["-nostdin", "-v", "error", "-y", "-f", "concat", "-safe", "0", "-i", list_file, "-i", audio_src,
            "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", *audio,
            *BITEXACT, "-movflags", "+faststart", "-f", "mp4", dest]


def encode_audio_argv(src: str, dest: str, audio_bitrate: str = "192k") -> list[str]:
    """The job's source audio → AAC in MP4, with the same parameters the stitch would use."""
    return ["-nostdin", "-v", "error", "-y", "-i", src, "-map", "0:a:0", "-vn", "-c:a", "aac", "-b:a", audio_bitrate,
            "-ac", "2", *BITEXACT, "-f", "mp4", dest]


# A JPEG is BT.601 full range by definition (JFIF), and every viewer decodes it so: ffmpeg would only expand the
# range and keep BT.709's matrix, turning pure green into (19, 255, 9). Convert the matrix explicitly.
POSTER_FILTER = ("scale=in_color_matrix=bt709:in_range=tv:out_color_matrix=bt601:out_range=pc"
                 ":flags=accurate_rnd+full_chroma_int,format=yuvj420p")


def poster_argv(video: str, at_s: float, dest: str) -> list[str]:
    """One frame of a stitched (BT.709) video as a JFIF JPEG."""
    return ["-nostdin", "-v", "error", "-y", "-ss", f"{at_s:.3f}", "-i", video, "-frames:v", "1",
            "-vf", POSTER_FILTER, "-q:v", "3", *BITEXACT, "-f", "image2", "-c:v", "mjpeg", dest]


# ---------- the one place ffmpeg runs ----------

def run_ffmpeg(args: list[str], *, input_bytes: bytes | None = None, what: str = "ffmpeg",
               timeout_s: float = 3600, media_error: bool = False, log: bool = False) -> bytes:
    """Run ffmpeg; raise with its stderr. media_error=True turns a failure into a user-facing MediaError.
    Only transient failures (a hung or unstartable process) are retried, per the "ffmpeg" policy.
    log=True returns ffmpeg's log (stderr) instead of stdout: measuring filters (loudnorm, ebur128) print there."""
    from core.retry import retrying

    return retrying("ffmpeg")(_run_ffmpeg_once, args, input_bytes, what, timeout_s, media_error, log)


def _run_ffmpeg_once(args, input_bytes, what, timeout_s, media_error, log=False) -> bytes:
    argv = [ffmpeg_bin(), *args]
    try:
        proc = subprocess.run(argv, input=input_bytes, capture_output=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise TransientError(f"{what}: ffmpeg timed out after {timeout_s:.0f}s") from None
    except FileNotFoundError as e:
        raise RenderError(f"{what}: ffmpeg not found at {argv[0]}: {e}") from None
    except OSError as e:  # EAGAIN, ENOMEM at fork: worth another try
        raise TransientError(f"{what}: cannot start ffmpeg at {argv[0]}: {e}") from None
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip()[-2000:] or f"exit code {proc.returncode}"
        cls = MediaError if media_error else RenderError
        raise cls(f"{what}: {err}")
    return proc.stderr if log else proc.stdout


def ffmpeg_chunks(args: list[str], chunk_bytes: int, *, what: str = "ffmpeg", timeout_s: float = 3600,
                  media_error: bool = False) -> Iterator[bytes]:
    """Run ffmpeg and yield its stdout in pieces of chunk_bytes (the last may be shorter), so a long decode never
    sits in memory whole. Raises like run_ffmpeg once the output ends; closing the generator early kills ffmpeg."""
    argv = [ffmpeg_bin(), *args]
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: ffmpeg can never block on a full stderr pipe
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        except FileNotFoundError as e:
            raise RenderError(f"{what}: ffmpeg not found at {argv[0]}: {e}") from None
        except OSError as e:
            raise TransientError(f"{what}: cannot start ffmpeg at {argv[0]}: {e}") from None
        timer = threading.Timer(timeout_s, proc.kill)
        timer.start()
        try:
            while buf := proc.stdout.read(chunk_bytes):
                yield buf
            rc = proc.wait()
            if timer.finished.is_set() and rc != 0:
                raise TransientError(f"{what}: ffmpeg timed out after {timeout_s:.0f}s")
            if rc != 0:
                err.seek(0)
                msg = err.read().decode("utf-8", "replace").strip()[-2000:] or f"exit code {rc}"
                raise (MediaError if media_error else RenderError)(f"{what}: {msg}")
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()


class FrameWriter:
    """Streams raw frames into an encoding ffmpeg process (frames never all sit in memory)."""

    def __init__(self, params: EncodeParams, dest: str):
        self.dest = dest
        self.proc = subprocess.Popen([ffmpeg_bin(), *encode_clip_argv(params, dest)],
                                     stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        self.frames = 0

    def write(self, frame) -> None:
        self.proc.stdin.write(memoryview(frame).cast("B"))
        self.frames += 1

    def close(self) -> None:
        self.proc.stdin.close()
        err = self.proc.stderr.read()
        rc = self.proc.wait()
        if rc != 0:
            raise RenderError(f"encoding {self.dest}: {err.decode('utf-8', 'replace')[-2000:]}")


def encode_frames(frames, params: EncodeParams, dest: str | Path) -> None:
    """Encode a (T,H,W,3) uint8 array to an H.264 clip."""
    w = FrameWriter(params, str(dest))
    try:
        for f in frames:
            w.write(f)
    finally:
        w.close()


# ---------- probing ----------

@dataclass(frozen=True)
class StreamInfo:
    kind: str
    codec: str
    duration_s: float
    frames: int | None = None
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    sample_rate: int | None = None


def probe(path: str | Path) -> list[StreamInfo]:
    """Streams of a media file with durations (PyAV: the static ffmpeg ships no ffprobe)."""
    import av

    try:
        with av.open(str(path)) as c:
            out = []
            for s in c.streams:
                if s.type not in ("video", "audio"):
                    continue
                dur = float(s.duration * s.time_base) if s.duration is not None and s.time_base else (
                    c.duration / 1e6 if c.duration else 0.0)
                if s.type == "video":
                    out.append(StreamInfo("video", s.codec_context.name, dur, s.frames or None, s.codec_context.width,
                                          s.codec_context.height, float(s.average_rate) if s.average_rate else None))
                else:
                    out.append(StreamInfo("audio", s.codec_context.name, dur, None,
                                          sample_rate=s.codec_context.sample_rate))
            return out
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise MediaError(f"{path}: not a readable media file ({e})") from None


def count_video_frames(path: str | Path) -> int:
    """Exact count by demuxing packets (no decode)."""
    import av

    with av.open(str(path)) as c:
        return sum(1 for p in c.demux(video=0) if p.size)
