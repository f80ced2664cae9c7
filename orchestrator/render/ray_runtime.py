"""The production runtime: render actors, calls and CPU tasks on Ray; the cluster's shape from its GCS; the
autoscaler's standing request through its SDK."""

from __future__ import annotations

import logging
import time
from typing import Callable

from orchestrator.render.costs import PRICE_KEY, MARKET, NodeUse
from orchestrator.render.runtime import ActorLost, CallFailed, NotReady, Runtime

log = logging.getLogger("s2v.runtime")


class RayRuntime(Runtime):
    def __init__(self):
        self._gcs_ok = True
        self._seen: dict[str, NodeUse] = {}
        self._cpu_work: bool | None = None

    # ---------- time ----------
    def now(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def pause(self, seconds: float) -> None:
        time.sleep(seconds)

    # ---------- actors and calls ----------
    def start_actor(self, settings, backends: tuple[str, ...], resources: dict | None = None):
        """num_cpus=0: actors never starve stitching of the CPUs. max_restarts=-1 and no node pinning: Ray restarts
        one whose process or node died wherever a GPU is (or will be) free."""
        import ray

        from orchestrator.render.worker import RenderWorker

        cls = ray.remote(RenderWorker).options(num_gpus=settings.gpus_per_actor, num_cpus=0, max_restarts=-1,
                                               max_task_retries=0, max_concurrency=1, resources=resources or {})
        return cls.remote(settings, backends)

    def call(self, actor, method: str, *args, **kwargs):
        return getattr(actor, method).remote(*args, **kwargs)

    def task(self, fn: Callable, *, cpus: float, retries: int | None = None, retry_on: tuple = ()) -> Callable:
        import ray

        opts: dict = {"num_cpus": cpus, "num_gpus": 0, **self._placement()}
        if retries is not None:  # else Ray's own default (retried when the worker process dies, never on errors)
            opts.update(max_retries=retries, retry_exceptions=list(retry_on) if retry_on else False)
        return ray.remote(fn).options(**opts).remote

    def _placement(self) -> dict:
        """On a cluster whose CPU node types carry CPU_WORK_RESOURCE, a CPU task asks for a sliver of it, so it
        runs there and never on a GPU node; a local run or a cluster without it places by CPU alone. Asked once:
        node types are fixed for a cluster's life."""
        from infra.clusters.config import CPU_WORK_RESOURCE, CPU_WORK_SLOTS

        if self._cpu_work is None:
            self._cpu_work = self.has_resource(CPU_WORK_RESOURCE)
        # one slot in CPU_WORK_SLOTS: CPUs, not the marker, bound how many run at once
        return {"resources": {CPU_WORK_RESOURCE: 1.0 / CPU_WORK_SLOTS}} if self._cpu_work else {}

    def wait(self, refs: list, timeout: float, every: bool = False) -> list:
        import ray

        if not refs:
            return []
        ready, _ = ray.wait(list(refs), num_returns=len(refs) if every else 1, timeout=timeout)
        return ready

    def get(self, ref, timeout: float):
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        try:
            return ray.get(ref, timeout=timeout)
        except RayActorError as e:
            raise ActorLost(e, preempted=bool(getattr(e, "preempted", False)),
                            init_failed=bool(getattr(e, "actor_init_failed", False))) from e
        except RayTaskError as e:
            raise CallFailed(e.cause if getattr(e, "cause", None) is not None else e) from e
        except GetTimeoutError as e:
            raise NotReady(str(e)) from e

    def cancel(self, ref) -> None:
        import ray

        try:
            ray.cancel(ref)
        except Exception:  # noqa: BLE001 - cancelling a finished or lost ref is harmless
            pass

    def kill(self, actor, restart: bool) -> None:
        import ray

        try:
            ray.kill(actor, no_restart=not restart)
        except Exception:  # noqa: BLE001 - already gone
            pass

    def share(self, obj):
        """[ObjectRef]: nested in a list so Ray passes the ref and the actor caches the object (a 20-minute job's
        plan pickled into every clip call cost ~2 ms per call on each side)."""
        import ray

        return [ray.put(obj)]

    # ---------- the cluster ----------
    def cluster_gpus(self) -> float:
        import ray

        return float(ray.cluster_resources().get("GPU", 0))

    def has_resource(self, name: str) -> bool:
        import ray

        return name in ray.cluster_resources()

    def alive_nodes(self) -> set[str]:
        import ray

        return {n["NodeID"] for n in ray.nodes() if n.get("Alive")}

    def request_gpus(self, bundles: list[dict]) -> None:
        from ray.autoscaler.sdk import request_resources

        try:
            request_resources(bundles=bundles)
        except Exception as e:  # noqa: BLE001 - a cluster without an autoscaler still renders on what it has
            log.warning("could not ask the autoscaler for %d GPU bundle(s): %s", len(bundles), e)

    def node_table(self) -> list[NodeUse]:
        if self._gcs_ok:
            try:
                return _gcs_nodes()
            except Exception as e:  # noqa: BLE001 - private GCS client changed or unreachable: the public view
                log.info("node table through the GCS client failed (%s); timing nodes as observed", e)
                self._gcs_ok = False
        return self._observed()

    def _observed(self) -> list[NodeUse]:
        """The same from ray.nodes() (public API, no times): a node starts and ends when this runtime saw it so."""
        import ray

        now = time.time()
        for n in ray.nodes():
            nid = n["NodeID"]
            labels = n.get("Labels") or {}
            use = self._seen.get(nid)
            if use is None:
                use = self._seen[nid] = NodeUse(nid, now, None, float(n.get("Resources", {}).get("GPU", 0.0)),
                                                labels.get(PRICE_KEY), labels.get(MARKET),
                                                "node:__internal_head__" in n.get("Resources", {}))
            if not n.get("Alive", True) and use.end is None:
                use.end = now
        return list(self._seen.values())


def _gcs_nodes() -> list[NodeUse]:
    """Every node the GCS knows (dead ones keep their start and end times), without the dashboard."""
    import ray

    gcs = ray._raylet.GcsClient(address=ray.get_runtime_context().gcs_address)
    out = []
    for nid, info in gcs.get_all_node_info(timeout=10).items():
        labels = dict(info.labels)
        out.append(NodeUse(node_id=nid.hex(), start=info.start_time_ms / 1000.0,
                           end=info.end_time_ms / 1000.0 if info.end_time_ms else None,
                           gpus=float(info.resources_total.get("GPU", 0.0)), key=labels.get(PRICE_KEY),
                           market=labels.get(MARKET), head=bool(info.is_head_node)))
    return out
