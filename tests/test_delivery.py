"""The post step end to end on the embedded default (real Ray, real ffmpeg, PyAV to read back, real transformers
on tiny random Whisper weights): captions track and sidecar VTT, renditions true to their spec and loudness
target, HLS playable by ffmpeg with every variant and the subtitle group, auto captions well formed, a
renditions-only change that renders zero clips, and burned-in captions that change only the caption pixels."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import yaml

import media
from conftest import start_local_ray
from orchestrator.run.runner import render
from pipeline.captions import parse_captions, plain_text
from pipeline.media import count_video_frames, ffmpeg_bin, run_ffmpeg
from pipeline.renditions import loudness_measure_argv, parse_ebur128

SRT = ("1\n00:00:00,300 --> 00:00:01,800\nWelcome to <i>lesson one</i>\n\n"
       "2\n00:00:02,200 --> 00:00:03,900\nWater & clouds\n")
RENDITIONS = [{"name": "r144", "height": 144, "fps": 30},
              {"name": "h96", "height": 96, "fps": 24, "format": "hls"},
              {"name": "h64", "height": 64, "fps": 25, "interpolate": True, "format": "hls", "loudness": -20}]


@pytest.fixture(scope="module")
def tiny_asr(tmp_path_factory):
    from orchestrator.cli.main import main

    d = tmp_path_factory.mktemp("asr") / "tiny-whisper"
    with pytest.raises(SystemExit) as e:
        main(["models", "make-tiny-asr", str(d)])
    assert e.value.code in (0, None)
    return d


@pytest.fixture(scope="module")
def run(tmp_path_factory, assets, tiny_asr):
    from core.settings import Settings

    d = tmp_path_factory.mktemp("delivery")
    (d / "lesson.srt").write_text(SRT)
    jobs = [{"id": "lesson", "audio": str(assets["speech4"]), "captions": "lesson.srt", "caption_language": "en-US",
             "seed": 1},
            {"id": "spoken", "audio": str(assets["speech4"]), "captions": "auto", "seed": 2, "renditions": []}]
    manifest = media.write_manifest(d / "catalog.yaml", jobs, {
        "image": str(assets["image"]), "size": "128*128", "output": str(d / "out"), "renditions": RENDITIONS})
    settings = Settings(gpus=2, work=str(d / "work"), cache_dir=d / "cache", asr_model_dir=str(tiny_asr),
                        hls_segment_s=2.0, rendition_preset="veryfast")
    start_local_ray()
    res = render(str(manifest), settings)
    assert res.exit_code == 0, {k: v.reason for k, v in res.jobs.items()}
    return {"dir": d, "out": d / "out", "manifest": manifest, "settings": settings, "result": res}


def _meta(run, job):
    return json.loads((run["out"] / f"{job}.json").read_text())


def _audio_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(audio=0) if p.size]


def test_master_carries_a_captions_track_and_the_vtt_is_published(run):
    out, meta = run["out"], _meta(run, "lesson")
    with av.open(str(out / "lesson.mp4")) as c:
        subs = [s for s in c.streams if s.type == "subtitle"]
        assert len(subs) == 1 and subs[0].codec_context.name == "mov_text"
        assert subs[0].metadata.get("language") == "eng"  # en-US → ISO 639-2/T, what MP4 tracks hold
        assert sum(1 for p in c.demux(subs[0]) if p.size) >= 2  # the cues are in the track
    cues, problems = parse_captions((out / "lesson.vtt").read_bytes(), "lesson.vtt", meta["duration_s"])
    assert not problems and [plain_text(c.text) for c in cues] == ["Welcome to lesson one", "Water & clouds"]
    assert meta["captions"]["language"] == "en-US" and meta["captions"]["uri"] == str(out / "lesson.vtt")
    assert meta["outputs"]["vtt"] == str(out / "lesson.vtt")
    assert run["result"].jobs["lesson"].deliverables["vtt"] == str(out / "lesson.vtt")  # report + webhooks


def test_renditions_have_their_size_rate_length_and_loudness(run):
    meta = _meta(run, "lesson")
    audio_s = meta["duration_s"]
    entries = {r["name"]: r for r in meta["renditions"]}
    assert set(entries) == {"r144", "h96", "h64"}
    mp4 = run["out"] / "lesson.r144.mp4"
    for name, spec in (("r144", RENDITIONS[0]),):
        with av.open(str(mp4)) as c:
            v = c.streams.video[0]
            assert (v.codec_context.width, v.codec_context.height) == (144, 144)
            assert float(v.average_rate) == spec["fps"]
            assert c.streams.subtitles[0].metadata.get("language") == "eng"
        frames = count_video_frames(mp4)
        assert abs(frames / spec["fps"] - audio_s) <= 1 / spec["fps"]
    # every rendition's audio, measured by ffmpeg's EBU R128 scanner: within 1 LU of its target
    hls_dir = run["out"] / "lesson.hls"
    for name, target in (("r144", -16.0), ("h96", -16.0), ("h64", -20.0)):
        src = mp4 if name == "r144" else hls_dir / entries[name]["playlist"]
        log = run_ffmpeg(loudness_measure_argv(str(src)), log=True).decode()
        got = parse_ebur128(log)
        assert abs(got["integrated_lufs"] - target) <= 1.0, (name, got)
        assert got["true_peak_dbfs"] <= -1.0 + 0.3, (name, got)  # loudnorm's ceiling, AAC's overshoot aside
        assert entries[name]["loudness"]["target_lufs"] == target
    assert entries["h64"]["interpolated"] and not entries["h96"]["interpolated"]


def test_hls_master_playlist_plays_end_to_end_with_every_variant_and_subtitles(run):
    import subprocess

    master = run["out"] / "lesson.hls" / "master.m3u8"
    text = master.read_text()
    assert text.count("#EXT-X-STREAM-INF") == 2 and 'TYPE=SUBTITLES,GROUP-ID="subs"' in text
    assert 'LANGUAGE="en-US"' in text and 'NAME="English (United States)"' in text  # the menu shows a name
    assert text.count('SUBTITLES="subs"') == 2
    with av.open(str(master)) as c:
        heights = sorted(s.codec_context.height for s in c.streams.video)
        rates = sorted(float(s.average_rate) for s in c.streams.video)
        subs = [s for s in c.streams if s.type == "subtitle"]
        assert heights == [64, 96] and rates == [24.0, 25.0]
        assert subs and subs[0].codec_context.name == "webvtt"
    # every packet of every variant and of the subtitle group, read through the master playlist
    p = subprocess.run([ffmpeg_bin(), "-nostdin", "-v", "error", "-i", str(master), "-map", "0", "-c", "copy",
                        "-f", "null", "-"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and not p.stderr.strip(), p.stderr[-2000:]
    audio_s = _meta(run, "lesson")["duration_s"]
    for fps, name in ((24, "h96"), (25, "h64")):
        entry = next(r for r in _meta(run, "lesson")["renditions"] if r["name"] == name)
        with av.open(str(run["out"] / "lesson.hls" / entry["playlist"])) as c:
            frames = sum(1 for pk in c.demux(video=0) if pk.size)
        assert abs(frames / fps - audio_s) <= 1 / fps and entry["segments"] == 2  # 2 s segments of ~4 s


def test_auto_captions_come_from_whisper_and_follow_the_style_rules(run):
    meta = _meta(run, "spoken")
    assert meta["captions"]["source"] == "auto" and meta["renditions"] == []
    cues, problems = parse_captions((run["out"] / "spoken.vtt").read_bytes(), "spoken.vtt", meta["duration_s"])
    assert cues and not problems  # ordered, no overlaps, none past the audio, none empty
    for c in cues:
        lines = plain_text(c.text).split("\n")
        assert len(lines) <= 2 and all(len(ln) <= 42 for ln in lines)
        assert c.end - c.start <= 7.0 + 1e-3 and (c.end - c.start >= 1.0 - 1e-3 or len(cues) * 1.0 > meta["duration_s"])
    # Whisper ran once, in the work area, keyed by audio + model + language (a rerun reuses it)
    assert list((run["dir"] / "work" / "asr").glob("*.vtt"))
    with av.open(str(run["out"] / "spoken.mp4")) as c:
        assert c.streams.subtitles[0].metadata.get("language") == "eng"


def test_a_renditions_only_change_reruns_the_post_step_alone_then_burns_in_captions(run):
    d, out, settings = run["dir"], run["out"], run["settings"]
    before = _meta(run, "lesson")
    kept = out / "lesson.r144.mp4"
    kept_stat = kept.stat()
    soft_master = out / "lesson.mp4"
    soft_audio = _audio_packets(soft_master)
    soft_frames = _frames(soft_master)
    doc = yaml.safe_load(run["manifest"].read_text())
    doc["defaults"]["renditions"] = [RENDITIONS[0], {**RENDITIONS[1], "fps": 30},
                                     {"name": "r64", "height": 64, "fps": 25}]
    changed = d / "changed.yaml"
    changed.write_text(yaml.safe_dump(doc))
    res = render(str(changed), settings)
    assert res.exit_code == 0, {k: v.reason for k, v in res.jobs.items()}
    assert {j.status for j in res.jobs.values()} == {"published", "skipped"}
    assert res.jobs["lesson"].status == "published" and res.jobs["spoken"].status == "skipped"
    assert sum(j.clips_rendered for j in res.jobs.values()) == 0 and res.actors == []  # no GPU actor at all
    after = _meta(run, "lesson")
    assert after["job_key"] == before["job_key"] and after["post"]["key"] != before["post"]["key"]
    assert kept.stat().st_mtime_ns == kept_stat.st_mtime_ns  # unchanged rendition: not rebuilt
    assert {r["name"]: r["fps"] for r in after["renditions"]} == {"r144": 30, "h96": 30, "r64": 25}
    assert (out / "lesson.r64.mp4").exists() and "h64" not in (out / "lesson.hls" / "master.m3u8").read_text()
    assert soft_master.stat().st_mtime_ns and _audio_packets(soft_master) == soft_audio
    again = render(str(changed), settings)
    assert {j.status for j in again.jobs.values()} == {"skipped"}

    # burned-in captions: only the post step again; the text changes the bottom band only, the audio is untouched
    doc["jobs"][0]["captions_burn"] = True
    burned = d / "burned.yaml"
    burned.write_text(yaml.safe_dump(doc))
    res = render(str(burned), settings)
    assert res.exit_code == 0 and res.jobs["lesson"].clips_rendered == 0, res.jobs["lesson"].reason
    assert _meta(run, "lesson")["captions"]["burned"] is True
    assert _audio_packets(soft_master) == soft_audio  # bit-exact source audio, still
    burnt_frames = _frames(soft_master)
    assert len(burnt_frames) == len(soft_frames)
    h = soft_frames.shape[1]
    diff = np.abs(burnt_frames.astype(int) - soft_frames.astype(int)).mean(axis=3)  # (t, y, x)
    t_cue = int(1.0 * 16)  # 1.0 s: inside the first cue
    t_none = int(2.0 * 16)  # 2.0 s: between the two cues
    text_band = diff[t_cue, int(h * 0.6):, :]
    assert (text_band > 60).sum() > 30  # glyphs: many strongly changed pixels at the bottom
    # elsewhere only the noise of one re-encode (crf 18): no pixel changes like a glyph's
    top = diff[t_cue, : int(h * 0.5), :]
    assert (top > 60).sum() == 0 and np.percentile(top, 99) < 20
    assert (diff[t_none] > 60).sum() == 0 and np.percentile(diff[t_none], 99) < 20  # no cue shown: no text


def _frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@pytest.mark.parametrize("folder", ["we:ird", "a,b;c", "it's [x]", "back\\slash"])
def test_burned_captions_work_from_any_folder_name(tmp_path, folder):
    """The captions file (and the fonts folder) go into ffmpeg's filter graph by path; escaped for one parser only,
    a `:` in TMPDIR or caption_fonts_dir broke burned captions ("No option name near …") or set other options."""
    from pipeline.captions import Cue, write_ass
    from pipeline.renditions import burned_master_argv

    d = tmp_path / folder
    d.mkdir()
    master, out = d / "master.mp4", d / "burned.mp4"
    run_ffmpeg(["-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=gray:s=160x96:r=16:d=1", "-f", "lavfi",
                "-i", "anullsrc=r=48000:cl=stereo", "-t", "1", "-c:v", "libx264", "-c:a", "aac", "-shortest",
                str(master)])
    ass = d / "subs.ass"
    ass.write_text(write_ass([Cue(0.0, 1.0, "Hello, world")], 160, 96))
    run_ffmpeg(burned_master_argv(str(master), str(ass), str(out), 16, 18, "ultrafast", fonts_dir=str(d)))

    def first_frame(p: Path) -> np.ndarray:
        with av.open(str(p)) as c:
            return next(c.decode(video=0)).to_ndarray(format="gray").astype(int)

    assert np.abs(first_frame(out) - first_frame(master)).max() > 64  # the text is there
