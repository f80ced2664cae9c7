"""Preemption watchers against loopback servers emulating AWS IMDSv2 and GCP metadata (the real endpoints are
unreachable here); SIGTERM flags written by the real shell trap; a real drain on a real multi-node local Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from core.errors import ConfigError
from core.settings import Settings
from infra.preemption import (
    AwsImdsSource,
    GcpMetadataSource,
    Notice,
    PreemptionWatcher,
    SigtermSource,
    boot_id,
    drain_this_node,
    node_start_time,
    sigterm_flag_path,
    sigterm_trap_command,
    watcher_from_settings,
    write_sigterm_flag,
)

# the test that needs Ray absent, or a cluster of its own, stops the shared local Ray (conftest)
STOPS_SHARED_RAY = True


class FakeMeta:
    """State shared by the emulated metadata servers; tests flip it mid-watch."""

    def __init__(self):
        self.action: dict | None = None
        self.rebalance: dict | None = None
        self.preempted = False
        self.tokens: set[str] = set()
        self.requests: list[tuple[str, str]] = []


def _serve(meta: FakeMeta):
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _send(self, code: int, body: bytes = b"", ctype="text/plain"):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_PUT(self):
            meta.requests.append(("PUT", self.path))
            if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                tok = f"tok{len(meta.tokens)}"
                meta.tokens.add(tok)
                return self._send(200, tok.encode())
            self._send(400)

        def do_GET(self):
            meta.requests.append(("GET", self.path))
            if self.path.startswith("/latest/"):
                # IMDSv2 only: a GET without a valid session token is refused like the real service does.
                if self.headers.get("X-aws-ec2-metadata-token") not in meta.tokens:
                    return self._send(401)
                if self.path == "/latest/meta-data/spot/instance-action":
                    if meta.action is None:
                        return self._send(404, b"Not Found")
                    return self._send(200, json.dumps(meta.action).encode(), "application/json")
                if self.path == "/latest/meta-data/events/recommendations/rebalance":
                    if meta.rebalance is None:
                        return self._send(404, b"Not Found")
                    return self._send(200, json.dumps(meta.rebalance).encode(), "application/json")
                return self._send(404)
            if self.path.startswith("/computeMetadata/v1/"):
                if self.headers.get("Metadata-Flavor") != "Google":
                    return self._send(403)
                key = self.path.split("/computeMetadata/v1/")[1].split("?")[0]
                if key == "instance/preempted":
                    return self._send(200, b"TRUE" if meta.preempted else b"FALSE")
                if key == "instance/id":
                    return self._send(200, b"1234")
            self._send(404)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return srv


@pytest.fixture
def meta_server():
    meta = FakeMeta()
    srv = _serve(meta)
    try:
        yield meta, f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def _wait(pred, timeout=5.0):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.02)
    return False


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class Clock:
    """The watcher's clock, set by the test: deadlines pass without sleeping."""

    def __init__(self):
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _recorder():
    got: list[tuple[str, Notice]] = []
    return got, (lambda n: got.append(("notice", n))), (lambda n: got.append(("clear", n)))


# ---------- sources ----------

def test_aws_imdsv2_404_then_action(meta_server):
    meta, url = meta_server
    src = AwsImdsSource(url)
    assert src.check() == []
    assert ("PUT", "/latest/api/token") in meta.requests
    meta.action = {"action": "terminate", "time": "2030-01-02T03:04:05Z"}
    [n] = src.check()
    assert n.source == "aws-spot" and n.kind == "interruption" and "terminate" in n.reason
    assert n.deadline == pytest.approx(1893553445.0)
    assert src.check() == [n]  # the same item is the same notice (same first-seen time)
    assert len(meta.tokens) == 1  # one token for all requests


def test_aws_token_refresh_on_401(meta_server):
    meta, url = meta_server
    src = AwsImdsSource(url)
    assert src.check() == []
    meta.tokens.clear()  # IMDS forgot the session
    assert src.check() == []
    assert len(meta.tokens) == 1


