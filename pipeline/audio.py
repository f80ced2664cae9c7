"""Audio: decode to 16 kHz mono, find pauses with WebRTC VAD (streamed), choose frame-exact scene cut points in pauses."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from core.errors import MediaError
from pipeline.media import decode_audio_argv, ffmpeg_chunks, run_ffmpeg

SR = 16000
VAD_FRAME_MS = 30
SILENT_PEAK = 1e-4  # below this the file carries no signal at all
CHUNK_S = 30  # seconds decoded and analysed at a time: planning memory stays flat whatever the file's length
CUT_MARGIN_S = 0.05  # keep cuts this far inside a pause where it leaves room (VAD edges are 30 ms coarse)


def decode(src: str, sample_rate: int = SR, max_duration_s: float | None = None) -> np.ndarray:
    """Decode any ffmpeg-readable audio to float32 mono; bad files raise MediaError naming the file."""
    try:
        raw = run_ffmpeg(decode_audio_argv(src, sample_rate), what=f"decoding audio {src}", media_error=True)
    except MediaError as e:
        raise _decode_failure(src, str(e)) from None
    pcm = np.frombuffer(raw, dtype="<f4").astype(np.float32, copy=False)
    if pcm.size == 0:
        raise MediaError(f"{src}: the audio has no samples (empty or not audio)")
    if not np.isfinite(pcm).all():
        raise MediaError(f"{src}: the audio contains NaN or infinite samples")
    if max_duration_s is not None and pcm.size / sample_rate > max_duration_s:
        raise MediaError(f"{src}: {pcm.size / sample_rate:.0f}s of audio exceeds the limit of {max_duration_s:.0f}s",)
    return pcm


def _decode_failure(src: str, err: str) -> MediaError:
    """ffmpeg's stderr is several lines of internal context names and addresses: say what it means instead."""
    if "matches no streams" in err:
        return MediaError(f"{src}: has no audio stream (a video without sound, or an image?)")
    lines = [re.sub(r"^(decoding audio .*?: )?(\[[^\]]*\]\s*)+", "", ln).strip() for ln in err.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("Error opening input file")]
    detail = next((ln.split(": ", 1)[-1] for ln in lines if ln.startswith("Error opening input:")),
                  lines[-1] if lines else "ffmpeg failed")
    return MediaError(f"{src}: not a readable audio file ({detail[:200]})")


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: the planner caches one per file version
class AudioAnalysis:
    duration_s: float
    samples: int
    fps: int
    frames: int  # round(duration × fps): the frame-exact total every plan must match
    pauses: tuple[tuple[float, float], ...]  # (start_s, end_s), each ≥ min_pause_s
    frame_energy: np.ndarray  # RMS per video frame, for the quietest-frame fallback
    peak: float = 1.0  # largest absolute sample


