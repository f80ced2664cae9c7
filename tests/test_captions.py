"""Captions and rendition specs without rendering: caption files broken in a dozen ways (each a named problem
with its line), normalisation to WebVTT, auto-caption cue rules, and the manifest's new fields."""

from __future__ import annotations

import numpy as np
import pytest

from core.settings import Settings
import media
from pipeline.captions import (MAX_CHARS, Word, clean_words, cues_from_words, parse_captions, plain_text, write_ass,
                               write_vtt)

GOOD_SRT = ("1\n00:00:00,500 --> 00:00:02,000\nHello <i>world</i> & co\n\n"
            "2\n00:00:02,500 --> 00:00:03,900\n<font color=red>Bye</font>\n")
GOOD_VTT = ("WEBVTT - lesson\nKind: captions\n\nNOTE a note\n\nintro\n00:00.500 --> 00:00:02.000 line:80%\nHello\n\n"
            "00:00:02.500 --> 00:00:03.900\nBye\n")

BROKEN = {
    # name: (file name, bytes, audio seconds, expected words in the problem, expected line)
    "latin1": ("a.srt", "1\n00:00:00,500 --> 00:00:02,000\ncaf\xe9\n".encode("latin-1"), 10, "not UTF-8", 3),
    "utf16": ("a.srt", GOOD_SRT.encode("utf-16"), 10, "UTF-16", 1),
    "empty": ("a.vtt", b"\n\n  \n", 10, "empty", None),
    "binary": ("a.srt", b"\x00\x01\x02ftypmp42\x00\x00", 10, "binary", None),
    "no_header": ("a.vtt", b"00:00.500 --> 00:00:02.000\nHello\n", 10, "WEBVTT", 1),
    "not_captions": ("notes.txt", b"just some text\nand more\n", 10, "neither SubRip", 1),
    "bad_timing": ("a.srt", b"1\n00:00:00,500 -> 00:00:02,000\nHello\n", 10, "bad timing line", 2),
    "minutes_60": ("a.vtt", b"WEBVTT\n\n00:61:00.000 --> 00:62:00.000\nHello\n", 9999, "below 60", 3),
    "short_ms": ("a.srt", b"1\n00:00:00,5 --> 00:00:02,000\nHello\n", 10, "three digits", 2),
    "bad_number": ("a.srt", b"one\n00:00:00,500 --> 00:00:02,000\nHello\n", 10, "expected a cue number", 1),
    "no_text": ("a.srt", b"1\n00:00:00,500 --> 00:00:02,000\n\n2\n00:00:03,000 --> 00:00:04,000\nx\n", 10,
                "no text", 2),
    "end_before_start": ("a.srt", b"1\n00:00:02,000 --> 00:00:01,000\nHello\n", 10, "before it starts", 2),
    "zero_length": ("a.vtt", b"WEBVTT\n\n00:00:01.000 --> 00:00:01.000\nHello\n", 10, "zero length", 3),
    "overlap": ("a.srt", b"1\n00:00:00,500 --> 00:00:03,000\nA\n\n2\n00:00:02,000 --> 00:00:04,000\nB\n", 10,
                "still shown", 6),
    "out_of_order": ("a.srt", b"1\n00:00:05,000 --> 00:00:06,000\nA\n\n2\n00:00:01,000 --> 00:00:02,000\nB\n", 10,
                     "before the previous cue", 6),
    "past_audio": ("a.vtt", b"WEBVTT\n\n00:00:01.000 --> 00:00:02.000\nA\n\n00:00:03.000 --> 00:00:09.000\nB\n", 5.0,
                   "after the audio ends", 6),
    "vtt_missing_timing": ("a.vtt", b"WEBVTT\n\nid-1\nHello there\n", 10, "expected a timing line", 3),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_broken_caption_files_are_named_with_their_line(kind):
    name, data, audio_s, words, line = BROKEN[kind]
    _, problems = parse_captions(data, name, audio_s)
    assert problems, f"{kind}: no problem found"
    p = next((p for p in problems if words in p.reason), None)
    assert p is not None, [str(x) for x in problems]
    assert p.where == (f"{name}:{line}" if line else name)


def test_good_files_normalise_to_the_same_webvtt():
    srt, problems = parse_captions(GOOD_SRT.encode("utf-8-sig"), "a.srt", 4.0)  # with a BOM
    assert not problems
    vtt, problems = parse_captions(GOOD_VTT.encode(), "a.vtt", 4.0)
    assert not problems
    assert [(c.start, c.end) for c in srt] == [(c.start, c.end) for c in vtt] == [(0.5, 2.0), (2.5, 3.9)]
    doc = write_vtt(srt)
    assert doc.startswith("WEBVTT\n\n00:00:00.500 --> 00:00:02.000\nHello <i>world</i> &amp; co\n")
    assert "font" not in doc and "Bye" in doc
    again, problems = parse_captions(doc.encode(), "x.vtt", 4.0)  # our output is valid input
    assert not problems and [plain_text(c.text) for c in again] == ["Hello world & co", "Bye"]
    ass = write_ass(srt, 1280, 720)
    assert "PlayResY: 720" in ass and "Hello {\\i1}world{\\i0} & co" in ass
    assert ",40,&H00FFFFFF" in ass  # font size follows the height: 5.5 % of 720 px


def _words(rng, n, rate=2.8):
    vocab = ["the", "water", "cycle", "moves", "energy,", "between", "oceans", "and", "clouds.", "evaporation",
             "photosynthesis!", "a", "very-long-compound-word-that-is-longer-than-a-caption-line-allows"]
    t, out = 0.3, []
    for _ in range(n):
        d = rng.uniform(0.12, 0.6)
        out.append(Word(str(rng.choice(vocab)), t, t + d))
        t += d + (rng.uniform(0.6, 1.5) if rng.random() < 0.08 else rng.uniform(0.0, 0.12))
    return out, t + 0.5


@pytest.mark.parametrize("seed", range(6))
def test_cues_from_words_follow_the_style_guide(seed):
    rng = np.random.default_rng(seed)
    words, audio_s = _words(rng, 160)
    cues = cues_from_words(words, audio_s)
    assert cues
    prev_end = 0.0
    for c in cues:
        lines = c.text.split("\n")
        assert 1 <= len(lines) <= 2 and all(0 < len(plain_text(ln)) <= MAX_CHARS for ln in lines), c.text
        assert 1.0 - 1e-6 <= c.end - c.start <= 7.0 + 1e-6, c
        assert c.start >= prev_end - 1e-6 and c.end <= audio_s + 1e-6
        prev_end = c.end
    text = " ".join(plain_text(c.text).replace("\n", " ") for c in cues)
    assert text.split() == [w.text for w in clean_words(words, audio_s)]  # nothing lost, added or reordered
    # a long pause always ends a cue: the word after each pause opens a cue (in order, as a subsequence)
    openers = iter([plain_text(c.text).split()[0] for c in cues])
    after_pause = [b.text[:MAX_CHARS] for a, b in zip(words, words[1:]) if b.start - a.end >= 0.5 + 1e-6]
    assert after_pause and all(any(o == w for o in openers) for w in after_pause)


def test_noise_words_still_make_valid_cues():
    """What tiny random Whisper weights produce: control characters, replacement characters, clustered times."""
    words = [Word("\x00\ufffdab", 0.0, 0.0), Word("c\nd", 0.0, 0.02), Word("<b>&", 0.02, 0.02),
             Word("x" * 100, 0.5, 0.5),
             Word("late", 9.0, 12.0)]
    cues = cues_from_words(words, 5.0)
    doc = write_vtt(cues)
    back, problems = parse_captions(doc.encode(), "auto.vtt", 5.0)
    assert not problems, problems
    assert all(c.end - c.start >= 1.0 - 1e-6 for c in back) and back[-1].end <= 5.0


def _manifest(tmp_path, assets, **job):
    return media.write_manifest(tmp_path / "m.yaml", [{"id": "j", "audio": str(assets["speech4"]), **job}],
                                {"image": str(assets["image"]), "size": "96*96", "output": str(tmp_path / "out")})


@pytest.mark.parametrize("job, field, words", [
    ({"caption_language": "english"}, "caption_language", "BCP-47"),
    ({"caption_language": "en_US"}, "caption_language", "BCP-47"),
    ({"caption_language": "qq-ZZ"}, "caption_language", "not"),
    ({"captions_burn": True}, "captions_burn", "needs captions"),
    ({"renditions": [{"name": "hd", "heigth": 720}]}, "renditions.0", "did you mean 'height'"),
    ({"renditions": [{"name": "hd", "height": 721}]}, "renditions.0.height", "odd"),
    ({"renditions": [{"name": "hd", "crf": 20, "bitrate": "2M"}]}, "renditions.0", "not both"),
    ({"renditions": [{"name": "a", "height": 720}, {"name": "a", "height": 480}]}, "renditions", "used twice"),
    ({"renditions": [{"name": "a", "format": "dash"}]}, "renditions.0.format", "mp4"),
    ({"renditions": [{"name": "a", "fps": 30, "loudness": -3}]}, "renditions.0.loudness", "-5"),
    ({"renditions": [{"name": "a", "format": "hls"}, {"name": "b", "format": "hls", "segments": "ts"}]},
     "renditions", "one segment type"),
    ({"renditions": [{"name": "a", "interpolate": True}]}, "renditions.0", "needs an fps"),
])
def test_manifest_rejects_bad_delivery_fields(tmp_path, assets, job, field, words):
    from orchestrator.intake.manifest import load_manifest

    m = load_manifest(str(_manifest(tmp_path, assets, **job)), None, Settings())
    assert not m.jobs
    assert any(p.field == field and words in p.reason for p in m.problems), [str(p) for p in m.problems]


def test_csv_cells_and_defaults_carry_renditions(tmp_path, assets):
    from orchestrator.intake.manifest import load_manifest

    csv = tmp_path / "m.csv"
    csv.write_text("id,audio,image,captions,caption_language,renditions\n"
                   f"a,{assets['speech4']},{assets['image']},auto,pt-br,\"[{{name: sd, height: 480, fps: 30}}]\"\n")
    m = load_manifest(str(csv), None, Settings())
    assert not m.problems, m.problems
    j = m.jobs[0]
    assert j.captions == "auto" and j.caption_language == "pt-BR"
    assert j.renditions[0].height == 480 and j.renditions[0].loudness == -16.0


def test_validate_names_every_caption_problem_of_the_row(tmp_path, assets, run_cli):
    bad = tmp_path / "bad.srt"
    bad.write_bytes(b"1\n00:00:00,500 --> 00:00:03,000\nA\n\n2\n00:00:02,000 --> 00:00:09,000\nB\n")
    m = media.write_manifest(tmp_path / "m.yaml", [
        {"id": "bad", "audio": str(assets["speech4"]), "captions": str(bad)},
        {"id": "missing", "audio": str(assets["speech4"]), "captions": str(tmp_path / "nope.vtt")},
        {"id": "auto", "audio": str(assets["speech4"]), "captions": "auto"},
        {"id": "fine", "audio": str(assets["speech4"])}],
        {"image": str(assets["image"]), "size": "96*96", "output": str(tmp_path / "out")})
    from core.settings import Settings
    from orchestrator.cli.main import _check

    s = Settings(work=str(tmp_path / "w"), cache_dir=tmp_path / "c", asr_model_dir=str(tmp_path / "no-model"))
    _, problems, plans = _check(str(m), s, None, deep=True)
    by_row = {}
    for p in problems:
        by_row.setdefault(p.where.split("(job #")[1][0], []).append(p)
    reasons = " | ".join(p.reason for p in by_row["1"])
    assert "bad.srt:6" in reasons and "still shown" in reasons and "after the audio ends" in reasons
    assert all(p.field == "captions" for p in by_row["1"])
    assert "nope.vtt" in by_row["2"][0].reason and by_row["2"][0].field == "captions"
    assert "Whisper model folder" in by_row["3"][0].reason and "no-model" in by_row["3"][0].reason
    assert [p.job.id for p in plans] == ["fine"]
    assert run_cli("validate", m) == 2