def test_aws_rebalance_recommendation_is_a_warning(meta_server):
    meta, url = meta_server
    src = AwsImdsSource(url, warning_expiry_s=600)
    meta.rebalance = {"noticeTime": "2030-01-02T03:04:05Z"}
    [n] = src.check()
    assert n.source == "aws-rebalance" and n.kind == "warning"
    assert n.deadline == pytest.approx(1893553445.0 + 600)  # lapses `expiry` after AWS issued it
    meta.action = {"action": "stop", "time": "2030-01-02T03:06:05Z"}
    assert sorted(x.kind for x in src.check()) == ["interruption", "warning"]  # both, each for what it is


def test_gcp_preempted(meta_server):
    meta, url = meta_server
    src = GcpMetadataSource(url)
    assert src.check() == []
    meta.preempted = True
    [n] = src.check()
    assert n.source == "gcp-preempted" and n.kind == "interruption"
    assert 20 < n.deadline - time.time() <= 30
    assert src.check() == [n]


# ---------- the watcher: warnings, interruptions, clearing ----------

def test_rebalance_is_a_warning_not_an_interruption(meta_server):
    """A rebalance recommendation is an early warning: `notice()` stays None (the actor keeps rendering)."""
    meta, url = meta_server
    got, on_notice, on_clear = _recorder()
    w = PreemptionWatcher([AwsImdsSource(url)], on_notice=on_notice, on_clear=on_clear)
    meta.rebalance = {"noticeTime": _iso(time.time())}
    assert w.poll_once() is None and w.notice() is None
    assert w.warning() is not None and w.warning().source == "aws-rebalance"
    assert [(e, n.kind) for e, n in got] == [("notice", "warning")]
    w.poll_once()
    assert len(got) == 1  # once per warning, not per poll


def test_watcher_thread_reports_warning_then_interruption(meta_server):
    meta, url = meta_server
    got, on_notice, on_clear = _recorder()
    w = PreemptionWatcher([AwsImdsSource(url)], poll_s=0.05, on_notice=on_notice, on_clear=on_clear).start()
    try:
        time.sleep(0.2)
        assert w.notice() is None and w.warning() is None
        meta.rebalance = {"noticeTime": _iso(time.time())}
        assert _wait(lambda: w.warning() is not None)
        meta.action = {"action": "stop", "time": _iso(time.time() + 60)}
        assert _wait(lambda: w.notice() is not None)
        assert w.notice().source == "aws-spot" and w.warning().source == "aws-rebalance"
        # the watcher makes a notice visible before it calls back (log line first): wait for the callback
        assert _wait(lambda: len(got) >= 2)
        assert [(e, n.source) for e, n in got] == [("notice", "aws-rebalance"), ("notice", "aws-spot")]
        assert 0 < w.notice().seen <= time.time()
    finally:
        w.stop()


def test_interruption_clears_once_the_node_outlives_its_deadline(meta_server):
    """IMDS answers 404 again and the node is alive past deadline + grace: the notice clears and fires on_clear.
    A 404 before that does not clear it; the same stale item served again is not a new notice; a new one is."""
    meta, url = meta_server
    got, on_notice, on_clear = _recorder()
    clock = Clock()
    w = PreemptionWatcher([AwsImdsSource(url)], on_notice=on_notice, on_clear=on_clear, clear_grace_s=60,
                          clock=clock)
    t = float(int(clock.now) + 120)
    meta.action = {"action": "terminate", "time": _iso(t)}
    n = w.poll_once()
    assert n is not None and n.deadline == t
    meta.action = None  # 404 again
    clock.now = t + 30  # past the deadline but within the grace
    assert w.poll_once() == n
    clock.now = t + 61
    assert w.poll_once() is None and w.notice() is None
    assert [(e, x.key) for e, x in got] == [("notice", n.key), ("clear", n.key)]
    meta.action = {"action": "terminate", "time": _iso(t)}  # IMDS serving the old item again
    assert w.poll_once() is None and len(got) == 2
    meta.action = {"action": "terminate", "time": _iso(t + 300)}  # a new interruption
    assert w.poll_once().deadline == t + 300 and got[-1][0] == "notice"


