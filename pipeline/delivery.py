"""Build a job's delivery files from its stitched master, locally: captioned master, renditions, HLS, checks."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import MediaError, Problem, RenderError
from pipeline import captions as cap
from pipeline import renditions as rd
from pipeline.media import count_video_frames, probe, run_ffmpeg


@dataclass(frozen=True)
class Master:
    """The stitched master as the post step sees it."""

    path: Path
    width: int
    height: int
    fps: int
    frames: int
    audio_s: float  # the source audio's length: every output is within one frame of it

    @classmethod
    def of(cls, path: Path, fps: int, audio_s: float) -> "Master":
        v = next((s for s in probe(path) if s.kind == "video"), None)
        if v is None:
            raise RenderError(f"{path.name}: the master has no video stream")
        return cls(path, v.width, v.height, fps, count_video_frames(path), audio_s)


@dataclass(frozen=True)
class Encoding:
    """How renditions and burned masters are encoded (from Settings)."""

    preset: str = "medium"
    crf: int = 21
    master_crf: int = 18
    audio_bitrate: str = "128k"
    segment_s: float = 6.0
    style: cap.BurnStyle = cap.BurnStyle()
    fonts_dir: str | None = None


def read_cues(data: bytes, name: str, audio_s: float, where: str) -> list[cap.Cue]:
    """Validated cues of a caption file; MediaError naming every problem (row `where`, field captions)."""
    cues, problems = cap.parse_captions(data, name, audio_s)
    if problems:
        raise MediaError(f"{where}: captions {name} are invalid",
                         [Problem(where, "captions", f"{p.where}: {p.reason}", p.hint) for p in problems])
    return cues


# ---------- master ----------

def captioned_master(m: Master, cues: list[cap.Cue], language3: str, burn: bool, tmpd: Path, enc: Encoding) -> Path:
    """The master + a mov_text track; burned: the video re-encoded once with open captions (audio still copied)."""
    vtt = tmpd / "master-captions.vtt"
    vtt.write_text(cap.write_vtt(cues), encoding="utf-8")
    dest = tmpd / "captioned-master.mp4"
    if burn:
        ass = tmpd / "master.ass"
        ass.write_text(cap.write_ass(cues, m.width, m.height, enc.style), encoding="utf-8")
        run_ffmpeg(rd.burned_master_argv(str(m.path), str(ass), str(dest), m.frames, enc.master_crf, enc.preset,
                                         enc.fonts_dir, str(vtt), language3), what="burning captions into the master")
    else:
        run_ffmpeg(rd.soft_captions_argv(str(m.path), str(vtt), str(dest), language3), what="muxing captions")
    return dest


def plain_master(m: Master, tmpd: Path) -> Path:
    """The master's video and audio only (a published master that carried captions, without them)."""
    dest = tmpd / "plain-master.mp4"
    run_ffmpeg(["-nostdin", "-v", "error", "-y", "-i", str(m.path), "-map", "0:v:0", "-map", "0:a:0", "-c", "copy",
                "-map_chapters", "-1", *rd.BITEXACT, "-movflags", "+faststart", "-f", "mp4", str(dest)],
               what="master without captions")
    return dest


def chaptered(src: Path, ffmetadata: str, dest: Path) -> Path:
    """`src` with MP4 chapters (every stream copied, bit-exact)."""
    from pipeline.chapters import with_chapters_argv

    meta = dest.with_suffix(".ffmeta")
    meta.write_text(ffmetadata, encoding="utf-8")
    run_ffmpeg(with_chapters_argv(str(src), str(meta), str(dest)), what=f"chapters into {src.name}")
    return dest


# ---------- audio ----------

@dataclass
class AudioTargets:
    """Loudness-normalised AAC per (target, true peak), measured once per job (pass 1 is shared)."""

    source: str
    tmpd: Path
    bitrate: str
    measured: dict | None = None
    made: dict = field(default_factory=dict)

    def get(self, target: float | None, true_peak: float) -> tuple[Path, dict | None]:
        key = (target, true_peak)
        if key not in self.made:
            if target is not None and self.measured is None:
                log = run_ffmpeg(rd.loudness_scan_argv(self.source, target, true_peak), what="measuring loudness",
                                 log=True).decode("utf-8", "replace")
                try:
                    self.measured = rd.parse_loudnorm(log)
                except ValueError as e:
                    raise RenderError(f"loudness of {Path(self.source).name}: {e}") from None
            dest = self.tmpd / f"audio-{len(self.made)}.m4a"
            run_ffmpeg(rd.normalised_audio_argv(self.source, str(dest), self.measured or {}, target, true_peak,
                                                self.bitrate), what="normalising loudness")
            self.made[key] = dest
        return self.made[key], self.measured


# ---------- renditions ----------

