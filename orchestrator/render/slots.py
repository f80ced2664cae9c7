"""One render actor's place in a run: an explicit state machine whose allowed transitions live here only."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable


class SlotState(Enum):
    STARTING = "starting"  # created: waiting for a GPU to be placed on, then loading its model
    IDLE = "idle"  # answered its first ping; takes the next chain
    BUSY = "busy"  # renders a chain, clip by clip
    WARNED = "warned"  # early spot warning on its node: finishes its chain (if any), takes no new one
    DRAINING = "draining"  # interruption notice: refuses clips; a replacement was asked for
    LOST = "lost"  # its process or node died (or the watchdog killed it); Ray restarts it
    BLOCKED = "blocked"  # failed clips of too many different jobs: out of rotation
    BROKEN = "broken"  # could not start (e.g. no working CUDA on its GPU): out of rotation, with the reason
    RETIRED = "retired"  # killed by the run (surplus, replaced, node gone, run over)


S = SlotState
ALLOWED: dict[SlotState, frozenset[SlotState]] = {
    S.STARTING: frozenset({S.IDLE, S.LOST, S.BROKEN, S.RETIRED}),
    S.IDLE: frozenset({S.BUSY, S.WARNED, S.DRAINING, S.LOST, S.BLOCKED, S.RETIRED}),
    S.BUSY: frozenset({S.IDLE, S.WARNED, S.DRAINING, S.LOST, S.RETIRED}),
    S.WARNED: frozenset({S.IDLE, S.BUSY, S.DRAINING, S.LOST, S.BLOCKED, S.RETIRED}),
    S.DRAINING: frozenset({S.IDLE, S.RETIRED}),
    S.LOST: frozenset({S.IDLE, S.BROKEN, S.RETIRED}),
    S.BLOCKED: frozenset({S.RETIRED}),
    S.BROKEN: frozenset({S.RETIRED}),
    S.RETIRED: frozenset(),
}
# Answered and able to render (a warned actor still finishes its chain): what no_worker_timeout_s watches.
WORKING = frozenset({S.IDLE, S.BUSY, S.WARNED})
# Waiting for Ray to place (or restart) the actor: demand, never a worker, never watched by the watchdog.
WAITING = frozenset({S.STARTING, S.LOST})
# The pool's own count: hold (or wait for) a GPU, or were taken out of rotation (never replaced: a broken or bad
# GPU's replacement would most likely land on the same GPU). Draining slots are apart: they have a replacement.
COUNTED = frozenset({S.STARTING, S.IDLE, S.BUSY, S.WARNED, S.LOST, S.BLOCKED, S.BROKEN})


class IllegalTransition(RuntimeError):
    """A slot was moved along an edge the state machine does not have: a scheduler bug, never ignored."""


@dataclass(eq=False)
class Slot:
    """One actor, its state, and the chain it works on (at most one, clip calls in submission order)."""

    handle: object
    state: SlotState = SlotState.STARTING
    chain: object = None
    inflight: list = field(default_factory=list)  # clip call refs, in submission order
    probe: object = None  # a ping (STARTING, LOST) or notices call (WARNED, DRAINING) in flight
    clip_started: float = 0.0  # the watchdog's clock for the clip at the head of `inflight`
    failures: dict = field(default_factory=dict)  # job id → application failures on this actor
    node: str | None = None  # Ray node id, once known
    ondemand: bool = False  # created for the on-demand node type
    since: float | None = None  # when it entered its state (the clock's time)
    retry_at: float = 0.0  # no probe before this
    reason: str | None = None  # why BROKEN / BLOCKED / RETIRED
    history: list = field(default_factory=list)  # (t, from, to) for tests and the report
    clock: Callable[[], float] = time.monotonic  # the runtime's clock

    def __post_init__(self) -> None:
        if self.since is None:
            self.since = self.clock()

    def to(self, new: SlotState, reason: str | None = None) -> None:
        if new is self.state:
            return
        if new not in ALLOWED[self.state]:
            raise IllegalTransition(f"slot {self.state.value} → {new.value} is not allowed ({reason or 'no reason'})")
        now = self.clock()
        self.history.append((now, self.state.value, new.value))
        self.state, self.since = new, now
        if reason is not None:
            self.reason = reason

    # the chain: BUSY while it holds one; a warned slot keeps its chain to the end
    def assign(self, chain) -> None:
        if not self.takes_chains:
            raise IllegalTransition(f"a {self.state.value} slot takes no new chain")
        self.to(SlotState.BUSY)
        self.chain = chain
        self.clip_started = self.clock()

    def release(self) -> object:
        """Drop the chain and the clip calls still queued; IDLE again (a warned slot stays WARNED)."""
        chain, self.chain = self.chain, None
        self.inflight.clear()
        if self.state is SlotState.BUSY:
            self.to(SlotState.IDLE)
        return chain

    @property
    def takes_chains(self) -> bool:
        return self.state is SlotState.IDLE and self.chain is None

    @property
    def in_rotation(self) -> bool:
        """Could render for this run now or later (not taken out, not gone)."""
        return self.state not in (SlotState.BLOCKED, SlotState.BROKEN, SlotState.RETIRED)
