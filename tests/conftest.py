"""Shared fixtures: a real local Ray on 127.0.0.1 with logical GPUs, test media, and settings per test."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Before anything imports ray: Ray reads these once, at import.
os.environ.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
                   "RAY_AUTH_MODE": "disabled", "RAY_IGNORE_UNHANDLED_ERRORS": "1"})
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402

import media  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
_RAY_GPUS = 2


def start_local_ray(gpus: int = _RAY_GPUS) -> None:
    import ray

    if ray.is_initialized():
        return
    ray.init(address="local", num_gpus=gpus, num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False, configure_logging=False)


@pytest.fixture(autouse=True)
def fresh_caches():
    """Caches that live in the process (planner answers, resolved paths, the input cache's memo) start empty in
    every test: a test never passes on what an earlier one left there."""
    from infra.storage import cache, uri
    from orchestrator.plan import planner

    planner.clear_caches()
    uri.clear_cache()
    cache.forget()
    yield


@pytest.fixture
def ray_local():
    """A local Ray with 2 logical GPUs, shared by the tests that use it (restarted if a test shut it down)."""
    start_local_ray()
    yield
    # left running for the next test; a cluster test shuts it down itself


@pytest.fixture
def no_ray():
    """For tests that start their own cluster or need Ray absent: stop the shared local Ray first."""
    import ray

    ray.shutdown()
    yield


def pytest_collection_modifyitems(session, config, items):
    """Modules that stop the shared local Ray (STOPS_SHARED_RAY = True: their tests start clusters or drivers of
    their own) run last, each module whole and in order: every other test shares one Ray start."""
    items.sort(key=lambda item: bool(getattr(item.module, "STOPS_SHARED_RAY", False)))


def pytest_sessionfinish(session, exitstatus):
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except ImportError:
        pass


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> dict[str, Path]:
    """Speech-like audio of several shapes and a presenter photo, made once per session."""
    d = tmp_path_factory.mktemp("assets")
    out = {"image": media.presenter(d / "presenter.png")}
    pcm, pauses = media.speech([(3.0, 0.6), (4.0, 0.5), (2.5, 0.7), (3.0, 0)], seed=3)
    out["speech13"] = media.write_wav(d / "speech13.wav", pcm)
    out["speech13_pauses"] = pauses
    pcm, _ = media.speech([(2.0, 0.5), (1.5, 0)], seed=4)
    out["speech4"] = media.write_wav(d / "speech4.wav", pcm)
    return out


@pytest.fixture
def settings(tmp_path):
    from core.settings import Settings

    return Settings(gpus=_RAY_GPUS, work=str(tmp_path / "work"), cache_dir=tmp_path / "cache")


@pytest.fixture
def run_cli():
    """Run `s2v …` in-process; returns (exit code, captured output)."""
    from orchestrator.cli.main import main

    def run(*args):
        try:
            main(list(map(str, args)))
        except SystemExit as e:
            return int(e.code or 0)
        return 0

    return run
