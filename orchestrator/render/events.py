"""What the render runtime did, as records: one Event per assignment, clip submitted or saved, loss, notice,
retirement…, collected in one EventLog that the scheduler and the pool both write to (tests, benchmarks and the
run's result read it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator


@dataclass(frozen=True)
class Event:
    """t: the runtime's clock. Scheduler events name the chain (job, scene) and a clip; pool events name the
    slot (its index in the pool), its node and why."""

    t: float
    kind: str  # assign submit done lost preempted error | pool ready retired draining warned cleared broken blocked ondemand
    job: str | None = None
    scene: int | None = None
    clip: int | None = None
    slot: int | None = None
    node: str | None = None
    detail: str | None = None


class EventLog:
    def __init__(self, clock: Callable[[], float]):
        self.clock = clock
        self.items: list[Event] = []

    def add(self, kind: str, **fields) -> Event:
        e = Event(self.clock(), kind, **fields)
        self.items.append(e)
        return e

    def of(self, *kinds: str) -> list[Event]:
        return [e for e in self.items if e.kind in kinds]

    def __iter__(self) -> Iterator[Event]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)
