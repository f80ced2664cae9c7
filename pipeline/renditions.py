"""Delivery renditions: the spec record, ffmpeg argv builders (size, fps, loudness, captions, HLS) and playlists."""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.media import BITEXACT

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
BITRATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*$")
SOURCE_FPS_NOTE = "the master is 16 fps"
COLOUR = ["-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709", "-color_range", "tv"]


class Rendition(BaseModel):
    """One delivery rendition derived from a job's stitched master (never a new render)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    height: int | None = Field(None, ge=64, le=4320, description="Output height; width follows the aspect (even).")
    fps: int | None = Field(None, ge=1, le=60, description="Output frame rate; None keeps the master's.")
    interpolate: bool = Field(False, description="Motion-interpolate to fps (minterpolate), not repeat frames.")
    crf: int | None = Field(None, ge=0, le=51)
    bitrate: str | None = Field(None, description="Video bitrate, e.g. 2500k or 2.5M (capped VBR); excludes crf.")
    format: Literal["mp4", "hls"] = "mp4"
    segments: Literal["fmp4", "ts"] = Field("fmp4", description="HLS segment container.")
    loudness: float | None = Field(-16.0, ge=-70, le=-5, description="Integrated LUFS target; null keeps the level.")
    true_peak: float = Field(-1.0, ge=-9, le=0, description="Maximum true peak, dBTP.")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, v: Any) -> Any:
        if isinstance(v, dict):
            known = list(cls.model_fields)
            for k in v:
                if str(k) not in known:
                    close = difflib.get_close_matches(str(k), known, n=1, cutoff=0.6)
                    hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(known)}"
                    raise ValueError(f"unknown rendition field '{k}' ({hint})")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError("a rendition name is 1-32 letters, digits, '_' or '-' (it names output files)")
        return v

    @field_validator("height")
    @classmethod
    def _even(cls, v: int | None) -> int | None:
        if v is not None and v % 2:
            raise ValueError(f"height {v} is odd; H.264 4:2:0 needs even sides (try {v + 1})")
        return v

    @field_validator("bitrate", mode="before")
    @classmethod
    def _bitrate(cls, v: Any) -> Any:
        if v is None:
            return v
        m = BITRATE_RE.match(str(v))
        if not m:
            raise ValueError("write a bitrate like 2500k or 2.5M")
        kbps = float(m.group(1)) * {"": 0.001, "k": 1, "m": 1000}[m.group(2).lower()]
        if not 50 <= kbps <= 100_000:
            raise ValueError("a video bitrate must be between 50k and 100M")
        return f"{round(kbps)}k"

    @model_validator(mode="after")
    def _consistent(self) -> "Rendition":
        if self.crf is not None and self.bitrate is not None:
            raise ValueError(f"rendition '{self.name}': give crf or bitrate, not both")
        if self.interpolate and self.fps is None:
            raise ValueError(f"rendition '{self.name}': interpolate needs an fps to interpolate to")
        return self

    @property
    def kbps(self) -> int | None:
        return int(self.bitrate[:-1]) if self.bitrate else None


def output_size(src_w: int, src_h: int, height: int | None) -> tuple[int, int]:
    """(width, height): the height asked for, the width following the master's aspect, both even."""
    if height is None:
        return src_w - src_w % 2, src_h - src_h % 2
    w = max(2, int(round(src_w * height / src_h / 2)) * 2)
    return w, height


# ---------- audio: EBU R128 two-pass loudness normalisation ----------

def loudness_scan_argv(audio_src: str, target: float, true_peak: float, lra: float = 11.0) -> list[str]:
    """Pass 1: measure (loudnorm prints JSON stats on ffmpeg's log at info level)."""
    return ["-nostdin", "-hide_banner", "-v", "info", "-i", audio_src, "-map", "0:a:0", "-vn",
            "-af", f"loudnorm=I={target}:TP={true_peak}:LRA={lra}:print_format=json", "-f", "null", "-"]


