"""A run's state in the work area, written as it goes (throttled), so `s2v status` works from anywhere, even after
the driver died: the jobs' results, and who runs it (host, boot, pid and its start time) for liveness checks."""

from __future__ import annotations

import logging
import time

from core.errors import S2VError, exit_code_for
from orchestrator.run.results import JobResult
from orchestrator.workarea import liveness
from orchestrator.workarea.layout import WorkArea

log = logging.getLogger("s2v.runner")
EVERY_S = 2.0


class RunState:
    def __init__(self, work: WorkArea, run_id: str, manifest: str, results: dict[str, JobResult]):
        self.work, self.run_id, self.manifest, self.results = work, run_id, manifest, results
        self.last = -float("inf")
        self.started = time.time()
        self.me = liveness.this_process()
        self.announced = False  # runs/LATEST names this run once, at its start: never flipped back later

    def _doc(self, status: str) -> dict:
        return {"run_id": self.run_id, "manifest": self.manifest, "status": status, "started": self.started,
                "updated": time.time(), **self.me,
                "jobs": {k: v.model_dump(mode="json") for k, v in self.results.items()}}

    def write(self, force: bool = False) -> None:
        if force or time.monotonic() - self.last > EVERY_S:
            try:
                self.work.write_state(self.run_id, self._doc("running"), latest=not self.announced)
                self.announced = True
            except S2VError as e:
                log.warning("could not write run state: %s (exit code %d)", e, exit_code_for(e))
            self.last = time.monotonic()

    def finish(self, status: str = "finished") -> None:
        self.work.write_state(self.run_id, self._doc(status), latest=not self.announced)
