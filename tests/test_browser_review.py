"""The review workflow in a real browser (headless chromium over WebDriver) against the real page (Starlette on
127.0.0.1): a CPU draft of the catalog, the page lists both jobs with their drafts playing with captions and
chapters, one is approved and the other sent back with a note by clicking the page's own buttons, and
`s2v render --approved-only` then renders exactly the approved one (the other awaiting review, exit 0); a later
edit of the approved row needs a new review. Also: the page refuses other Host names and forms without its
token, and the run report plays a job with its captions."""

from __future__ import annotations

import json

import httpx
import pytest
import yaml

import media
from browser import chromium, serve_app, serve_folder, wait_for
from conftest import start_local_ray


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    d = tmp_path_factory.mktemp("review")
    audio = media.write_wav(d / "talk.wav", media.speech([(2.0, 0.5), (1.5, 0)], seed=4)[0])
    (d / "talk.srt").write_text("1\n00:00:00,300 --> 00:00:01,800\nFirst words\n")
    jobs = [{"id": "intro", "title": "Intro lesson", "prompt": "smiling", "captions": "talk.srt",
             "chapters": [{"at": 0, "title": "Hello"}, {"at": 2, "title": "More"}]},
            {"id": "outro", "title": "Outro lesson", "prompt": "waving"}]
    manifest = media.write_manifest(d / "lessons.yaml", jobs, {
        "audio": str(audio), "image": str(media.presenter(d / "p.png")), "size": "128*128", "output": str(d / "out"),
        "backend": "draft"})
    return {"dir": d, "manifest": manifest, "drafts": d / "drafts", "work": d / "work"}


@pytest.fixture(scope="module")
def browser():
    b = chromium()
    yield b
    b.quit()


def _cli(*args) -> int:
    from orchestrator.cli.main import main

    try:
        main([str(a) for a in args])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def _page(catalog):
    from core.settings import Settings
    from orchestrator.review.app import make_app
    from orchestrator.review.catalog import Catalog
    from orchestrator.review.store import ReviewFile, review_file_for

    settings = Settings(work=str(catalog["work"]), cache_dir=catalog["dir"] / "cache")
    cat = Catalog(str(catalog["manifest"]), settings, {"output": str(catalog["drafts"])},
                  ReviewFile(review_file_for(str(catalog["manifest"]))))
    return make_app(cat, "Rita Reviewer")


