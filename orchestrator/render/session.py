"""Start or join Ray: the embedded default is a local instance bound to 127.0.0.1 with N logical GPUs."""

from __future__ import annotations

import contextlib
import logging
import os

from core.errors import ClusterError
from core.settings import Settings

log = logging.getLogger("s2v.session")

# Local Ray must never bind the machine's external address, phone home, or ask for a token.
LOCAL_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
             # the scheduler handles every failed clip itself; Ray's "unhandled error" echo is noise
             "RAY_IGNORE_UNHANDLED_ERRORS": "1"}


def local_env() -> None:
    for k, v in LOCAL_ENV.items():
        os.environ.setdefault(k, v)


# Ray gives a starting node 30 s (hard-coded) to register with its GCS and then raises a bare Exception with this
# text; on a loaded 2-core machine a local start can take longer. One more try, in a fresh session, is worth it.
STARTUP_TIMEOUT = "timed out during startup"


def _init(ray, settings: Settings) -> None:
    for attempt in (1, 2):
        try:
            if settings.address:
                ray.init(address=settings.address, log_to_driver=False)
            else:
                # address="local": never silently join another cluster found on this machine
                ray.init(address="local", num_gpus=settings.gpus or 1, num_cpus=max(2, os.cpu_count() or 2),
                         include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
                         configure_logging=False)
            return
        except Exception as e:  # noqa: BLE001 — Ray's start-up failures come as bare Exceptions too
            if attempt == 1 and not settings.address and STARTUP_TIMEOUT in str(e):
                log.warning("Ray's local start timed out (its node has 30 s to register: a busy machine); "
                            "starting it once more")
                ray.shutdown()
                continue
            where = settings.address or "local"
            raise ClusterError(f"cannot start or join Ray ({where}): {e}"
                               + ("; its logs are under /tmp/ray/session_latest/logs" if where == "local" else "")
                               ) from None


@contextlib.contextmanager
def ray_session(settings: Settings):
    """Yield with Ray initialised; shut down only what this call started."""
    if not settings.address:
        local_env()  # before ray is imported: Ray reads these once, at import
    import ray

    if ray.is_initialized():
        yield
        return
    _init(ray, settings)
    try:
        yield
    finally:
        ray.shutdown()