def test_interruption_still_served_long_past_its_deadline_clears():
    """The same item still answered by IMDS long after its time, with this node alive: not carried out."""
    meta = FakeMeta()
    srv = _serve(meta)
    try:
        clock = Clock()
        got, on_notice, on_clear = _recorder()
        w = PreemptionWatcher([AwsImdsSource(f"http://127.0.0.1:{srv.server_address[1]}")], on_notice=on_notice,
                              on_clear=on_clear, clear_grace_s=60, clock=clock)
        meta.action = {"action": "terminate", "time": _iso(clock.now + 120)}
        assert w.poll_once() is not None
        clock.now += 120 + 61
        assert w.poll_once() is None and [e for e, _ in got] == ["notice", "clear"]
        # a watcher started later on this surviving node never reports it (it lapsed before it was seen)
        got2, on_notice2, _ = _recorder()
        w2 = PreemptionWatcher([AwsImdsSource(f"http://127.0.0.1:{srv.server_address[1]}")], on_notice=on_notice2,
                               clear_grace_s=60, clock=clock)
        assert w2.poll_once() is None and got2 == []
    finally:
        srv.shutdown()
        srv.server_close()


def test_warning_clears_when_imds_drops_it_or_it_expires(meta_server):
    meta, url = meta_server
    got, on_notice, on_clear = _recorder()
    clock = Clock()
    w = PreemptionWatcher([AwsImdsSource(url, warning_expiry_s=600)], on_notice=on_notice, on_clear=on_clear,
                          clock=clock)
    meta.rebalance = {"noticeTime": _iso(clock.now)}
    w.poll_once()
    first = w.warning()
    assert first is not None
    meta.rebalance = None  # IMDS stopped serving it
    w.poll_once()
    assert w.warning() is None and got[-1] == ("clear", first)
    meta.rebalance = {"noticeTime": _iso(clock.now + 5)}  # a new recommendation
    w.poll_once()
    second = w.warning()
    assert second is not None and second.key != first.key
    clock.now += 5 + 601  # IMDS still serves it, but it is older than the expiry
    w.poll_once()
    assert w.warning() is None and got[-1] == ("clear", second)
    w.poll_once()
    assert w.warning() is None and len(got) == 4  # an expired warning is not reported again
    # a recommendation already older than the expiry when first seen is never a warning
    w2 = PreemptionWatcher([AwsImdsSource(url, warning_expiry_s=600)])
    meta.rebalance = {"noticeTime": _iso(time.time() - 3600)}
    w2.poll_once()
    assert w2.warning() is None


def test_gcp_preemption_clears_when_false_after_its_deadline(meta_server):
    meta, url = meta_server
    got, on_notice, on_clear = _recorder()
    clock = Clock()
    w = PreemptionWatcher([GcpMetadataSource(url, notice_s=30)], on_notice=on_notice, on_clear=on_clear,
                          clear_grace_s=60, clock=clock)
    meta.preempted = True
    n = w.poll_once()
    assert n is not None and n.source == "gcp-preempted"
    meta.preempted = False
    clock.now = n.deadline + 10
    assert w.poll_once() == n  # within the grace: still going away
    clock.now = n.deadline + 61
    assert w.poll_once() is None and got[-1] == ("clear", n)
    meta.preempted = True  # preempted again: a new notice
    clock.now = time.time()
    n2 = w.poll_once()
    assert n2 is not None and n2.key != n.key and got[-1] == ("notice", n2)


def test_watcher_survives_dead_endpoint():
    # Nothing listens on this port: the watcher logs, keeps going and reports no notice.
    w = PreemptionWatcher([GcpMetadataSource("http://127.0.0.1:9", timeout=0.2)], poll_s=0.05).start()
    time.sleep(0.3)
    assert w.notice() is None and w.warning() is None
    w.stop()


# ---------- SIGTERM ----------