def encode_rendition(m: Master, r: rd.Rendition, audio: AudioTargets, tmpd: Path, enc: Encoding, *,
                     cues: list[cap.Cue] | None, language3: str | None, burn: bool) -> tuple[Path, dict]:
    """One rendition as an MP4 (the HLS cut works on it by stream copy), checked: size, fps, frame count."""
    width, height = rd.output_size(m.width, m.height, r.height)
    fps = r.fps or m.fps
    frames = max(1, round(m.audio_s * fps))
    sound, measured = audio.get(r.loudness, r.true_peak)
    ass = None
    if burn and cues:
        ass = tmpd / f"{r.name}.ass"
        ass.write_text(cap.write_ass(cues, width, height, enc.style), encoding="utf-8")
    vtt = None
    if cues and r.format == "mp4":
        vtt = tmpd / f"{r.name}.vtt"
        vtt.write_text(cap.write_vtt(cues), encoding="utf-8")
    dest = tmpd / f"{r.name}.mp4"
    job = rd.VideoJob(master=str(m.path), audio=str(sound), dest=str(dest), width=width, height=height, fps=fps,
                      frames=frames, src_fps=m.fps, interpolate=r.interpolate,
                      crf=r.crf if r.crf is not None else enc.crf,
                      kbps=r.kbps, preset=enc.preset, keyint_s=enc.segment_s if r.format == "hls" else 2.0,
                      burn_ass=str(ass) if ass else None, fonts_dir=enc.fonts_dir,
                      soft_vtt=str(vtt) if vtt else None, language3=language3)
    run_ffmpeg(rd.rendition_argv(job), what=f"rendition {r.name}")
    info = check_rendition(dest, width, height, fps, frames, m.audio_s)
    info.update({"name": r.name, "format": r.format, "interpolated": bool(r.interpolate and fps != m.fps),
                 "crf": None if r.kbps else job.crf, "bitrate": r.bitrate,
                 "loudness": {"target_lufs": r.loudness, "true_peak_dbtp": r.true_peak,
                              "source_lufs": measured["input_i"] if measured and r.loudness is not None else None}})
    return dest, info


def check_rendition(path: Path, width: int, height: int, fps: int, frames: int, audio_s: float) -> dict:
    """What was encoded is what was asked: size, frame rate, frame count (within one frame of the audio)."""
    import av

    streams = probe(path)
    v = next((s for s in streams if s.kind == "video"), None)
    a = next((s for s in streams if s.kind == "audio"), None)
    got = count_video_frames(path)
    problems = []
    if v is None or a is None:
        problems.append("a stream is missing")
    else:
        if (v.width, v.height) != (width, height):
            problems.append(f"{v.width}×{v.height}, asked {width}×{height}")
        if v.fps and abs(v.fps - fps) > 0.01:
            problems.append(f"{v.fps:.3f} fps, asked {fps}")
    if got != frames or abs(got / fps - audio_s) > 1 / fps:
        problems.append(f"{got} frames ({got / fps:.3f}s) for {audio_s:.3f}s of audio at {fps} fps")
    if problems:
        raise RenderError(f"{path.name}: rendition check failed: " + "; ".join(problems))
    with av.open(str(path)) as c:
        extradata = c.streams.video[0].codec_context.extradata
    size = path.stat().st_size
    return {"width": width, "height": height, "fps": fps, "frames": got, "duration_s": round(got / fps, 6),
            "bytes": size, "kbps": round(size * 8 / 1000 / max(audio_s, 1e-6)),
            "codecs": rd.avc_codecs(extradata)}


# ---------- HLS ----------

def cut_hls(encoded: Path, out_dir: Path, segment_s: float, segments: str) -> dict:
    """Segments + media playlist by stream copy; peak/average bandwidth and the first video timestamp."""
    import av

    out_dir.mkdir(parents=True, exist_ok=True)
    run_ffmpeg(rd.hls_argv(str(encoded), str(out_dir), segment_s, segments), what=f"HLS segments in {out_dir.name}")
    segs = rd.media_segments((out_dir / "index.m3u8").read_text())
    if not segs:
        raise RenderError(f"{out_dir.name}: the HLS cut produced no segments")
    init = (out_dir / "init.mp4").stat().st_size if (out_dir / "init.mp4").exists() else 0
    rates = [((out_dir / uri).stat().st_size + init) * 8 / max(d, 1e-3) for d, uri in segs]
    total = sum((out_dir / uri).stat().st_size for _, uri in segs) + init
    duration = sum(d for d, _ in segs)
    first = out_dir / segs[0][1]
    probe_file = first
    if segments == "fmp4":  # a fragment alone has no moov: read it behind its init segment
        probe_file = out_dir / ".first.mp4"
        probe_file.write_bytes((out_dir / "init.mp4").read_bytes() + first.read_bytes())
    with av.open(str(probe_file)) as c:
        pts = next((f.pts * f.time_base for f in c.decode(video=0)), 0)
    if probe_file != first:
        probe_file.unlink()
    return {"bandwidth": int(math.ceil(max(rates) * 1.1)), "average_bandwidth": int(math.ceil(total * 8 / duration)),
            "segments": len(segs), "first_pts_s": float(pts)}


def hls_subtitles(cues: list[cap.Cue], duration_s: float, segment_s: float, first_pts_s: float, out_dir: Path) -> None:
    """WebVTT segments on the video's segment grid, each mapped to the video clock (X-TIMESTAMP-MAP)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    header = f"X-TIMESTAMP-MAP=MPEGTS:{round(first_pts_s * 90000)},LOCAL:00:00:00.000"
    windows = []
    n = max(1, math.ceil(duration_s / segment_s - 1e-9))
    for k in range(n):
        a, b = k * segment_s, min(duration_s, (k + 1) * segment_s)
        name = f"sub-{k:05d}.vtt"
        (out_dir / name).write_text(cap.write_vtt(cap.shift_window(cues, a, b), header), encoding="utf-8")
        windows.append((b - a, name))
    (out_dir / "index.m3u8").write_text(rd.subtitle_playlist(windows))
