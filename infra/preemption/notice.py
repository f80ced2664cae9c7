"""What a preemption source reports: a frozen Notice (an interruption or an early warning) and the Source interface."""

from __future__ import annotations

import time
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

AWS_IMDS_URL = "http://169.254.169.254"
GCP_METADATA_URL = "http://metadata.google.internal"


class Notice(BaseModel):
    """A node is going away (an interruption) or may go soon (a warning): who said so, by when, why, since when.

    `deadline` (unix time): for an interruption, when the cloud takes the node; for a warning (a rebalance
    recommendation), when the warning lapses unless the cloud renews it. `seen`: when this watcher first saw it.
    A source returns the same Notice for as long as it reports the same event, so (source, deadline) names it.
    """

    model_config = ConfigDict(frozen=True)

    source: str  # "aws-spot" | "aws-rebalance" | "gcp-preempted" | "sigterm"
    kind: Literal["interruption", "warning"] = "interruption"
    deadline: float
    reason: str
    seen: float = Field(default_factory=time.time)

    @property
    def key(self) -> tuple[str, float]:
        return self.source, self.deadline


class Source(Protocol):
    """One place a notice can come from. `check` returns everything it reports now ([] for nothing) and raises
    when it could not tell (an unreachable endpoint): the watcher then changes nothing it got from this source."""

    name: str

    def check(self) -> list[Notice]: ...