def test_sigterm_handler_and_fresh_flag(tmp_path):
    flag = tmp_path / "run" / "sigterm"
    src = SigtermSource(grace_s=5.0, flag_path=flag)
    try:
        assert src.check() == []
        assert oct(flag.parent.stat().st_mode & 0o777) == "0o700"  # the watcher claims its directory
        os.kill(os.getpid(), signal.SIGTERM)
        assert _wait(lambda: src.check() != [], 2)
        [n] = src.check()
        assert n.source == "sigterm" and n.kind == "interruption" and n.deadline - time.time() <= 5.0
    finally:
        src.close()
    other = SigtermSource(flag_path=flag, install_handler=False)
    assert other.check() == []
    write_sigterm_flag(flag)
    [n] = other.check()
    assert n.source == "sigterm" and n.deadline == pytest.approx(flag.stat().st_mtime + 5.0)


def test_stale_or_foreign_sigterm_flags_are_ignored(tmp_path):
    """A flag from another boot, or older than this node's start, never drains a fresh node."""
    flag = tmp_path / "run" / "sigterm"
    write_sigterm_flag(flag)
    assert SigtermSource(flag_path=flag, install_handler=False).check() != []  # the control: honoured
    flag.write_text("0b5e7f1c-0000-4000-8000-000000000000 1700000000\n")  # another boot's
    assert SigtermSource(flag_path=flag, install_handler=False).check() == []
    flag.write_text("")  # an empty `touch`, as the old entrypoint wrote
    assert SigtermSource(flag_path=flag, install_handler=False).check() == []
    write_sigterm_flag(flag)
    old = node_start_time() - 60
    os.utime(flag, (old, old))  # this boot's, but from before this node (process) started
    assert SigtermSource(flag_path=flag, install_handler=False).check() == []


def test_sigterm_flag_in_a_writable_or_foreign_place_is_refused(tmp_path):
    for mode in (0o777, 0o770):
        d = tmp_path / f"d{mode:o}"
        d.mkdir()
        os.chmod(d, mode)
        write_sigterm_flag(d / "sigterm")  # a well-formed, fresh flag: only its directory is wrong
        src = SigtermSource(flag_path=d / "sigterm", install_handler=False)
        with pytest.raises(ConfigError, match="group|world|writable by it alone"):
            src.check()
        w = PreemptionWatcher([src])
        assert w.poll_once() is None  # the watcher logs it and reports nothing
    good = write_sigterm_flag(tmp_path / "elsewhere" / "sigterm")
    d = tmp_path / "link"
    d.mkdir(mode=0o700)
    (d / "sigterm").symlink_to(good)  # a planted symlink is refused, not followed
    with pytest.raises(ConfigError, match="symlink"):
        SigtermSource(flag_path=d / "sigterm", install_handler=False).check()


def test_sigterm_trap_command_writes_a_flag_the_watcher_honours(tmp_path):
    """The entrypoint snippet in a real bash, inside single quotes as a pod's `bash -c '…'` runs it."""
    home = tmp_path / "home"
    home.mkdir()
    cmd = sigterm_trap_command("~/.local/state/s2v-batch/sigterm")
    assert "'" not in cmd and "$HOME/.local/state/s2v-batch" in cmd
    script = f"{cmd}; echo ready; sleep 30 & wait $!"
    proc = subprocess.Popen(["sh", "-c", f"exec bash -c '{script}'"], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "HOME": str(home)}, start_new_session=True)
    flag = home / ".local/state/s2v-batch/sigterm"
    try:
        assert proc.stdout.readline().strip() == "ready"  # the trap is set
        proc.send_signal(signal.SIGTERM)
        assert _wait(flag.exists, 20)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # bash and its sleep
        proc.wait()
    assert oct(flag.parent.stat().st_mode & 0o777) == "0o700"
    assert flag.read_text().split()[0] == boot_id()
    assert [p.name for p in flag.parent.iterdir()] == ["sigterm"]  # written via a temporary file, renamed
    [n] = SigtermSource(flag_path=flag, install_handler=False).check()
    assert n.source == "sigterm"
    for bad in ("/tmp/a b/sigterm", "relative/sigterm", "/x/$(reboot)/sigterm", "/x/'q/sigterm"):
        with pytest.raises(ValueError):
            sigterm_trap_command(bad)


