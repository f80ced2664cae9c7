"""The calls the scheduler, the pool and the run make of their runtime, behind one small interface: Ray in
production (ray_runtime.py), or an in-process runtime with a virtual clock where policy is tested (inprocess.py),
the way dramatiq tests its workers on a StubBroker.

A runtime starts render actors, sends them calls, says which calls are done, and tells what the cluster holds.
Errors come back as three kinds, whatever the runtime: the actor (or its node) died, the call raised, or the
result is not there yet."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable


class ActorLost(Exception):
    """The actor's process or node died under the call (infrastructure: never the job's fault).

    preempted: the node was drained for a spot notice and went by itself; init_failed: the actor could not even
    be constructed (it will never answer)."""

    def __init__(self, error: BaseException | str, *, preempted: bool = False, init_failed: bool = False):
        super().__init__(str(error))
        self.error = error
        self.preempted, self.init_failed = preempted, init_failed


class CallFailed(Exception):
    """The call ran and raised; `cause` is what it raised (a RenderError, Preempted, CudaUnavailable…)."""

    def __init__(self, cause: BaseException):
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause


class NotReady(Exception):
    """The result did not arrive within the timeout."""


class Runtime(ABC):
    """Actors, calls, tasks and the cluster's shape. Refs are opaque and hashable; one ref is one call."""

    # ---------- time ----------
    @abstractmethod
    def now(self) -> float:
        """Monotonic seconds: what every timeout, watchdog and backoff of the render step measures."""

    @abstractmethod
    def time(self) -> float:
        """Wall-clock seconds since the epoch: what node-hours and their cost are measured in."""

    @abstractmethod
    def pause(self, seconds: float) -> None:
        """Wait (nothing is in flight worth waiting on)."""

    # ---------- actors and calls ----------
    @abstractmethod
    def start_actor(self, settings, backends: tuple[str, ...], resources: dict | None = None) -> Any:
        """A render actor holding settings.gpus_per_actor GPUs (plus `resources`), never pinned to a node, restarted
        wherever a GPU is free when its process or node dies."""

    @abstractmethod
    def call(self, actor, method: str, *args, **kwargs) -> Any:
        """Queue `actor.method(*args, **kwargs)`; calls to one actor run one at a time, in order."""

    @abstractmethod
    def task(self, fn: Callable, *, cpus: float, retries: int | None = None,
             retry_on: tuple = ()) -> Callable[..., Any]:
        """A function run as a CPU task: the returned callable submits one run and returns its ref. Refs given as
        arguments are waited for first and passed as their values. `retries` (None: the runtime's default) reruns
        it when its process dies, and when it raises one of `retry_on`."""

    @abstractmethod
    def wait(self, refs: list, timeout: float, every: bool = False) -> list:
        """The refs among `refs` that are done within `timeout`: the first one (or, `every`, all that finish)."""

    @abstractmethod
    def get(self, ref, timeout: float) -> Any:
        """The call's result; raises ActorLost, CallFailed or NotReady."""

    @abstractmethod
    def cancel(self, ref) -> None:
        """Drop a call not started yet (one running goes on; its result is ignored)."""

    @abstractmethod
    def kill(self, actor, restart: bool) -> None:
        """End the actor's process; with `restart`, the runtime starts it again (its calls in flight are lost)."""

    @abstractmethod
    def share(self, obj) -> Any:
        """obj stored once for every actor that reads it (a job's plan): a handle to pass in calls."""

    # ---------- the cluster ----------
    @abstractmethod
    def cluster_gpus(self) -> float:
        """GPUs the cluster holds now."""

    @abstractmethod
    def has_resource(self, name: str) -> bool:
        """A custom resource (the on-demand node type's marker) is somewhere in the cluster now."""

    @abstractmethod
    def alive_nodes(self) -> set[str]:
        """Ids of the nodes alive now."""

    @abstractmethod
    def request_gpus(self, bundles: list[dict]) -> None:
        """The autoscaler's standing request: it replaces the previous one; [] gives everything back."""

    @abstractmethod
    def node_table(self) -> list:
        """Every node seen during the run (orchestrator.render.costs.NodeUse), dead ones with their end time."""