def parse_loudnorm(log: str) -> dict[str, float]:
    """The measurement block of pass 1 (the last JSON object in the log)."""
    start, end = log.rfind("{"), log.rfind("}")
    if start < 0 or end < start:
        raise ValueError("no loudnorm statistics in ffmpeg's output")
    raw = json.loads(log[start:end + 1])
    out = {}
    for k in ("input_i", "input_tp", "input_lra", "input_thresh", "target_offset"):
        v = float(raw[k])
        if not math.isfinite(v):  # silence measures -inf
            raise ValueError(f"loudness {k} is {raw[k]} (is the audio silent?)")
        out[k] = v
    return out


def normalised_audio_argv(audio_src: str, dest: str, measured: dict[str, float], target: float | None,
                          true_peak: float, bitrate: str = "128k", lra: float = 11.0) -> list[str]:
    """Pass 2: linear gain to the target from pass 1's measurement (loudnorm falls back to its dynamic mode only
    when the gain would push the true peak over the ceiling) → AAC 48 kHz stereo. target None: level kept."""
    af = []
    if target is not None:
        af = ["-af", f"loudnorm=I={target}:TP={true_peak}:LRA={lra}:measured_I={measured['input_i']}:"
                     f"measured_TP={measured['input_tp']}:measured_LRA={measured['input_lra']}:"
                     f"measured_thresh={measured['input_thresh']}:offset={measured['target_offset']}:linear=true"]
    return ["-nostdin", "-v", "error", "-y", "-i", audio_src, "-map", "0:a:0", "-vn", *af, "-ar", "48000",
            "-ac", "2", "-c:a", "aac", "-b:a", bitrate, *BITEXACT, "-f", "mp4", dest]


def loudness_measure_argv(media: str) -> list[str]:
    """ebur128 over a file's first audio stream; the summary (I, LRA, true peak) goes to the log."""
    return ["-nostdin", "-hide_banner", "-v", "info", "-i", media, "-map", "0:a:0", "-vn",
            "-af", "ebur128=peak=true", "-f", "null", "-"]


def parse_ebur128(log: str) -> dict[str, float]:
    """Integrated loudness (LUFS) and true peak (dBFS) from ebur128's summary."""
    summary = log[log.rfind("Summary:"):]
    i = re.search(r"I:\s+(-?[\d.]+|-inf) LUFS", summary)
    peak = re.search(r"True peak:\s+Peak:\s+(-?[\d.]+|-inf) dBFS", summary)
    if not i:
        raise ValueError("no ebur128 summary in ffmpeg's output")
    return {"integrated_lufs": float(i.group(1)), "true_peak_dbfs": float(peak.group(1)) if peak else math.nan}


# ---------- video ----------

@dataclass(frozen=True)
class VideoJob:
    """Everything one rendition encode needs, resolved (sizes, frame count, files)."""

    master: str
    audio: str  # AAC to copy (normalised, or the master itself when the level is kept)
    dest: str
    width: int
    height: int
    fps: int
    frames: int  # round(audio seconds × fps): the output is within half a frame of the audio
    src_fps: int
    interpolate: bool = False
    crf: int = 21
    kbps: int | None = None
    preset: str = "medium"
    keyint_s: float = 2.0  # a keyframe this often (HLS: the segment length, so every variant switches there)
    burn_ass: str | None = None
    fonts_dir: str | None = None
    soft_vtt: str | None = None  # muxed as a mov_text track (MP4 only)
    language3: str | None = None  # ISO 639-2/T code for the track
    container: str = "mp4"


def _filter_path(p: str) -> str:
    """A path as a filter option's value inside a filtergraph, escaped for both parsers it goes through (ffmpeg-
    filters, "Notes on filtergraph escaping"): first the filter's option parser (`\\`, `'`, `:` separates options),
    then the graph parser (`\\`, `'`, `[`, `]`, `,`, `;`). Escaped once, a `:` in TMPDIR or a fonts folder split the
    option ("No option name near …") or set another option."""
    value = p.replace("\\", "\\\\").replace("'", "\\'").replace(":", "\\:")
    for c in "\\'[],;":
        value = value.replace(c, "\\" + c)
    return value


