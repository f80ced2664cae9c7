"""Test helpers for elastic runs: the standing autoscaler request as Ray's autoscaler reads it, and polling."""

from __future__ import annotations

import json
import time


def requested() -> list[dict]:
    """The run's standing request, read where the autoscaler reads it (GCS KV in v1, cluster constraints in v2)."""
    import ray
    from ray.autoscaler.v2.utils import is_autoscaler_v2

    if is_autoscaler_v2():
        from ray.autoscaler.v2.sdk import get_cluster_status

        st = get_cluster_status(ray.get_runtime_context().gcs_address)
        return [dict(b.bundle) for d in st.resource_demands.cluster_constraint_demand for b in d.bundles_by_count
                for _ in range(b.count)]
    from ray.autoscaler._private.constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL)
    return json.loads(raw) if raw else []


def wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