def test_sigterm_reaches_the_previous_handler_on_the_main_thread_after_the_window():
    """Ray's worker handler exits with sys.exit: it must run on the main thread, after the notice window."""
    seen = []
    old = signal.signal(signal.SIGTERM, lambda s, f: seen.append(threading.current_thread() is threading.main_thread()))
    src = SigtermSource(grace_s=1.3)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert _wait(lambda: src.check() != [], 2) and seen == []  # first the notice, nothing else
        assert _wait(lambda: seen == [True], 3)  # then the old handler, on the main thread
    finally:
        src.close()
        signal.signal(signal.SIGTERM, old)


def test_node_start_time_is_the_raylets_when_ray_names_it(monkeypatch):
    import psutil

    monkeypatch.delenv("RAY_RAYLET_PID", raising=False)
    assert node_start_time() == psutil.Process().create_time()
    monkeypatch.setenv("RAY_RAYLET_PID", str(os.getppid()))  # Ray gives its workers their raylet's pid
    assert node_start_time() == psutil.Process(os.getppid()).create_time()


# ---------- settings and a real drain ----------

def test_watcher_from_settings(meta_server, monkeypatch, no_ray, tmp_path):
    meta, url = meta_server
    monkeypatch.delenv("RUNPOD_POD_ID", raising=False)
    assert watcher_from_settings(Settings(preemption_sources="none")) is None
    assert watcher_from_settings(Settings(preemption_sources="")) is None
    # auto on a machine with no metadata service: nothing, quickly.
    t = time.time()
    dead = "http://127.0.0.1:9"
    assert watcher_from_settings(Settings(preemption_sources="auto", aws_imds_url=dead, gcp_metadata_url=dead)) is None
    assert time.time() - t < 2
    w = watcher_from_settings(Settings(preemption_sources="auto", aws_imds_url=url, gcp_metadata_url=dead,
                                       preemption_warning_expiry_s=77, preemption_clear_grace_s=11))
    assert [s.name for s in w.sources] == ["aws"]
    assert w.sources[0].warning_expiry_s == 77 and w.clear_grace_s == 11 and not w.drain
    w = watcher_from_settings(Settings(preemption_sources="auto", aws_imds_url=dead, gcp_metadata_url=url))
    assert [s.name for s in w.sources] == ["gcp"]
    w = watcher_from_settings(Settings(preemption_sources="aws,gcp", aws_imds_url=url, gcp_metadata_url=url),
                              drain=True)
    assert [s.name for s in w.sources] == ["aws", "gcp"] and w.drain
    with pytest.raises(ValueError):
        watcher_from_settings(Settings(preemption_sources="azure"))
    s = Settings(preemption_sources="sigterm", sigterm_flag_dir=str(tmp_path / "x-{node_id}"))
    w = watcher_from_settings(s)
    assert w.sources[0].flag_path == tmp_path / "x-local" / "sigterm"
    assert oct((tmp_path / "x-local").stat().st_mode & 0o777) == "0o700"
    w.stop()
    assert sigterm_flag_path(s, node_id="n1") == tmp_path / "x-n1" / "sigterm"
    # '~' stays for the node to expand: a laptop's home is not a pod's
    assert str(sigterm_flag_path(Settings())) == "~/.local/state/s2v-batch/sigterm"