def video_filters(j: VideoJob) -> str:
    chain = []
    if j.fps != j.src_fps:
        chain.append(f"minterpolate=fps={j.fps}:mi_mode=mci:mc_mode=aobmc:me_mode=bidir:vsbmc=1" if j.interpolate
                     else f"fps={j.fps}")  # fps= repeats (or drops) whole frames: no new pixels
    chain.append(f"scale={j.width}:{j.height}:flags=lanczos")
    if j.burn_ass:
        opt = f"subtitles=filename={_filter_path(j.burn_ass)}"
        if j.fonts_dir:
            opt += f":fontsdir={_filter_path(j.fonts_dir)}"
        chain.append(opt)
    # the last frame repeats so the cut at `frames` never comes up short of the audio
    chain.append("tpad=stop_mode=clone:stop_duration=2")
    chain.append("format=yuv420p")
    return ",".join(chain)


def rendition_argv(j: VideoJob) -> list[str]:
    """Master video (+ normalised audio, + captions track) → one H.264/AAC file, exactly j.frames frames."""
    gop = max(1, round(j.keyint_s * j.fps))
    rate = (["-b:v", f"{j.kbps}k", "-maxrate", f"{j.kbps}k", "-bufsize", f"{2 * j.kbps}k"] if j.kbps
            else ["-crf", str(j.crf)])
    argv = ["-nostdin", "-v", "error", "-y", "-i", j.master, "-i", j.audio]
    maps = ["-map", "0:v:0", "-map", "1:a:0"]
    subs: list[str] = []
    if j.soft_vtt and j.container == "mp4":
        argv += ["-i", j.soft_vtt]
        maps += ["-map", "2:s:0"]
        subs = ["-c:s", "mov_text", "-metadata:s:s:0", f"language={j.language3 or 'und'}",
                "-disposition:s:0", "0"]
    return [*argv, *maps, "-vf", video_filters(j), "-frames:v", str(j.frames), "-r", str(j.fps),
            "-c:v", "libx264", "-preset", j.preset, *rate, "-profile:v", "high", "-pix_fmt", "yuv420p",
            "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0",
            "-force_key_frames", f"expr:gte(t,n_forced*{j.keyint_s:g})", *COLOUR,
            "-c:a", "copy", *subs, "-map_chapters", "-1", *BITEXACT, "-movflags", "+faststart", "-f", j.container,
            j.dest]


def soft_captions_argv(master: str, vtt: str, dest: str, language3: str) -> list[str]:
    """The master's video and audio by stream copy (bit-exact) + the captions as a mov_text track."""
    return ["-nostdin", "-v", "error", "-y", "-i", master, "-i", vtt, "-map", "0:v:0", "-map", "0:a:0",
            "-map", "1:s:0", "-c:v", "copy", "-c:a", "copy", "-c:s", "mov_text",
            "-metadata:s:s:0", f"language={language3}", "-disposition:s:0", "0",
            "-map_chapters", "-1", *BITEXACT, "-movflags", "+faststart", "-f", "mp4", dest]


def burned_master_argv(master: str, ass: str, dest: str, frames: int, crf: int, preset: str,
                       fonts_dir: str | None = None, vtt: str | None = None, language3: str = "und") -> list[str]:
    """The master with open captions: video re-encoded once through libass, audio copied (bit-exact)."""
    vf = f"subtitles=filename={_filter_path(ass)}" + (f":fontsdir={_filter_path(fonts_dir)}" if fonts_dir else "")
    argv = ["-nostdin", "-v", "error", "-y", "-i", master]
    maps = ["-map", "0:v:0", "-map", "0:a:0"]
    subs: list[str] = []
    if vtt:
        argv += ["-i", vtt]
        maps += ["-map", "1:s:0"]
        subs = ["-c:s", "mov_text", "-metadata:s:s:0", f"language={language3}", "-disposition:s:0", "0"]
    return [*argv, *maps, "-vf", vf + ",format=yuv420p", "-frames:v", str(frames), "-c:v", "libx264",
            "-preset", preset, "-crf", str(crf), "-pix_fmt", "yuv420p", *COLOUR, "-c:a", "copy", *subs,
            "-map_chapters", "-1", *BITEXACT, "-movflags", "+faststart", "-f", "mp4", dest]


