"""Render backends, found by name through a lazy registry (torch is never imported to look one up)."""

from __future__ import annotations

import importlib

from core.errors import InputError
from pipeline.backends import drills
from pipeline.backends.base import Backend, BackendSpec, ClipOutput, ClipRequest, SceneInput

# Production backends. Drill backends (fault injection, timed sleeps) live in pipeline.backends.drills and are
# found by name too, but are never offered as a choice.
REGISTRY: dict[str, str] = {
    "draft": "pipeline.backends.draft:DraftBackend",
    "wan-s2v": "pipeline.backends.wan_s2v:WanS2VBackend",
}


def backend_class(name: str) -> type[Backend]:
    spec = REGISTRY.get(name) or drills.REGISTRY.get(name)
    if spec is None:
        raise InputError(f"unknown backend '{name}'; known backends: {', '.join(sorted(REGISTRY))} "
                         f"(drills: {', '.join(sorted(drills.REGISTRY))})")
    mod, _, cls = spec.partition(":")
    return getattr(importlib.import_module(mod), cls)


def backend_spec(name: str) -> BackendSpec:
    return backend_class(name).spec


__all__ = ["REGISTRY", "Backend", "BackendSpec", "ClipOutput", "ClipRequest", "SceneInput", "backend_class", "backend_spec"]