def test_review_then_render_only_what_was_approved(catalog, browser, monkeypatch):
    monkeypatch.setenv("S2V_WORK", str(catalog["work"]))
    monkeypatch.setenv("S2V_GPUS", "2")
    start_local_ray()
    # 1. the draft pass, published to a drafts folder
    assert _cli("render", catalog["manifest"], "--set", f"output={catalog['drafts']}", "--no-progress") == 0
    b = browser
    with serve_app(_page(catalog)) as url:
        b.get(url + "/")
        assert "Review of" in b.title
        sections = b.find_elements("css selector", "section.job")
        assert [s.get_attribute("id") for s in sections] == ["job-intro", "job-outro"]
        assert b.execute_script("return document.querySelectorAll('section.job .status strong')[0].textContent") \
            == "awaiting review"
        # the draft plays with its captions and chapters
        tracks = wait_for(b, """(() => { const v = document.querySelector('#job-intro video');
            const t = Array.from(v.textTracks); const c = t.find(x => x.kind === 'captions'),
            h = t.find(x => x.kind === 'chapters');
            return v.readyState >= 1 && c && c.cues && c.cues.length && h && h.cues && h.cues.length ?
            [c.cues[0].text, h.cues.length, v.duration > 3] : null; })()""", what="the draft with its tracks")
        assert tracks == ["First words", 2, True]
        # every form control has a label (keyboard and screen reader users reach them by name)
        unlabelled = b.execute_script("""return Array.from(document.querySelectorAll(
            'input:not([type=hidden]), textarea')).filter(i => !document.querySelector('label[for="' + i.id + '"]'))
            .length""")
        assert unlabelled == 0
        # 2. approve one, request changes on the other (a note is required for that)
        b.find_element("css selector", "#job-intro button[value=approved]").click()
        wait_for(b, "document.querySelector('#job-intro .status strong').textContent === 'approved'",
                 what="intro approved")
        b.find_element("css selector", "#job-outro button[value='changes requested']").click()
        assert "needs a note" in wait_for(b, "document.querySelector('[role=alert]') && "
                                             "document.querySelector('[role=alert]').textContent", what="the refusal")
        b.find_element("css selector", "#job-outro textarea").send_keys("Wave with the other hand.")
        b.find_element("css selector", "#job-outro button[value='changes requested']").click()
        wait_for(b, "document.querySelector('#job-outro .status strong').textContent === 'changes requested'",
                 what="outro sent back")
        assert "Wave with the other hand." in b.find_element("css selector", "#job-outro").text
    lines = [json.loads(x) for x in (catalog["dir"] / "lessons.review.jsonl").read_text().splitlines()]
    assert [(x["job"], x["decision"], x["reviewer"]) for x in lines] == [
        ("intro", "approved", "Rita Reviewer"), ("outro", "changes requested", "Rita Reviewer")]
    assert all(len(x["content"]) == 24 and x["at"].endswith("Z") and "lessons.yaml" in x["row"] for x in lines)
    # 3. the GPU pass: only the approved row renders
    assert _cli("render", catalog["manifest"], "--approved-only", "--no-progress", "--run-id", "approved") == 0
    out = catalog["dir"] / "out"
    assert (out / "intro.mp4").exists() and not (out / "outro.mp4").exists()
    report = json.loads((catalog["work"] / "runs" / "approved" / "report.json").read_text())
    assert report["jobs"]["intro"]["status"] == "published"
    assert report["jobs"]["outro"]["status"] == "awaiting-review"
    assert "Wave with the other hand." in report["jobs"]["outro"]["reason"]
    assert report["totals"]["awaiting-review"] == 1
    # 4. an edit of the approved row needs a new review
    doc = yaml.safe_load(catalog["manifest"].read_text())
    doc["jobs"][0]["prompt"] = "smiling broadly"
    catalog["manifest"].write_text(yaml.safe_dump(doc))
    assert _cli("render", catalog["manifest"], "--approved-only", "--no-progress", "--run-id", "edited") == 0
    report = json.loads((catalog["work"] / "runs" / "edited" / "report.json").read_text())
    assert report["jobs"]["intro"]["status"] == "awaiting-review"
    assert "changed since its last review" in report["jobs"]["intro"]["reason"]


def test_the_page_answers_only_loopback_names_and_its_own_forms(catalog):
    with serve_app(_page(catalog)) as url:
        assert httpx.get(url + "/", headers={"Host": "attacker.example"}).status_code == 400  # DNS rebinding
        r = httpx.post(url + "/decide", data={"job": "intro", "decision": "approved", "reviewer": "x",
                                              "token": "guess"})
        assert r.status_code == 403
        assert httpx.get(url + "/media/intro/..%2f..%2fetc%2fpasswd").status_code == 404


def test_the_run_report_plays_a_job_with_its_captions(catalog, browser):
    out = catalog["drafts"]
    assert (out / "report.html").exists()
    with serve_folder(out) as url:
        browser.get(url + "/report.html")
        cues = wait_for(browser, """(() => { const v = document.querySelector('video');
            const c = v && Array.from(v.textTracks).find(x => x.kind === 'captions');
            return v && v.readyState >= 1 && c && c.cues && c.cues.length ? c.cues[0].text : null; })()""",
                        what="a job's player with captions in the report")
        assert cues == "First words"
        browser.execute_script("document.querySelector('video').play()")
        wait_for(browser, "document.querySelector('video').currentTime > 0.3", what="playback in the report")
        links = browser.execute_script("return Array.from(document.querySelectorAll('a')).map(a => a.textContent)")
        assert "Transcript" in " ".join(links)


def test_s2v_review_serves_on_loopback_only(catalog, tmp_path):
    """The command itself, in its own process: the page answers on 127.0.0.1 and nothing listens on the
    machine's other addresses."""
    import os
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "S2V_WORK": str(catalog["work"])}
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "review", str(catalog["manifest"]),
                             "--port", str(port), "--reviewer", "Sam", "--review-file", str(tmp_path / "r.jsonl")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, page = time.monotonic() + 60, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.3)
        assert page is not None and page.status_code == 200, proc.stdout.read() if proc.poll() is not None else ""
        assert 'value="Sam"' in page.text and "Intro lesson" in page.text
        others = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)} - {"127.0.0.1"}
        for addr in others - {a for a in others if a.startswith("127.")}:
            with socket.socket() as s:
                s.settimeout(2)
                assert s.connect_ex((addr, port)) != 0, f"the review page answers on {addr}"
    finally:
        proc.terminate()
        proc.wait(20)
