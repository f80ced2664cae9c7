"""SCORM packages in a real browser (headless chromium over WebDriver): the launch page inside a test LMS frame —
a page on 127.0.0.1 that provides `API` (1.2) and `API_1484_11` (2004) and records every call — plays the video,
loads its captions and chapters tracks, reports progress, completes only past the set share, resumes at the
saved location in the next session, and terminates once; without an LMS it plays as a plain page."""

from __future__ import annotations

import json
import zipfile

import pytest

import media
from browser import chromium, serve_folder, wait_for
from conftest import start_local_ray
from orchestrator.run.runner import render

LMS = """<!doctype html><html><head><meta charset="utf-8"><title>test LMS</title></head><body><script>
// the learner's record lives in sessionStorage, so a reload is the learner's next session; ?fresh starts over
const K = location.pathname;
if (location.search.includes('fresh')) { sessionStorage.removeItem(K + ':lms'); sessionStorage.removeItem(K + ':calls');
  history.replaceState(null, '', K); }
const store = JSON.parse(sessionStorage.getItem(K + ':lms') || '{}');
window.calls = JSON.parse(sessionStorage.getItem(K + ':calls') || '[]');
function rec(name, args, ret) { calls.push([name].concat(args)); sessionStorage.setItem(K + ':calls', JSON.stringify(calls)); return ret; }
function put(k, v) { store[k] = v; sessionStorage.setItem(K + ':lms', JSON.stringify(store)); }
const common = {GetLastError: () => '0', GetErrorString: () => '', GetDiagnostic: () => ''};
window.API = {LMSInitialize: a => rec('LMSInitialize', [a], 'true'), LMSFinish: a => rec('LMSFinish', [a], 'true'),
  LMSGetValue: k => rec('LMSGetValue', [k], store[k] || ''), LMSSetValue: (k, v) => (put(k, v), rec('LMSSetValue', [k, v], 'true')),
  LMSCommit: a => rec('LMSCommit', [a], 'true'), LMSGetLastError: () => '0', LMSGetErrorString: () => '', LMSGetDiagnostic: () => ''};
window.API_1484_11 = Object.assign({Initialize: a => rec('Initialize', [a], 'true'), Terminate: a => rec('Terminate', [a], 'true'),
  GetValue: k => rec('GetValue', [k], store[k] || ''), SetValue: (k, v) => (put(k, v), rec('SetValue', [k, v], 'true')),
  Commit: a => rec('Commit', [a], 'true')}, common);
</script><iframe id="sco" src="PKG/index.html" width="900" height="700" allow="autoplay"></iframe></body></html>"""
NAMES = {"1.2": {"set": "LMSSetValue", "status": "cmi.core.lesson_status", "location": "cmi.core.lesson_location",
                 "init": "LMSInitialize", "end": "LMSFinish"},
         "2004": {"set": "SetValue", "status": "cmi.completion_status", "location": "cmi.location",
                  "init": "Initialize", "end": "Terminate"}}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Two packages (one per SCORM version) of a 13 s lesson, unzipped under a served folder with the test LMS."""
    from core.settings import Settings

    d = tmp_path_factory.mktemp("scorm-site")
    pcm, _ = media.speech([(3.0, 0.6), (4.0, 0.5), (2.5, 0.7), (3.0, 0)], seed=3)
    audio = media.write_wav(d / "talk.wav", pcm)
    (d / "talk.srt").write_text("1\n00:00:00,500 --> 00:00:02,500\nHello there\n\n"
                                "2\n00:00:04,000 --> 00:00:06,000\nSecond line\n")
    jobs = [{"id": f"talk{v}", "title": f"Talk {v}", "package": f"scorm{v}", "seed": 1} for v in ("12", "2004")]
    manifest = media.write_manifest(d / "m.yaml", jobs, {
        "audio": str(audio), "image": str(media.presenter(d / "p.png")), "size": "128*128", "output": str(d / "out"),
        "captions": "talk.srt", "chapters": [{"at": 0, "title": "Start"}, {"at": 7, "title": "Middle"}],
        "package_completion": 0.9})
    start_local_ray()
    res = render(str(manifest), Settings(gpus=2, work=str(d / "work"), cache_dir=d / "cache"))
    assert res.exit_code == 0, {k: v.reason for k, v in res.jobs.items()}
    root = d / "site"
    for v in ("12", "2004"):
        with zipfile.ZipFile(d / "out" / f"talk{v}.scorm.zip") as z:
            z.extractall(root / f"talk{v}")
        (root / f"lms{v}.html").write_text(LMS.replace("PKG", f"talk{v}"))
    from orchestrator.cli.main import main  # the whole catalog as one package: a lesson is a SCO in a folder

    with pytest.raises(SystemExit) as e:
        main(["package", str(manifest), "--kind", "scorm2004", "--output", str(d / "catalog.zip")])
    assert e.value.code in (0, None)
    with zipfile.ZipFile(d / "catalog.zip") as z:
        z.extractall(root / "catalog")
    (root / "lmscat.html").write_text(LMS.replace("PKG", "catalog/talk12"))
    # an LMS that launches the SCO in a new window: the API is on the opener, not on a parent frame
    (root / "lmsopen.html").write_text(LMS.replace('<iframe id="sco" src="PKG/index.html" width="900" height="700" '
                                                   'allow="autoplay"></iframe>',
                                                   "<script>window.open('talk2004/index.html', 'sco')</script>"))
    with serve_folder(root) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    b = chromium()
    yield b
    b.quit()


def _calls(b):
    b.switch_to.default_content()
    return b.execute_script("return window.calls")


def _in_sco(b):
    b.switch_to.default_content()
    b.switch_to.frame(b.find_element("id", "sco"))


def _sets(calls, name, key):
    return [c[2] for c in calls if c[0] == name and c[1] == key]


@pytest.mark.parametrize("version", ["1.2", "2004"])
def test_a_package_plays_reports_completes_resumes_and_terminates_in_an_lms(site, browser, version):
    n, b = NAMES[version], browser
    b.get(f"{site}/lms{version.replace('.', '')}.html?fresh")
    _in_sco(b)
    wait_for(b, "document.querySelector('video').readyState >= 1", what="the video's metadata")
    # captions and chapters tracks are loaded; the chapter menu lists both
    tracks = wait_for(b, """(() => { const t = Array.from(document.querySelector('video').textTracks);
        const c = t.find(x => x.kind === 'captions'), h = t.find(x => x.kind === 'chapters');
        return c && h && c.cues && h.cues && c.cues.length && h.cues.length ? [c.mode, c.cues.length, h.cues.length,
        h.cues[1].text, h.cues[1].startTime] : null; })()""", what="captions and chapters cues")
    assert tracks == ["showing", 2, 2, "Middle", 7]
    assert b.execute_script("return document.querySelectorAll('.s2v-chapters button').length") == 2
    # half the lesson watched: progress and location reported, not completed
    b.execute_script("const v = document.querySelector('video'); v.playbackRate = 4; v.play()")
    wait_for(b, "document.querySelector('video').currentTime > 6.5", what="playback to 6.5 s")
    b.execute_script("document.querySelector('video').pause()")
    calls = wait_for(b, f"(window.parent.calls || []).filter(c => c[1] === '{n['location']}').length && window.parent.calls",
                     what="a saved location")
    assert calls[0] == [n["init"], ""]
    assert _sets(calls, n["set"], n["status"]) == ["incomplete"]
    location = float(_sets(calls, n["set"], n["location"])[-1])
    assert 6.0 <= location <= 8.0
    # the next session resumes there, and a seek to the end does not count as watched
    b.switch_to.default_content()
    b.refresh()
    _in_sco(b)
    wait_for(b, "document.querySelector('video').readyState >= 1", what="metadata after reload")
    at = wait_for(b, "document.querySelector('video').currentTime", what="the resumed position")
    assert abs(at - location) < 0.6
    assert "Resumed at 0:0" in b.execute_script("return document.querySelector('.s2v-status').textContent")
    b.execute_script("const v = document.querySelector('video'); v.currentTime = v.duration - 0.3; v.play()")
    wait_for(b, "document.querySelector('video').ended", what="the end after a seek")
    assert "completed" not in _sets(_calls(b), n["set"], n["status"])
    # watching the rest (0 → resume point was seen in the first session) completes it
    _in_sco(b)
    b.execute_script("const v = document.querySelector('video'); v.playbackRate = 4; v.currentTime = location - 0.5;"
                     " v.play()".replace("location", str(location)))
    wait_for(b, "document.querySelector('video').ended", what="the end of the lesson")
    calls = _calls(b)
    assert _sets(calls, n["set"], n["status"])[-1] == "completed"
    if version == "2004":
        assert float(_sets(calls, "SetValue", "cmi.progress_measure")[-1]) >= 0.9
    # leaving the lesson terminates once, with the session time and a suspend exit
    b.execute_script("document.getElementById('sco').remove()")
    calls = wait_for(b, f"window.calls.filter(c => c[0] === '{n['end']}').length && window.calls", what="terminate")
    starts = [i for i, c in enumerate(calls) if c[0] == n["init"]]
    assert len(starts) == 2  # two sessions (the reload), each initialised once and terminated once, last
    for a, z in zip(starts, starts[1:] + [len(calls)]):
        session = [c[0] for c in calls[a:z]]
        assert session.count(n["end"]) == 1 and session[-1] == n["end"], session
    exit_key = "cmi.core.exit" if version == "1.2" else "cmi.exit"
    assert _sets(calls, n["set"], exit_key)[-1] == "suspend"
    time_key = "cmi.core.session_time" if version == "1.2" else "cmi.session_time"
    assert _sets(calls, n["set"], time_key)


def test_a_lesson_of_the_catalog_package_talks_to_the_lms(site, browser):
    b = browser
    b.get(f"{site}/lmscat.html?fresh")
    _in_sco(b)
    wait_for(b, "document.querySelector('video').readyState >= 1", what="the catalog lesson's video")
    wait_for(b, "document.querySelector('.s2v-chapters button')", what="its chapter menu")
    calls = _calls(b)
    assert calls[0] == ["Initialize", ""] and ["SetValue", "cmi.completion_status", "incomplete"] in calls


def test_a_sco_opened_in_a_new_window_finds_the_api_on_its_opener(site, browser):
    b = browser
    b.switch_to.default_content()
    lms = b.current_window_handle
    b.get(f"{site}/lmsopen.html?fresh")
    wait_for(b, "window.calls.some(c => c[0] === 'Initialize')", what="Initialize from the opened window")
    popup = next(h for h in b.window_handles if h != lms)
    b.switch_to.window(popup)
    b.close()
    b.switch_to.window(lms)
    calls = wait_for(b, "window.calls.some(c => c[0] === 'Terminate') && window.calls", what="Terminate on close")
    assert [c[0] for c in calls].count("Initialize") == 1 and calls[-1][0] == "Terminate"


def test_without_an_lms_the_launch_page_plays_as_a_plain_page(site, browser):
    b = browser
    b.switch_to.default_content()
    b.get(f"{site}/talk12/index.html")
    wait_for(b, "document.querySelector('video').readyState >= 2", what="the video")
    b.execute_script("document.querySelector('video').play()")
    wait_for(b, "document.querySelector('video').currentTime > 0.5", what="playback")
    errors = [e for e in b.get_log("browser") if e["level"] == "SEVERE"] if hasattr(b, "get_log") else []
    assert not [e for e in errors if "lesson.js" in e.get("message", "")], errors
    # the transcript's times seek the player
    b.execute_script("document.querySelector('.s2v-transcript .s2v-seek[data-t=\"7.000\"]').click()")
    wait_for(b, "Math.abs(document.querySelector('video').currentTime - 7.0) < 0.6", what="a seek from the transcript")
    assert json.loads(b.execute_script("return JSON.stringify(document.querySelector('video').error)")) is None