# ---------- HLS ----------

def hls_argv(src: str, out_dir: str, segment_s: float, segments: str = "fmp4") -> list[str]:
    """Cut an encoded rendition into HLS segments by stream copy (its keyframes sit on segment boundaries)."""
    ext = "m4s" if segments == "fmp4" else "ts"
    kind = ["-hls_segment_type", "fmp4", "-hls_fmp4_init_filename", "init.mp4"] if segments == "fmp4" else \
        ["-hls_segment_type", "mpegts"]
    return ["-nostdin", "-v", "error", "-y", "-i", src, "-map", "0:v:0", "-map", "0:a:0", "-c", "copy",
            "-f", "hls", "-hls_time", f"{segment_s:g}", "-hls_playlist_type", "vod", "-hls_list_size", "0",
            "-hls_flags", "independent_segments", *kind,
            "-hls_segment_filename", f"{out_dir}/seg-%05d.{ext}", f"{out_dir}/index.m3u8"]


def media_segments(playlist: str) -> list[tuple[float, str]]:
    """(duration, uri) of each segment of a media playlist."""
    out, dur = [], None
    for ln in playlist.splitlines():
        ln = ln.strip()
        if ln.startswith("#EXTINF:"):
            dur = float(ln[8:].split(",")[0])
        elif ln and not ln.startswith("#") and dur is not None:
            out.append((dur, ln))
            dur = None
    return out


def subtitle_playlist(windows: list[tuple[float, str]]) -> str:
    """A VOD media playlist of WebVTT segments, one per (duration, file)."""
    target = max(1, math.ceil(max((d for d, _ in windows), default=1)))
    body = "".join(f"#EXTINF:{d:.3f},\n{name}\n" for d, name in windows)
    return (f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:{target}\n#EXT-X-MEDIA-SEQUENCE:0\n"
            f"#EXT-X-PLAYLIST-TYPE:VOD\n{body}#EXT-X-ENDLIST\n")


@dataclass(frozen=True)
class Variant:
    uri: str  # relative to the master playlist
    bandwidth: int  # peak segment bitrate, bit/s
    average_bandwidth: int
    width: int
    height: int
    fps: float
    codecs: str


def master_playlist(variants: list[Variant], subtitles: tuple[str, str, str] | None = None) -> str:
    """The HLS multivariant playlist; subtitles = (uri, BCP-47 language, display name) → a WebVTT group."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-INDEPENDENT-SEGMENTS"]
    group = ""
    if subtitles:
        uri, lang, name = subtitles
        lines.append(f'#EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID="subs",NAME="{name}",LANGUAGE="{lang}",DEFAULT=NO,'
                     f'AUTOSELECT=YES,FORCED=NO,URI="{uri}"')
        group = ',SUBTITLES="subs"'
    for v in sorted(variants, key=lambda v: -v.bandwidth):
        lines.append(f"#EXT-X-STREAM-INF:BANDWIDTH={v.bandwidth},AVERAGE-BANDWIDTH={v.average_bandwidth},"
                     f'RESOLUTION={v.width}x{v.height},FRAME-RATE={v.fps:.3f},CODECS="{v.codecs}"{group}')
        lines.append(v.uri)
    return "\n".join(lines) + "\n"


def avc_codecs(extradata: bytes | None, audio: bool = True) -> str:
    """RFC 6381 codecs string from an avcC record (profile, constraints, level) + AAC-LC."""
    video = "avc1.640028"  # High@4.0 when the record is missing
    if extradata and len(extradata) >= 4 and extradata[0] == 1:
        video = f"avc1.{extradata[1]:02x}{extradata[2]:02x}{extradata[3]:02x}"
    return video + (",mp4a.40.2" if audio else "")