class Analyser:
    """VAD flags, per-video-frame energy and peak of a signal fed in chunks of any size, in order. Holds a few
    values per 30 ms (not the samples), so two hours cost ~3 MB beyond the chunk being read."""

    def __init__(self, fps: int, sample_rate: int = SR, aggressiveness: int = 2):
        import webrtcvad

        self.fps, self.sr = fps, sample_rate
        self.vad = webrtcvad.Vad(aggressiveness)  # stateful: fed every 30 ms frame in order, as one pass would
        self.n = sample_rate * VAD_FRAME_MS // 1000
        self.spf = sample_rate / fps
        self.carry = np.zeros(0, dtype=np.float32)  # samples short of a whole VAD frame, for the next chunk
        self.flags: list[np.ndarray] = []
        self.rms: list[np.ndarray] = []
        self.bounds: list[float] = []  # running Σ x² at each video-frame boundary round(k × spf) passed so far
        self.sq = 0.0
        self.samples = 0
        self.peak = 0.0

    def feed(self, pcm: np.ndarray) -> None:
        if pcm.size == 0:
            return
        if not np.isfinite(pcm).all():
            raise MediaError("the audio contains NaN or infinite samples")
        self.peak = max(self.peak, float(np.abs(pcm).max()))
        # Σ x² up to every frame boundary inside this chunk, from a running total (never a whole-file cumsum)
        cs = np.concatenate([[0.0], np.cumsum(np.square(pcm, dtype=np.float64))])
        k0 = len(self.bounds)
        k1 = int((self.samples + pcm.size) / self.spf) + 2
        idx = np.round(np.arange(k0, k1) * self.spf).astype(np.int64) - self.samples
        idx = idx[idx < pcm.size]
        self.bounds.extend((self.sq + cs[idx]).tolist())
        self.sq += float(cs[-1])
        self.samples += pcm.size
        buf = np.concatenate([self.carry, pcm]) if self.carry.size else pcm
        count = buf.size // self.n
        self.carry = buf[count * self.n :].copy()
        if count:
            frames = buf[: count * self.n].reshape(count, self.n)
            self.rms.append(np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1)).astype(np.float32))
            pcm16 = (np.clip(frames, -1, 1) * 32767).astype("<i2")
            self.flags.append(np.fromiter((self.vad.is_speech(f.tobytes(), self.sr) for f in pcm16), dtype=bool,
                                          count=count))

    def finish(self, min_pause_s: float) -> AudioAnalysis:
        duration = self.samples / self.sr
        frames = int(round(duration * self.fps))
        rms = np.concatenate(self.rms) if self.rms else np.zeros(0, dtype=np.float32)
        flags = np.concatenate(self.flags) if self.flags else np.zeros(0, dtype=bool)
        if rms.size:  # energy-gated so faint noise never counts as speech: within 40 dB of the loudest frame
            flags &= rms > max(float(rms.max()) * 10 ** (-40 / 20), 1e-4)
        pauses = find_pauses(flags, min_pause_s, duration)
        cum = np.array(self.bounds[: frames + 1] + [self.sq] * max(0, frames + 1 - len(self.bounds)))
        idx = (np.arange(frames + 1) * self.spf).round().astype(np.int64).clip(0, self.samples)
        lens = np.maximum(idx[1:] - idx[:-1], 1)
        energy = np.sqrt(np.maximum(cum[1:] - cum[:-1], 0.0) / lens).astype(np.float32)
        return AudioAnalysis(duration, self.samples, self.fps, frames, tuple(pauses), energy, self.peak)


