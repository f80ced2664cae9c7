"""Invariant 6: a final URI holds a complete object or nothing, checked by SIGKILLing a real publish mid-copy;
and a failing quality gate fails its job before anything is published."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import media
from orchestrator.run.runner import render

ROOT = Path(__file__).resolve().parents[1]
SIZE = 300 << 20

# The child publishes MP4 then sidecar through the real LocalStorage, exactly as stitch_and_publish does.
CHILD = """
import sys
from pathlib import Path
from infra.storage import parse
from infra.storage.local import LocalStorage
src, side, dest = sys.argv[1:4]
LocalStorage().publish([(Path(src), parse(dest + ".mp4")), (Path(side), parse(dest + ".json"))])
"""


def _sha(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """300 MB of incompressible bytes (a repeating random MiB shifted per block: fast to make, no runs of zeros)."""
    d = tmp_path_factory.mktemp("big")
    src = d / "v2.mp4"
    block = os.urandom(1 << 20)
    with open(src, "wb") as fh:
        for i in range(SIZE >> 20):
            fh.write(block[i % 4093:] + block[: i % 4093])
    side = d / "v2.json"
    side.write_text(json.dumps({"version": 2, "sha256": _sha(src)}))
    yield src, side
    src.unlink()


def _publish(src: Path, side: Path, dest: Path, kill: bool) -> tuple[int, int | None]:
    """Run the child; with kill=True SIGKILL it the moment its temp file appears. Returns (rc, temp bytes at kill)."""
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(src), str(side), str(dest)], cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE)
    seen = None
    if kill:
        deadline = time.monotonic() + 60
        while p.poll() is None and time.monotonic() < deadline:
            tmp = [e for e in os.scandir(dest.parent) if e.name.startswith(".tmp-")]
            if tmp:
                os.kill(p.pid, signal.SIGKILL)
                seen = tmp[0].stat().st_size if os.path.exists(tmp[0].path) else None
                # at the moment of the kill the final name must not already hold the new bytes
                assert not Path(str(dest) + ".mp4").exists() or _sha(Path(str(dest) + ".mp4")) != _sha(src)
                break
            time.sleep(0.0005)
    _, err = p.communicate(timeout=120)
    assert kill or p.returncode == 0, err.decode()[-2000:]
    return p.returncode, seen


def _killed_mid_publish(src: Path, side: Path, dest: Path) -> int | None:
    """Retry until a kill lands while the MP4's temp file is being written (the copy takes ~0.2 s)."""
    for _ in range(5):
        rc, seen = _publish(src, side, dest, kill=True)
        if rc == -signal.SIGKILL:
            return seen
        for ext in (".mp4", ".json"):  # it finished first: undo and try again
            Path(str(dest) + ext).unlink(missing_ok=True)
    pytest.fail("could not interrupt a publish in 5 tries")


def test_interrupted_first_publish_leaves_nothing_then_rerun_completes(big, tmp_path):
    src, side = big
    dest = tmp_path / "out" / "lesson"
    dest.parent.mkdir()
    seen = _killed_mid_publish(src, side, dest)
    mp4, js = Path(f"{dest}.mp4"), Path(f"{dest}.json")
    assert not mp4.exists()  # no partial file under the final name
    assert not js.exists()  # the sidecar comes last, so it cannot announce an MP4 that is not there
    leftovers = list(dest.parent.glob(".tmp-*"))
    assert leftovers and (seen is None or seen <= SIZE)  # the killed write really was in progress
    from infra.storage.base import is_temp_name

    # what a SIGKILL leaves is named by the temp contract: recognisable for cleaning, never matching `*.mp4`
    assert all(is_temp_name(t.name) and t.name.endswith(".partial") for t in leftovers)
    from infra.storage import parse
    from infra.storage.local import LocalStorage

    assert list(LocalStorage().list(parse(str(dest.parent)))) == []  # listings never show temp files
    _publish(src, side, dest, kill=False)
    assert mp4.stat().st_size == SIZE and _sha(mp4) == json.loads(js.read_text())["sha256"]
    for t in leftovers:
        t.unlink(missing_ok=True)


def test_interrupted_republish_keeps_the_previous_version_whole(big, tmp_path):
    src, side = big
    dest = tmp_path / "out" / "lesson"
    dest.parent.mkdir()
    v1, v1_side = tmp_path / "v1.mp4", tmp_path / "v1.json"
    v1.write_bytes(b"previous complete video " * 1000)
    v1_side.write_text(json.dumps({"version": 1}))
    _publish(v1, v1_side, dest, kill=False)
    _killed_mid_publish(src, side, dest)
    assert Path(f"{dest}.mp4").read_bytes() == v1.read_bytes()  # old version, whole, not a mix
    assert json.loads(Path(f"{dest}.json").read_text()) == {"version": 1}  # the sidecar still matches it
    _publish(src, side, dest, kill=False)
    assert _sha(Path(f"{dest}.mp4")) == json.loads(Path(f"{dest}.json").read_text())["sha256"]
    for t in dest.parent.glob(".tmp-*"):
        t.unlink()


def test_black_frames_fail_the_quality_gate_and_publish_nothing(ray_local, assets, settings, tmp_path):
    out = tmp_path / "out"
    m = media.write_manifest(tmp_path / "m.yaml", [
        {"id": "dark", "audio": str(assets["speech4"]), "seed": 1},
        {"id": "lit", "audio": str(assets["speech4"]), "seed": 2}],
        {"image": str(assets["image"]), "size": "96*96", "backend": "faults", "output": str(out)})
    s = settings.model_copy(update={"faults": [{"action": "black", "job": "dark", "times": 0}],
                                    "faults_dir": str(tmp_path / "faults"), "max_black_s": 0.5})
    res = render(str(m), s)
    assert res.exit_code == 1
    assert res.jobs["lit"].status == "published" and (out / "lit.mp4").exists()
    dark = res.jobs["dark"]
    assert dark.status == "failed" and "quality gate" in dark.reason and "black frames" in dark.reason
    assert "limit 0.5s" in dark.reason
    assert not any((out / f"dark.{ext}").exists() for ext in ("mp4", "jpg", "json"))
