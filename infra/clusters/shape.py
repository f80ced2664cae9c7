"""The shape of a cluster config, checked before anything reads it: Ray's own validator and ours assume mappings
where a hand-edited file may hold a string or a list, and a provider type Ray cannot load fails deep inside it.
Every problem is named by its key, as a manifest's are."""

from __future__ import annotations

import importlib.util
from numbers import Real
from typing import Any

from core.errors import ProblemList

PROVIDER_TYPES = ("aws", "gcp", "external")  # RunPod comes as `external` with its module


def _kind(v: Any) -> str:
    return "a list" if isinstance(v, list) else "a mapping" if isinstance(v, dict) else f"{type(v).__name__} {v!r}"


def _mapping(probs: ProblemList, where: str, field: str, v: Any, hint: str | None = None) -> bool:
    if isinstance(v, dict):
        return True
    probs.add(where, field, f"must be a mapping (key: value), got {_kind(v)}", hint)
    return False


def check_shape(cfg: dict[str, Any]) -> ProblemList:
    """Problems that would otherwise surface as a traceback (AttributeError, TypeError, No module named …)."""
    probs = ProblemList()
    _provider(probs, cfg.get("provider"))
    types = cfg.get("available_node_types")
    if _mapping(probs, "available_node_types", None, types, "one entry per node type: NAME: {node_config, resources}"):
        for name, nt in types.items():
            _node_type(probs, f"available_node_types.{name}", nt)
        head = cfg.get("head_node_type")
        if not isinstance(head, str) or head not in types:
            probs.add("head_node_type", None, f"{head!r} is not one of available_node_types ({', '.join(map(str, types))})")
    for key in ("max_workers", "idle_timeout_minutes"):
        if key in cfg and (isinstance(cfg[key], bool) or not isinstance(cfg[key], int)):
            probs.add(key, None, f"must be a whole number, got {_kind(cfg[key])}")
    meta = cfg.get("metadata")
    if meta is not None and _mapping(probs, "metadata", None, meta) and "s2v" in meta:
        _mapping(probs, "metadata.s2v", None, meta["s2v"], "`s2v cluster init` writes it: work, dashboard_port, prices…")
    for key in ("auth", "file_mounts", "docker"):
        if key in cfg and cfg[key] is not None:
            _mapping(probs, key, None, cfg[key])
    return probs


def _provider(probs: ProblemList, p: Any) -> None:
    if not _mapping(probs, "provider", None, p, "e.g. provider: {type: aws, region: us-east-1}"):
        return
    kind = p.get("type")
    if kind not in PROVIDER_TYPES:
        probs.add("provider", "type", f"{kind!r} is not a provider s2v supports",
                  "aws, gcp, or external with module: infra.clusters.runpod.provider.RunPodNodeProvider (RunPod)")
    elif kind == "external":
        module = str(p.get("module") or "")
        mod = module.rpartition(".")[0]
        try:
            found = bool(mod) and importlib.util.find_spec(mod) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            probs.add("provider", "module", f"cannot import the provider module of {module!r}",
                      "module: package.module.ClassName, importable here (RunPod: "
                      "infra.clusters.runpod.provider.RunPodNodeProvider)")


def _node_type(probs: ProblemList, where: str, nt: Any) -> None:
    if not _mapping(probs, where, None, nt, "node_config, resources, min_workers, max_workers"):
        return
    if "node_config" in nt:
        _mapping(probs, where, "node_config", nt["node_config"])
    res = nt.get("resources", {})
    if _mapping(probs, where, "resources", res, "e.g. resources: {CPU: 8, GPU: 1}"):
        for k, v in res.items():
            if isinstance(v, bool) or not isinstance(v, Real):
                probs.add(where, f"resources.{k}", f"must be a number, got {_kind(v)}", f"{k}: 1 (no quotes)")
    for key in ("min_workers", "max_workers"):
        if key in nt and (isinstance(nt[key], bool) or not isinstance(nt[key], int)):
            probs.add(where, key, f"must be a whole number, got {_kind(nt[key])}")
    if "labels" in nt and nt["labels"] is not None:
        _mapping(probs, where, "labels", nt["labels"])
