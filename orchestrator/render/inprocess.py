"""An in-process runtime on a virtual clock: the scheduler's and the pool's policy (blocklists, retries elsewhere,
preemption moves, budget stops, surplus retirement, on-demand fallback) runs here without Ray, in milliseconds and
the same way every time — as dramatiq tests workers on its StubBroker.

Actors are plain objects made by a factory (ScriptedWorker in scripted_worker.py, or the test's); their calls run one
at a time, in order, and take the virtual seconds the worker says. Nodes join and leave, drain and get spot notices
on a timeline the test sets (`at`), or when an autoscaler function the test gives answers the standing request.
CPU tasks run at once, in the caller's thread."""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from orchestrator.render.costs import NodeUse
from orchestrator.render.runtime import ActorLost, CallFailed, NotReady, Runtime

EPOCH = 1_800_000_000.0  # what the virtual clock's 0 is in wall-clock seconds (node-hours are measured in these)


class Crash(Exception):
    """Raised by a worker's method: its process dies there (the call and every one queued behind it are lost)."""


@dataclass
class Node:
    id: str
    gpus: float
    resources: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)
    head: bool = False
    start: float = 0.0
    end: float | None = None
    interruption: str | None = None  # an active interruption notice (drains the node: nothing new is placed)
    warning: str | None = None  # an active early warning

    @property
    def alive(self) -> bool:
        return self.end is None


class Ref:
    """One call or task; done once `error` or `value` is set at its completion time."""

    __slots__ = ("method", "args", "kwargs", "done", "value", "error", "finished", "seq")

    def __init__(self, method: str, args: tuple, kwargs: dict, seq: int):
        self.method, self.args, self.kwargs, self.seq = method, args, kwargs, seq
        self.done, self.value, self.error, self.finished = False, None, None, 0.0


@dataclass(eq=False)
class _Actor:
    id: int
    settings: Any
    backends: tuple
    resources: dict
    obj: Any = None
    node: Node | None = None
    state: str = "pending"  # pending (no GPU yet) | loading | alive | dead (for good)
    incarnation: int = 0  # bumped at every death: events of an older incarnation are stale
    queue: deque = field(default_factory=deque)
    running: Ref | None = None
    init_error: BaseException | None = None


