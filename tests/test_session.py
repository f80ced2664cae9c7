"""Starting the embedded local Ray: a start Ray itself gives up on (its node has a hard-coded 30 s to register
with the GCS) is tried once more; any start failure is a named ClusterError, never a traceback.

Ray's time-out cannot be provoked on demand here, so `ray.init` raises Ray's own exception text on the calls the
test chooses and is Ray's real `init` otherwise (the local Ray that then starts is real). Each case runs in a
fresh interpreter: Ray starts its processes with a preexec_fn, which can hang in a fork of a test worker that has
run many threads."""

from __future__ import annotations

import subprocess
import sys

from loopback_cluster import ROOT

SCRIPT = """
import logging, sys, ray
from core.errors import ClusterError
from core.settings import Settings
from orchestrator.render.session import ray_session
logging.basicConfig(level=logging.WARNING, stream=sys.stdout)
fails, calls, real = int(sys.argv[1]), [], ray.init
def init(*a, **kw):
    calls.append(kw.get("address"))
    if len(calls) <= fails:  # what ray/_private/node.py raises
        raise Exception("The current node timed out during startup. This could happen because some of the raylet "
                        "failed to startup or the GCS has become overloaded.")
    return real(*a, **kw)
ray.init = init
try:
    with ray_session(Settings(gpus=1)):
        print("GPUS", ray.cluster_resources().get("GPU"))
except ClusterError as e:
    print("ERROR", e)
print("CALLS", calls, "AFTER", ray.is_initialized())
"""


def _run(fails: int) -> str:
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(fails)], cwd=ROOT, capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_a_local_start_that_timed_out_is_tried_once_more():
    out = _run(1)
    assert "GPUS 1.0" in out and "starting it once more" in out
    assert "CALLS ['local', 'local'] AFTER False" in out


def test_a_local_start_that_keeps_failing_is_a_named_error():
    out = _run(2)
    assert "ERROR cannot start or join Ray (local): The current node timed out" in out and "logs" in out
    assert "CALLS ['local', 'local'] AFTER False" in out and "Traceback" not in out