def test_drain_only_for_interruptions_on_a_real_cluster(meta_server, monkeypatch, no_ray):
    """A two-node local Ray; an actor on the worker node watches the loopback IMDS with drain=True: a rebalance
    recommendation leaves the node schedulable, an instance-action drains it (reason PREEMPTION); when that
    interruption clears with the node alive, the drain stays (Ray cannot undo one) but the actor already there
    still answers calls; when that actor goes, the idle drained node leaves the cluster."""
    meta, url = meta_server
    import ray
    from ray._private.state import state as ray_state
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1",
                                                            "include_dashboard": False})
    try:
        worker = cluster.add_node(num_cpus=0, num_gpus=1, node_ip_address="127.0.0.1")
        ray.init(address=cluster.address, log_to_driver=False)

        @ray.remote(num_cpus=0, num_gpus=1)
        class Watched:
            def __init__(self, settings):
                self.events = []
                self.w = watcher_from_settings(settings, on_notice=lambda n: self.events.append(("notice", n.kind)),
                                               on_clear=lambda n: self.events.append(("clear", n.kind)),
                                               drain=True).start()

            def state(self):
                n, w = self.w.notice(), self.w.warning()
                return (n and n.source, w and w.source, list(self.events),
                        ray.get_runtime_context().get_node_id())

        s = Settings(preemption_sources="aws", aws_imds_url=url, preemption_poll_s=0.05,
                     preemption_clear_grace_s=1.0)
        a = Watched.remote(s)

        def state():
            return ray.get(a.state.remote(), timeout=60)

        def wait_for(pred):
            end = time.time() + 60
            while time.time() < end:
                st = state()
                if pred(st):
                    return st
                time.sleep(0.1)
            raise AssertionError(f"never reached; last state {st}")

        assert state()[3] == worker.node_id
        meta.rebalance = {"noticeTime": _iso(time.time())}
        st = wait_for(lambda st: st[1] == "aws-rebalance")
        assert st[0] is None and st[2] == [("notice", "warning")]
        assert worker.node_id not in ray_state.get_draining_nodes()  # a warning never drains
        meta.action = {"action": "terminate", "time": _iso(time.time() + 2)}
        wait_for(lambda st: st[0] == "aws-spot")
        assert worker.node_id in ray_state.get_draining_nodes()  # drained before on_notice returned
        meta.action = None  # IMDS 404 again; the node lives on past the deadline + grace
        st = wait_for(lambda st: ("clear", "interruption") in st[2])
        assert st[0] is None and st[1] == "aws-rebalance"
        assert worker.node_id in ray_state.get_draining_nodes()  # the drain outlives the notice…
        assert state()[3] == worker.node_id  # …and the actor already there still answers calls
        meta.rebalance = None
        assert wait_for(lambda st: st[1] is None)[2][-1] == ("clear", "warning")
        assert drain_this_node(30.0, "again") in (True, False)  # driver on head: must not raise
        # what a cleared interruption leaves: once its last actor goes, the drained node's raylet exits
        ray.kill(a)
        end = time.time() + 60
        while time.time() < end and any(n["NodeID"] == worker.node_id and n["Alive"] for n in ray.nodes()):
            time.sleep(0.2)
        assert not any(n["NodeID"] == worker.node_id and n["Alive"] for n in ray.nodes())
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_auto_on_a_machine_that_names_no_cloud_probes_nothing(monkeypatch):
    """`auto` with the real metadata addresses: where DMI does not name AWS or GCP (this sandbox has no DMI at
    all, like many containers) no request may leave for 169.254.169.254 or metadata.google.internal."""
    import socket
    import urllib.request

    import infra.preemption.watcher as w

    tried: list = []
    monkeypatch.setattr(w, "_dmi_names", lambda vendor: False)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: tried.append(a) or (_ for _ in ()).throw(OSError))
    monkeypatch.setattr(urllib.request.OpenerDirector, "open", lambda *a, **k: tried.append(a) or (_ for _ in ()).throw(OSError))
    assert watcher_from_settings(Settings(preemption_sources="auto")) is None
    assert tried == []


def test_a_cluster_names_its_notice_source_by_provider():
    from infra.clusters.launch import run_settings_env

    def env(provider: dict, **meta) -> str:
        cfg = {"provider": provider, "metadata": {"s2v": {"work": "s3://b/w", **meta}}}
        return run_settings_env(cfg)["S2V_PREEMPTION_SOURCES"]

    assert env({"type": "aws"}) == "aws" and env({"type": "gcp"}) == "gcp"
    assert env({"type": "external", "module": "infra.clusters.runpod.provider.RunPodNodeProvider"}) == "sigterm"
    assert env({"type": "external", "module": "loopback_cluster.LocalNodeProvider"}) == "none"
    assert env({"type": "aws"}, preemption_sources="none") == "none"
