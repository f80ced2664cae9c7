"""Render backends, found by name through a lazy registry (torch is never imported to look one up)."""

from __future__ import annotations

import importlib

from orchestrator.errors import InputError
from pipeline.backends.base import Backend, BackendSpec, ClipOutput, ClipRequest, SceneInput

REGISTRY: dict[str, str] = {
    "draft": "pipeline.backends.draft:DraftBackend",
    "faults": "pipeline.backends.faults:FaultBackend",
    "wan-s2v": "pipeline.backends.wan_s2v:WanS2VBackend",
    "timed": "pipeline.backends.timed:TimedBackend",
}


def backend_class(name: str) -> type[Backend]:
    if name not in REGISTRY:
        raise InputError(f"unknown backend '{name}'; known backends: {', '.join(sorted(REGISTRY))}")
    mod, _, cls = REGISTRY[name].partition(":")
    return getattr(importlib.import_module(mod), cls)


def backend_spec(name: str) -> BackendSpec:
    return backend_class(name).spec


__all__ = ["REGISTRY", "Backend", "BackendSpec", "ClipOutput", "ClipRequest", "SceneInput", "backend_class", "backend_spec"]
