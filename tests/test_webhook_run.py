"""The runner's webhook: one signed POST per job published or failed and one per run, to a loopback receiver."""

from __future__ import annotations

import json

import media
from orchestrator.run.runner import render
from orchestrator.deliver.webhook import verify
from test_webhook import Receiver


def test_run_posts_signed_events(ray_local, assets, settings, tmp_path):
    rec = Receiver((200,))
    try:
        s = settings.model_copy(update={"webhook_url": rec.url, "webhook_secret": "s3cret",
                                        "faults": [{"action": "fail", "job": "bad", "times": 0}],
                                        "faults_dir": str(tmp_path / "f")})
        m = media.write_manifest(tmp_path / "m.yaml", [
            {"id": "good", "audio": str(assets["speech4"])}, {"id": "bad", "audio": str(assets["speech4"])}],
            {"image": str(assets["image"]), "size": "96*96", "backend": "faults", "output": str(tmp_path / "o")})
        res = render(str(m), s)
        assert res.exit_code == 1
        events = []
        for _, headers, body in rec.requests:
            assert verify("s3cret", body, headers)
            events.append(json.loads(body))
        flat = json.dumps(events)
        assert '"good"' in flat and '"bad"' in flat and "published" in flat and "failed" in flat
        assert len(events) == 3  # two jobs + the run
        assert "s3cret" not in flat
    finally:
        rec.stop()