def find_pauses(flags: np.ndarray, min_pause_s: float, duration_s: float) -> list[tuple[float, float]]:
    """Runs of non-speech at least min_pause_s long, in seconds."""
    step = VAD_FRAME_MS / 1000
    out = []
    padded = np.concatenate([[True], flags, [True]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    for a, b in zip(edges[::2], edges[1::2]):
        start, end = a * step, min(b * step, duration_s)
        if end - start >= min_pause_s:
            out.append((float(start), float(end)))
    return out


def analyse(pcm: np.ndarray, fps: int, min_pause_s: float, sample_rate: int = SR) -> AudioAnalysis:
    """Analyse samples already in memory (tests, benchmarks); planning streams files with analyse_file."""
    an = Analyser(fps, sample_rate)
    step = CHUNK_S * sample_rate
    for i in range(0, pcm.size, step):
        an.feed(pcm[i : i + step])
    return an.finish(min_pause_s)


def analyse_file(src: str, fps: int, min_pause_s: float, max_duration_s: float | None = None,
                 sample_rate: int = SR) -> AudioAnalysis:
    """Decode and analyse a file in CHUNK_S pieces streamed from ffmpeg: memory is bounded by the chunk, not by
    the file's length (two hours decoded whole, with float64 copies, took 2.3 GB per job)."""
    an = Analyser(fps, sample_rate)
    limit = None if max_duration_s is None else int(max_duration_s * sample_rate)
    chunks = _pcm_chunks(src, sample_rate)
    try:
        for pcm in chunks:
            try:
                an.feed(pcm)
            except MediaError as e:
                raise MediaError(f"{src}: {e}") from None
            if limit is not None and an.samples > limit:
                raise MediaError(f"{src}: the audio exceeds the limit of {max_duration_s:.0f}s (setting "
                                 "max_duration_s); split it into parts or raise the limit")
    finally:
        chunks.close()  # stops ffmpeg at once when the limit was hit
    if an.samples == 0:
        raise MediaError(f"{src}: the audio has no samples (empty or not audio)")
    return an.finish(min_pause_s)


def _pcm_chunks(src: str, sample_rate: int):
    try:
        for raw in ffmpeg_chunks(decode_audio_argv(src, sample_rate), CHUNK_S * sample_rate * 4,
                                 what=f"decoding audio {src}", media_error=True):
            yield np.frombuffer(raw, dtype="<f4")
    except MediaError as e:
        raise _decode_failure(src, str(e)) from None


# ---------- cut points ----------

def scene_clips(frames: int, first: int, clip: int) -> int:
    """Clips a chain of `frames` needs: the first keeps `first` frames, each later one `clip`."""
    return 0 if frames <= 0 else 1 + max(0, -(-(frames - first) // clip))


def trimmed_frames(frames: int, first: int, clip: int) -> int:
    """Frames rendered and cut off at the end of a scene of `frames` (its last clip is rendered whole)."""
    n = scene_clips(frames, first, clip)
    return 0 if n == 0 else first + (n - 1) * clip - frames


def long_silences(a: AudioAnalysis, min_s: float) -> tuple[tuple[float, float], ...]:
    """Pauses of at least min_s seconds: each costs a clip per clip-length of a silent presenter."""
    return tuple((s, e) for s, e in a.pauses if e - s >= min_s)


def _candidates(a: AudioAnalysis, lo: int, hi: int, margin_s: float = CUT_MARGIN_S) -> np.ndarray:
    """Every frame in [lo, hi] lying inside a pause, kept margin_s (at most a quarter of the pause) away from its
    edges wherever the pause leaves room."""
    fps, out = a.fps, []
    for ps, pe in a.pauses:
        full = (max(lo, int(np.ceil(ps * fps))), min(hi, int(np.floor(pe * fps))))
        if full[0] > full[1]:
            continue
        m = min(margin_s, (pe - ps) / 4)
        inner = (max(lo, int(np.ceil((ps + m) * fps))), min(hi, int(np.floor((pe - m) * fps))))
        a_, b_ = inner if inner[0] <= inner[1] else full
        out.append(np.arange(a_, b_ + 1, dtype=np.int64))
    return np.unique(np.concatenate(out)) if out else np.zeros(0, dtype=np.int64)


def _cheapest_cuts(start: int, nodes: np.ndarray, total: int, min_f: int, max_f: int, first: int, clip: int):
    """Shortest path from `start` to the end through pause frames (`nodes`, sorted), each scene in [min_f, max_f]
    frames: fewest clips, then fewest scenes; on ties the later cut (longer earlier scenes). Returns (cuts, None)
    or, when pauses alone cannot reach the end, (None, cuts to the furthest pause frame they reach)."""
    n = np.concatenate([[start], nodes])
    inf = np.iinfo(np.int64).max
    best = np.full(n.size, inf, dtype=np.int64)
    prev = np.full(n.size, -1, dtype=np.int64)
    best[0] = 0
    w = 1 << 20  # one clip outweighs any number of scenes

    def cost(length):
        return (1 + np.maximum(0, -(-(length - first) // clip))) * w + 1

    end_cost, end_prev = inf, -1
    for i in range(n.size):
        if best[i] == inf:
            continue
        if total - n[i] <= max_f:
            c = best[i] + int(cost(total - n[i]))
            if c <= end_cost:
                end_cost, end_prev = c, i
        lo, hi = np.searchsorted(n, n[i] + min_f), np.searchsorted(n, n[i] + max_f, side="right")
        if lo < hi:
            c = best[i] + cost(n[lo:hi] - n[i])
            better = np.flatnonzero(c <= best[lo:hi]) + lo
            best[better], prev[better] = c[better - lo], i

    def path(i: int) -> list[int]:
        out = []
        while i > 0:
            out.append(int(n[i]))
            i = int(prev[i])
        return out[::-1]

    if end_prev >= 0:
        return path(end_prev), None
    return None, path(int(np.flatnonzero(best < inf)[-1]))


CUT_RULE = 3  # see cut_points; the planner keys each job by the rule its cuts need


def cut_points(a: AudioAnalysis, max_scene_s: float, min_scene_s: float, spec=None, *, rule: int = CUT_RULE,
               differs: list | None = None) -> list[int]:
    """Frame indices where scenes start (excluding 0). Cuts sit inside pauses, chosen together so the job renders
    the fewest clips (`spec`: the backend's clip sizes, so scene lengths land on clip boundaries and little is
    trimmed; none = the fewest, longest scenes), then the fewest scenes. Where a window of max_scene_s holds no
    pause, that cut goes to the window's quietest frame. Scenes stay within [min, max] wherever the length
    allows. A pause too long for one scene is cut at its far end (speech resumes on a fresh scene) and covered
    by the fewest waste-free scenes, never by a run of minimum-length scenes.

    rule 3 (rule 2 is what came before, kept so unchanged jobs keep their keys): the scene before a long pause can
    end inside it, and where a remainder cannot honour min_scene_s at both ends a pause still wins over speech —
    rule 2 cut in speech in both places. `differs` (a list) gets an entry each time rule 3 took a step rule 2 would
    not: when it stays empty, rule 2 gives the same cuts."""
    fps, total = a.fps, a.frames
    max_f = max(1, int(max_scene_s * fps))
    min_f = max(1, int(np.ceil(min_scene_s * fps)))
    if total <= max_f:
        return []
    first, clip = (spec.first_clip_frames, spec.clip_frames) if spec is not None else (1, 1)
    # the longest scene that trims nothing: the step used across long pauses
    step = max([n for n in range(min_f, max_f + 1) if (n - first) % clip == 0 or n < first] or [max_f])
    cands = _candidates(a, min_f, total - min_f)
    cuts: list[int] = []
    start = 0
    for r0, r1 in _runs(cands):
        if r1 - r0 <= max_f + min_f:
            continue
        inside = [r1]  # backwards from the far end until what is left of the pause fits the scene before it
        while inside[-1] - r0 > max_f:
            inside.append(inside[-1] - step)
        if rule >= 3 and len(inside) > 1 and inside[-1] - r0 < min_f:
            # what is left is shorter than a scene: the scene before could not end in the pause, and cut in speech
            inside.pop()
            if differs is not None:
                differs.append(("long pause", r0))
        cuts += _segment(a, start, inside[-1], cands[(cands < inside[-1]) | (cands > r1)], min_f, max_f, first, clip,
                         rule, differs)
        cuts += inside[::-1]
        start = r1
    return cuts + _segment(a, start, total, cands[cands > start], min_f, max_f, first, clip, rule, differs)


def _runs(frames: np.ndarray):
    """(first, last) of each run of consecutive frame numbers."""
    if frames.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(frames) > 1)
    return list(zip(frames[np.r_[0, breaks + 1]].tolist(), frames[np.r_[breaks, frames.size - 1]].tolist()))


def _segment(a: AudioAnalysis, start: int, end: int, cands: np.ndarray, min_f: int, max_f: int, first: int,
             clip: int, rule: int = CUT_RULE, differs: list | None = None) -> list[int]:
    """Cuts strictly between start and end (both scene boundaries already)."""
    cuts: list[int] = []
    while end - start > max_f:
        nodes = cands[(cands >= start + min_f) & (cands <= end - min_f)]
        done, reach = _cheapest_cuts(start, nodes, end, min_f, max_f, first, clip)
        if done is not None:
            return cuts + done
        cuts += reach  # as far as pauses go; from there no pause lies within max_scene_s
        start = cuts[-1] if cuts else start
        lo = start + min_f
        hi = min(start + max_f, end - min_f)
        if hi < lo:  # the remainder cannot honour min_scene_s at both ends: the last scene will be short
            lo, hi = (lo, start + max_f) if rule >= 3 else (start + max_f, start + max_f)
            if rule >= 3 and differs is not None:
                differs.append(("short remainder", start))
        edge = _candidates(a, lo, hi, margin_s=0.0)  # a pause reaching into the window only by its margin
        if edge.size:
            start = int(edge[-1])
        else:
            window = a.frame_energy[lo : hi + 1]
            start = lo + int(len(window) - 1 - np.argmin(window[::-1]))  # quietest, latest on ties
        cuts.append(start)
    return cuts