class InProcessRuntime(Runtime):
    """worker(runtime, actor id, node id, settings, backends) → the actor object (ScriptedWorker, or a class of
    the test's). gpus: one node with that many GPUs to start with (None: no node). load_s: virtual seconds an actor
    takes to start (and to restart); autoscaler(runtime, bundles) is called with every new standing request."""

    def __init__(self, worker: Callable, *, gpus: float | None = 2, load_s: float = 0.0, restart_s: float = 1.0,
                 autoscaler: Callable | None = None):
        self.worker, self.load_s, self.restart_s, self.autoscaler = worker, load_s, restart_s, autoscaler
        self.t = 0.0
        self._seq = itertools.count()
        self._timeline: list[tuple[float, int, Callable]] = []
        self.nodes: dict[str, Node] = {}
        self.actors: list[_Actor] = []
        self.requests: list[list[dict]] = []  # every standing request, in order
        self.calls: list[tuple[float, int, str]] = []  # (t, actor, method): every call started
        if gpus is not None:
            self.add_node(gpus=gpus)

    # ---------- the test's side: nodes and a timeline ----------
    def add_node(self, gpus: float = 1, resources: dict | None = None, labels: dict | None = None,
                 head: bool = False) -> str:
        nid = f"node-{len(self.nodes)}"
        self.nodes[nid] = Node(nid, float(gpus), dict(resources or {}), dict(labels or {}), head, start=self.t)
        self._place_pending()
        return nid

    def remove_node(self, nid: str, preempted: bool = False) -> None:
        """The node goes (spot reclaimed, or killed): its actors die and restart where a GPU is free."""
        node = self.nodes[nid]
        node.end = self.t
        for a in [a for a in self.actors if a.node is node and a.state != "dead"]:
            self._die(a, ActorLost(f"the node {nid} died", preempted=preempted), restart=True)

    def notice(self, nid: str, interruption: str | None = None, warning: str | None = None) -> None:
        """Set (or clear, with None) the node's spot notices."""
        node = self.nodes[nid]
        node.interruption, node.warning = interruption, warning

    def at(self, t: float, fn: Callable, *args, **kwargs) -> None:
        """Run fn(*args, **kwargs) when the virtual clock reaches t."""
        heapq.heappush(self._timeline, (t, next(self._seq), lambda: fn(*args, **kwargs)))

    # ---------- time ----------
    def now(self) -> float:
        return self.t

    def time(self) -> float:
        return EPOCH + self.t

    def pause(self, seconds: float) -> None:
        self._advance(self.t + seconds)

    def _advance(self, until: float, stop: Callable[[], bool] = lambda: False) -> None:
        """Run every timeline event up to `until`, in time order; stop early once `stop()` holds."""
        while self._timeline and self._timeline[0][0] <= until and not stop():
            t, _, fn = heapq.heappop(self._timeline)
            self.t = max(self.t, t)
            fn()
        if not stop():
            self.t = max(self.t, until)

    # ---------- actors and calls ----------
    def start_actor(self, settings, backends: tuple[str, ...], resources: dict | None = None):
        a = _Actor(len(self.actors), settings, tuple(backends), dict(resources or {}))
        self.actors.append(a)
        self._place(a)
        return a

    def _fits(self, a: _Actor, node: Node) -> bool:
        if not node.alive or node.interruption:
            return False
        g = a.settings.gpus_per_actor
        used = sum(b.settings.gpus_per_actor for b in self.actors if b.node is node and b.state in ("loading", "alive"))
        return node.gpus - used >= g and all(node.resources.get(k, 0) >= v for k, v in a.resources.items())

    def _place(self, a: _Actor) -> None:
        node = next((n for n in self.nodes.values() if self._fits(a, n)), None)
        if node is None:
            a.state, a.node = "pending", None
            return
        a.node, a.state = node, "loading"
        inc = a.incarnation
        self.at(self.t + self.load_s, self._loaded, a, inc)

    def _place_pending(self) -> None:
        for a in self.actors:
            if a.state == "pending":
                self._place(a)

    def _loaded(self, a: _Actor, inc: int) -> None:
        if a.incarnation != inc or a.state != "loading":
            return
        try:
            a.obj = self.worker(self, a.id, a.node.id, a.settings, a.backends)
        except Exception as e:  # noqa: BLE001 - the actor cannot be built: it never answers
            a.init_error = e
            self._die(a, ActorLost(e, init_failed=True), restart=False)
            return
        a.state = "alive"
        self._next_call(a)

    def call(self, actor: _Actor, method: str, *args, **kwargs) -> Ref:
        ref = Ref(method, args, kwargs, next(self._seq))
        if actor.state == "dead":
            self._finish(ref, error=ActorLost(actor.init_error or "the actor is dead",
                                              init_failed=actor.init_error is not None))
            return ref
        actor.queue.append(ref)
        if actor.state == "alive" and actor.running is None:
            self._next_call(actor)
        return ref

    def _next_call(self, a: _Actor) -> None:
        while a.state == "alive" and a.running is None and a.queue:
            ref = a.queue.popleft()
            if ref.done:  # cancelled
                continue
            a.running = ref
            self.calls.append((self.t, a.id, ref.method))
            cost = float(getattr(a.obj, "cost", lambda *x, **k: 0.0)(ref.method, *ref.args, **ref.kwargs))
            self.at(self.t + cost, self._complete, a, a.incarnation, ref)

    def _complete(self, a: _Actor, inc: int, ref: Ref) -> None:
        if a.incarnation != inc or a.running is not ref:
            return
        a.running = None
        try:
            value = getattr(a.obj, ref.method)(*ref.args, **ref.kwargs)
        except Crash as e:
            self._die(a, ActorLost(f"the actor's process died: {e}"), restart=True)
            return
        except Exception as e:  # noqa: BLE001 - the call raised: the caller gets it
            self._finish(ref, error=CallFailed(e))
        else:
            self._finish(ref, value=value)
        self._next_call(a)

    def _finish(self, ref: Ref, value=None, error: BaseException | None = None) -> None:
        ref.done, ref.value, ref.error, ref.finished = True, value, error, self.t

    def _die(self, a: _Actor, error: ActorLost, restart: bool) -> None:
        """Every call running or queued fails; the actor starts again after restart_s (or never)."""
        for ref in ([a.running] if a.running else []) + list(a.queue):
            if not ref.done:
                self._finish(ref, error=error)
        a.running, a.queue, a.obj = None, deque(), None
        a.incarnation += 1
        if not restart:
            a.state, a.node = "dead", None
            self._place_pending()  # its GPU is free now
            return
        a.state, a.node = "pending", None
        self._place_pending()
        self.at(self.t + self.restart_s, self._restart, a, a.incarnation)

    def _restart(self, a: _Actor, inc: int) -> None:
        if a.incarnation == inc and a.state == "pending":
            self._place(a)

    def task(self, fn: Callable, *, cpus: float, retries: int | None = None, retry_on: tuple = ()) -> Callable:
        def submit(*args, **kwargs) -> Ref:
            ref = Ref(getattr(fn, "__name__", "task"), args, kwargs, next(self._seq))
            values = [a.value if isinstance(a, Ref) else a for a in args]
            for attempt in range((retries or 0) + 1):
                try:
                    self._finish(ref, value=fn(*values, **kwargs))
                    break
                except Exception as e:  # noqa: BLE001 - the task raised: the caller gets it
                    if attempt < (retries or 0) and isinstance(e, tuple(retry_on)):
                        continue
                    self._finish(ref, error=CallFailed(e))
                    break
            return ref

        return submit

    def wait(self, refs: list, timeout: float, every: bool = False) -> list:
        refs = list(refs)
        if every:
            self._advance(self.t + timeout, stop=lambda: all(r.done for r in refs))
            return [r for r in refs if r.done]
        self._advance(self.t + timeout, stop=lambda: any(r.done for r in refs))
        ready = sorted((r for r in refs if r.done), key=lambda r: (r.finished, r.seq))
        return ready[:1]

    def get(self, ref: Ref, timeout: float):
        if not ref.done:
            self._advance(self.t + timeout, stop=lambda: ref.done)
        if not ref.done:
            raise NotReady(f"{ref.method} did not finish within {timeout}s")
        if ref.error is not None:
            raise ref.error
        return ref.value

    def cancel(self, ref: Ref) -> None:
        if not ref.done and not any(a.running is ref for a in self.actors):
            self._finish(ref, error=CallFailed(RuntimeError("cancelled")))

    def kill(self, actor: _Actor, restart: bool) -> None:
        if actor.state != "dead":
            self._die(actor, ActorLost("the actor was killed"), restart=restart)

    def share(self, obj):
        return obj

    # ---------- the cluster ----------
    def cluster_gpus(self) -> float:
        return sum(n.gpus for n in self.nodes.values() if n.alive)

    def has_resource(self, name: str) -> bool:
        return any(name in n.resources for n in self.nodes.values() if n.alive)

    def alive_nodes(self) -> set[str]:
        return {n.id for n in self.nodes.values() if n.alive}

    def request_gpus(self, bundles: list[dict]) -> None:
        self.requests.append([dict(b) for b in bundles])
        if self.autoscaler is not None:
            self.autoscaler(self, bundles)

    def node_table(self) -> list[NodeUse]:
        return [NodeUse(n.id, EPOCH + n.start, None if n.end is None else EPOCH + n.end, n.gpus,
                        n.labels.get("s2v-price-key"), n.labels.get("s2v-market"), n.head)
                for n in self.nodes.values()]
