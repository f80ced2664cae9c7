"""The config the launcher gets: the user's file validated, plus the code bundle mount, the node data file and
(GCP) the zone the cluster lives in. Every `s2v cluster` command goes through here, so all of them address the
same cluster."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

from core.errors import ClusterError, ConfigError
from infra.clusters.config import load_config, provider_of, s2v_meta, validate_cluster_config
from infra.clusters.ship import build_bundle, read_record

DIST_MOUNT = "~/s2v-dist"
NODE_JSON = "node.json"
# GCE errors that mean "not in this zone, try another" (capacity, or the machine type is not offered there).
ZONAL_ERRORS = ("ZONE_RESOURCE_POOL_EXHAUSTED", "does not have enough resources available", "does not exist in zone",
                "is not available in zone", "STOCKOUT")


def state_dir(cluster_name: str, settings=None) -> Path:
    """<settings.clusters_dir>/<name> (~/.s2v/clusters/<name>): the bundle (dist/) and what `up` remembers."""
    if settings is None:
        from core.settings import Settings

        settings = Settings()
    return Path(settings.clusters_dir) / cluster_name


def _state(cluster_name: str, settings=None) -> dict:
    try:
        return json.loads((state_dir(cluster_name, settings) / "state.json").read_text())
    except (OSError, ValueError):
        return {}


def _save_state(cluster_name: str, settings=None, **kw) -> None:
    d = state_dir(cluster_name, settings)
    d.mkdir(parents=True, exist_ok=True)
    (d / "state.json").write_text(json.dumps({**_state(cluster_name, settings), **kw}, indent=1))


def checked_config(path: Path) -> dict[str, Any]:
    """Load + validate (Ray's schema and ours, placeholders refused) before any cloud call is made."""
    if not Path(path).exists():
        raise ConfigError(f"no cluster config at {path}; create one with `s2v cluster init aws --bucket BUCKET`")
    cfg = load_config(path)
    validate_cluster_config(cfg, where=str(path))
    return cfg


def shaped_config(path: Path) -> dict[str, Any]:
    """Load a config and check only that it has the shape every reader assumes (mappings where mappings go), for
    callers that read a field or two before the launcher validates the whole config."""
    from infra.clusters.shape import check_shape

    cfg = load_config(path)
    if shape := check_shape(cfg):
        raise ConfigError(f"{path} is invalid", shape.items)
    return cfg


def launch_config(path: Path, project_root: Path | None = None, settings=None) -> dict[str, Any]:
    """The dict to hand to ray.autoscaler.sdk for the cluster in `path`. With project_root, build the bundle
    first (`up`); otherwise mount the last bundle built, if any (down, status, attach, exec)."""
    cfg = copy.deepcopy(checked_config(path))
    name = cfg["cluster_name"]
    dist = state_dir(name, settings) / "dist"
    if project_root is not None:
        if provider_of(cfg) == "runpod":
            from infra.clusters.runpod.secrets import stage

            # `up` only: pods have no instance role, so the user's object-store keys become a mount on every node
            # (down, status and exec need no keys, and the nodes keep the copy they have)
            stage(cfg)
        cache = Path(settings.cache_dir) / "wheels" if settings is not None else None
        bundle = build_bundle(project_root, dist, cache)
        node = {"cluster_name": name, "metadata": s2v_meta(cfg), "fingerprint": bundle.fingerprint}
        (dist / NODE_JSON).write_text(json.dumps(node, indent=1) + "\n")
    record = read_record(dist)
    if record:
        cfg["file_mounts"] = {**(cfg.get("file_mounts") or {}), DIST_MOUNT: str(dist)}
        # In the config itself too: Ray caches its runtime hash per config text within a process, and the
        # fingerprint makes a changed checkout a changed config (so setup re-runs and reinstalls the wheel).
        cfg.setdefault("metadata", {})["s2v_build"] = {"fingerprint": record["fingerprint"],
                                                       "version": record["version"]}
    zone = _state(name, settings).get("zone")
    if zone and zone in (s2v_meta(cfg).get("zones") or []):
        _use_zone(cfg, zone)
        cfg = _in_zone(cfg, zone)
    return cfg


def _use_zone(cfg: dict, zone: str) -> None:
    from infra.clusters.generate import _set_zone

    _set_zone(cfg, zone)


def _in_zone(cfg: dict, zone: str) -> dict:
    """The config to launch in `zone`: GPU node types not offered there dropped (infra/clusters/capacity.py)."""
    from infra.clusters.capacity import types_in_zone

    out = copy.deepcopy(cfg)
    types_in_zone(out, zone)
    return out


def is_zonal(exc: BaseException) -> bool:
    text = f"{exc} {getattr(exc, 'content', b'')!r}"
    return any(m in text for m in ZONAL_ERRORS)


def up_in_zones(cfg: dict, create: Callable[[dict], Any], head_exists: Callable[[dict], bool],
                echo: Callable[[str], None] = print, settings=None) -> str | None:
    """Run create(cfg) in the remembered zone or metadata.s2v.zones in order, moving on only when a zone refused
    the head for lack of capacity and no head was left behind. Returns the zone used (None: not zoned)."""
    zones = list(s2v_meta(cfg).get("zones") or [])
    if not zones:
        create(cfg)
        return None
    current = cfg["provider"].get("availability_zone")
    order = [current] + [z for z in zones if z != current] if current in zones else zones
    for i, zone in enumerate(order):
        _use_zone(cfg, zone)
        try:
            create(_in_zone(cfg, zone))
        except (Exception, SystemExit) as e:  # noqa: BLE001 — the launcher sys.exits on failed updates
            if i + 1 < len(order) and is_zonal(e) and not head_exists(cfg):
                why = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
                echo(f"zone {zone} has no capacity for the head ({why}); trying {order[i + 1]}")
                continue
            raise ClusterError(f"cluster up failed in zone {zone}: {e}") from e
        _save_state(cfg["cluster_name"], settings, zone=zone)
        return zone
    return None


def run_settings_env(cfg: dict[str, Any]) -> dict[str, str]:
    """S2V_* variables a run submitted to this cluster needs from its config (the submit side merges the user's
    own S2V_* settings over them): the work area, the weights, the spot notices its nodes get (by provider, or
    metadata.s2v.preemption_sources) and the node prices (the table with the config's metadata.s2v.prices laid
    over it)."""
    from core.settings import Settings

    from infra.clusters.config import PREEMPTION_SOURCES, provider_of

    meta = s2v_meta(cfg)
    env = {"S2V_WORK": str(meta["work"]),
           "S2V_PREEMPTION_SOURCES": meta.get("preemption_sources") or PREEMPTION_SOURCES.get(provider_of(cfg), "none")}
    if meta.get("model_dir"):
        env["S2V_MODEL_DIR"] = str(meta["model_dir"])
    from infra.clusters.node import store_values

    env.update(store_values(meta))  # the store the nodes use (R2, MinIO) is the run's store too
    prices = {k: v.model_dump() for k, v in Settings().node_prices.items()}
    prices.update(meta.get("prices") or {})
    env["S2V_NODE_PRICES"] = json.dumps(prices, sort_keys=True)
    return env
