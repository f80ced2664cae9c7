"""Drill backends for fault drills and benchmarks (never for production renders), registered apart."""

REGISTRY: dict[str, str] = {
    "faults": "pipeline.backends.drills.faults:FaultBackend",
    "timed": "pipeline.backends.drills.timed:TimedBackend",
}
