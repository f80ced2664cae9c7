"""Starting the embedded local Ray: a start Ray itself gives up on (its node has a hard-coded 30 s to register
with the GCS) is tried once more; any start failure is a named ClusterError, never a traceback.

Ray's time-out cannot be provoked on demand here, so `ray.init` raises Ray's own exception text on the calls the
test chooses and is Ray's real `init` otherwise (the local Ray that then starts is real)."""

from __future__ import annotations

import pytest

from core.errors import ClusterError
from core.settings import Settings

STOPS_SHARED_RAY = True
RAYS_WORDS = ("The current node timed out during startup. This could happen because some of the raylet failed to "
              "startup or the GCS has become overloaded.")


def _failing(real, times: int, calls: list):
    def init(*a, **kw):
        calls.append(kw.get("address"))
        if len(calls) <= times:
            raise Exception(RAYS_WORDS)  # what ray/_private/node.py raises
        return real(*a, **kw)
    return init


def test_a_local_start_that_timed_out_is_tried_once_more(no_ray, monkeypatch, caplog):
    import ray

    from orchestrator.render.session import ray_session

    calls: list = []
    monkeypatch.setattr(ray, "init", _failing(ray.init, 1, calls))
    with caplog.at_level("WARNING", logger="s2v.session"), ray_session(Settings(gpus=1)):
        assert ray.is_initialized() and ray.cluster_resources().get("GPU") == 1
    assert calls == ["local", "local"] and "starting it once more" in caplog.text
    assert not ray.is_initialized()


def test_a_local_start_that_keeps_failing_is_a_named_error(no_ray, monkeypatch):
    import ray

    from orchestrator.render.session import ray_session

    calls: list = []
    monkeypatch.setattr(ray, "init", _failing(ray.init, 2, calls))
    with pytest.raises(ClusterError, match=r"cannot start or join Ray \(local\): The current node timed out.*logs"):
        with ray_session(Settings(gpus=1)):
            pass
    assert calls == ["local", "local"]
