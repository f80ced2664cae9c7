"""Cluster configs: load, and validate with Ray's schema plus our checks of what Ray leaves free-form
(node_config keys, credentials on every node type, cost labels, metadata.s2v, the private Jobs API)."""

from __future__ import annotations

import copy
import re
import shlex
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from core.errors import ConfigError, ProblemList
from infra.clusters.node_configs import MARKET_OF, NODE_CONFIG_CHECKS, PRICE_KEY_FIELD, did_you_mean, unknown_keys

PROVIDERS = ("aws", "gcp", "runpod")
HEAD, SPOT, ONDEMAND = "head", "gpu_spot", "gpu_ondemand"
# Custom resources that tell the two GPU types apart, so the scheduler can send new work to on-demand nodes
# after repeated preemptions (resources={ONDEMAND_RESOURCE: 1}).
SPOT_RESOURCE, ONDEMAND_RESOURCE = "s2v_spot", "s2v_ondemand"
# The custom resource only CPU node types carry (the head, CPU workers): a run's CPU tasks (stitch, post step,
# audio, ASR) ask for a sliver of it, so they never land on a spot GPU node, where a preemption would take them and
# they would keep the node from going idle. GPU node types declare 12-26 CPUs of their own, so CPU alone would not.
CPU_WORK_RESOURCE, CPU_WORK_SLOTS = "s2v_cpu_work", 1000
# Ray node labels every node type carries; the run's cost is node-hours × Settings.node_price(key, market).
PRICE_LABEL, MARKET_LABEL = "s2v-price-key", "s2v-market"
MARKETS = ("spot", "on-demand")
# Values a template ships with that a user must replace before `up`.
PLACEHOLDERS = ("YOUR-BUCKET", "my-gcp-project", "YOUR-PROJECT")

# metadata.s2v: key → (type, default, what it is). docs/clusters.md documents each.
META_KEYS: dict[str, tuple[type | tuple[type, ...], Any, str]] = {
    "work": (str, None, "work area URI (s3:// or gs://) every run on this cluster uses"),
    "model_dir": (str, None, "model weights folder (s3://, gs:// or a node path), cached on each GPU node"),
    "idle_stop_minutes": (int, 30, "stop the cluster after this many idle minutes (0 = never)"),
    "dashboard_port": (int, 8265, "head port of the Ray dashboard/Jobs API (bound to 127.0.0.1, reached by SSH)"),
    "zones": (list, None, "GCP zones to try in order when the head cannot be created in one"),
    "node_cache_dirs": (list, None, "local NVMe/SSD mount points to cache weights on, first usable wins"),
    "prices": (dict, None, "USD per node-hour overrides {type: {on_demand, spot}} for runs on this cluster"),
    "image_source": (str, None, "where the image ids came from (informational)"),
    "input_buckets": (list, None, "other buckets a run reads inputs from (the grants `init` writes cover them)"),
    "output_buckets": (list, None, "other buckets a run publishes to (read/write, like the work bucket)"),
    "preemption_sources": (str, None, "notices the nodes watch (aws, gcp, sigterm, none; default: the provider's)"),
    "capacity": (dict, None, "what `init` asked (types, fallback types, zones) and where each type is offered"),
    "s3_endpoint_url": (str, None, "S3-compatible endpoint of the buckets (R2, MinIO); none: AWS S3"),
    "s3_region": (str, None, "region the nodes sign S3 requests for (R2: auto)"),
    "node_image": (str, None, "the pre-built node image the nodes run (`init --docker-image`; setup checks it)"),
    "weights_snapshot": (str, None, "AWS: the EBS snapshot of the weights every GPU node mounts (informational)"),
}
# What a cluster's render actors watch for spot notices, by provider: named, never probed for (`auto` on an unknown
# machine probes nothing, and a probe of a metadata address from the wrong place is traffic nobody asked for).
PREEMPTION_SOURCES = {"aws": "aws", "gcp": "gcp", "runpod": "sigterm"}

def template_path(provider: str) -> Path:
    if provider not in PROVIDERS:
        raise ConfigError(f"unknown provider {provider!r}; expected one of {', '.join(PROVIDERS)}")
    return Path(str(resources.files("infra.clusters").joinpath(f"{provider}.yaml")))


def load_config(path: str | Path) -> dict[str, Any]:
    try:
        cfg = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read cluster config {path}: {e}") from e
    if not isinstance(cfg, dict):
        raise ConfigError(f"cluster config {path} is not a mapping")
    return cfg


def provider_of(cfg: dict[str, Any]) -> str:
    p = cfg.get("provider", {})
    if p.get("type") == "external" and "runpod" in str(p.get("module", "")):
        return "runpod"
    return str(p.get("type"))


def s2v_meta(cfg: dict[str, Any]) -> dict[str, Any]:
    """metadata.s2v with defaults filled in (call after validation)."""
    got = ((cfg.get("metadata") or {}).get("s2v") or {})
    return {k: got.get(k, default) for k, (_t, default, _d) in META_KEYS.items()}


def gpu_capacity(cfg: dict[str, Any], gpus_per_actor: int = 1) -> int:
    """The most render actors (of gpus_per_actor GPUs each) a config can hold at once: the head's, plus each GPU
    worker type's max_workers × actors per node, the types with the most per node first, within the cluster's
    max_workers. A node too small for one actor adds none."""
    types = cfg.get("available_node_types") or {}
    head = cfg.get("head_node_type")

    def per_node(nt) -> int:
        return int(float(((nt or {}).get("resources") or {}).get("GPU", 0)) // gpus_per_actor)

    total = per_node(types.get(head)) if head in types else 0
    workers_left = int(cfg.get("max_workers", 0) or 0)
    for name, nt in sorted(types.items(), key=lambda kv: -per_node(kv[1])):
        if name == head or per_node(nt) == 0:
            continue
        take = max(0, min(int((nt or {}).get("max_workers", workers_left) or 0), workers_left))
        total += take * per_node(nt)
        workers_left -= take
    return total




def _check_labels(probs: ProblemList, where: str, nt: dict, prov: str) -> None:
    """Every node type says what it costs: s2v-price-key and s2v-market, consistent with its node_config."""
    from ray._private.label_utils import validate_node_label_syntax, validate_node_labels

    labels = nt.get("labels")
    if not isinstance(labels, dict):
        probs.add(where, "labels", f"missing; every node type needs {PRICE_LABEL} and {MARKET_LABEL} (run cost)",
                  f"labels: {{{PRICE_LABEL}: <instance type>, {MARKET_LABEL}: spot|on-demand}}")
        return
    try:
        validate_node_labels(labels)
        validate_node_label_syntax(labels)
    except ValueError as e:
        probs.add(f"{where}.labels", None, str(e))
    for key in (PRICE_LABEL, MARKET_LABEL):
        if not labels.get(key):
            probs.add(f"{where}.labels", key, "missing", did_you_mean(key, [k for k in labels]) if labels else None)
    market = labels.get(MARKET_LABEL)
    if market and market not in MARKETS:
        probs.add(f"{where}.labels", MARKET_LABEL, f"invalid value {market!r}", did_you_mean(str(market), MARKETS)
                  or f"one of {list(MARKETS)}")
    nc = nt.get("node_config") or {}
    field = PRICE_KEY_FIELD.get(prov)
    if field and labels.get(PRICE_LABEL) and nc.get(field) and labels[PRICE_LABEL] != nc[field]:
        probs.add(f"{where}.labels", PRICE_LABEL, f"is {labels[PRICE_LABEL]!r} but node_config.{field} is "
                  f"{nc[field]!r}", "the run would be priced as the wrong instance type")
    if prov in MARKET_OF and market in MARKETS and market != MARKET_OF[prov](nc):
        probs.add(f"{where}.labels", MARKET_LABEL, f"says {market} but node_config launches "
                  f"{MARKET_OF[prov](nc)}", "spot and on-demand differ several-fold in price")


def _check_metadata(probs: ProblemList, cfg: dict) -> None:
    where = "metadata.s2v"
    meta = (cfg.get("metadata") or {}).get("s2v")
    if not isinstance(meta, dict):
        probs.add("metadata", "s2v", "missing; a cluster config says where its runs keep their state",
                  "metadata: {s2v: {work: s3://BUCKET/s2v-work}} (`s2v cluster init --bucket BUCKET` writes it)")
        return
    unknown_keys(probs, where, meta, set(META_KEYS), why="not an s2v cluster setting")
    for k, (typ, _default, _doc) in META_KEYS.items():
        if k in meta and meta[k] is not None and (not isinstance(meta[k], typ) or isinstance(meta[k], bool)):
            probs.add(where, k, f"must be a {getattr(typ, '__name__', typ)}, got {type(meta[k]).__name__}")
    work = meta.get("work")
    if not work:
        probs.add(where, "work", "missing: cluster runs keep checkpoints and state in object storage",
                  "work: s3://BUCKET/s2v-work or gs://BUCKET/s2v-work")
    elif isinstance(work, str) and not re.match(r"(s3|gs)://[^/]+", work):
        probs.add(where, "work", f"{work!r} is not an s3:// or gs:// URI: nodes share no disk, so a local work area "
                  "would scatter checkpoints across machines", "work: s3://BUCKET/s2v-work")
    for k in ("idle_stop_minutes", "dashboard_port"):
        v = meta.get(k)
        if isinstance(v, int) and not isinstance(v, bool) and (v < 0 or (k == "dashboard_port" and not 0 < v < 65536)):
            probs.add(where, k, f"out of range: {v}")
    for k in ("zones", "node_cache_dirs"):
        if isinstance(meta.get(k), list) and not all(isinstance(z, str) and z for z in meta[k]):
            probs.add(where, k, "must be a list of non-empty strings")
    url = meta.get("s3_endpoint_url")
    if isinstance(url, str) and not re.match(r"https?://[^/\s]+", url):
        probs.add(where, "s3_endpoint_url", f"{url!r} is not an http(s):// URL",
                  "e.g. https://ACCOUNT.r2.cloudflarestorage.com (`init` copies S2V_S3_ENDPOINT_URL)")
    ps = meta.get("preemption_sources")
    if isinstance(ps, str):
        names = [n.strip() for n in ps.split(",") if n.strip()]
        bad = [n for n in names if n not in ("aws", "gcp", "sigterm", "none")] or (["(empty)"] if not names else [])
        if bad:
            probs.add(where, "preemption_sources", f"unknown source {bad[0]!r}",
                      "a comma list of aws, gcp, sigterm, or none (auto is for a machine that names its cloud)")
    if isinstance(meta.get("prices"), dict):
        from core.settings import NodePrice

        for key, val in meta["prices"].items():
            try:
                NodePrice.model_validate(val)
            except Exception as e:  # noqa: BLE001 — pydantic's ValidationError, shown in one line
                probs.add(f"{where}.prices", str(key), f"not {{on_demand: USD, spot: USD}}: {str(e).splitlines()[0]}")


def _check_dashboard(probs: ProblemList, cfg: dict) -> None:
    """The Jobs API runs code for whoever reaches it: it stays on the head's loopback, reached through SSH."""
    port = ((cfg.get("metadata") or {}).get("s2v") or {}).get("dashboard_port", 8265)
    for i, cmd in enumerate(cfg.get("head_start_ray_commands") or []):
        if not re.search(r"\bray start\b.*--head", str(cmd)):
            continue
        where = f"head_start_ray_commands[{i}]"
        hosts = _flag_values(str(cmd), "--dashboard-host")
        # every value: Ray takes the last one given, and a later `--dashboard-host=0.0.0.0` wins over an earlier one
        if not hosts or any(h not in ("127.0.0.1", "localhost") for h in hosts):
            probs.add(where, "--dashboard-host", "the Jobs API must listen on 127.0.0.1 only (it is unauthenticated "
                      "remote code execution); `s2v` reaches it through an SSH tunnel",
                      "one --dashboard-host=127.0.0.1, and no other")
        ports = _flag_values(str(cmd), "--dashboard-port")
        if (int(ports[-1]) if ports and ports[-1].isdigit() else 8265 if not ports else -1) != port:
            probs.add(where, "--dashboard-port", f"differs from metadata.s2v.dashboard_port ({port})")


def _flag_values(cmd: str, flag: str) -> list[str]:
    """Every value a shell command gives `flag` (`--flag=v`, `--flag v`, quoted or not), in order."""
    try:
        words = shlex.split(cmd.replace(";", " ; ").replace("&&", " && "))
    except ValueError:  # unbalanced quotes: look at the raw words
        words = cmd.split()
    out = []
    for k, w in enumerate(words):
        if w.startswith(flag + "="):
            out.append(w.split("=", 1)[1])
        elif w == flag and k + 1 < len(words):
            out.append(words[k + 1])
    return out


def _check_placeholders(probs: ProblemList, cfg: dict) -> None:
    text = yaml.safe_dump({k: v for k, v in cfg.items() if k != "metadata"}) + yaml.safe_dump(
        ((cfg.get("metadata") or {}).get("s2v") or {}))
    for ph in PLACEHOLDERS:
        if ph in text:
            probs.add("cluster config", None, f"still holds the placeholder {ph!r}",
                      "run `s2v cluster init aws|gcp --bucket BUCKET [--project ID]` to write a config for your "
                      "account")


def _check_cpu_work(probs: ProblemList, types: dict, head) -> None:
    """CPU work goes where CPU_WORK_RESOURCE is: on the head (or CPU workers), never on GPU workers. A head with a
    GPU (a one-node cluster) may carry it: the head is on-demand and lives as long as the cluster."""
    res = {n: (nt or {}).get("resources") or {} for n, nt in types.items()}
    for name, r in res.items():
        if name != head and r.get("GPU", 0) > 0 and r.get(CPU_WORK_RESOURCE):
            probs.add(f"available_node_types.{name}.resources", CPU_WORK_RESOURCE,
                      "is on a GPU node type: stitching and publishing would run on GPU (spot) nodes, be preempted "
                      "there and keep them from going idle", f"remove {CPU_WORK_RESOURCE} from {name}")
    # on the head itself: the runtime asks the live cluster once whether the marker exists, and with workers
    # starting at zero only the head is sure to be there
    if head in res and not res[head].get(CPU_WORK_RESOURCE):
        probs.add(f"available_node_types.{head}.resources", CPU_WORK_RESOURCE,
                  "missing: the head is not marked for a run's CPU work, so once its CPUs are busy stitching "
                  "spills onto GPU nodes", f"{CPU_WORK_RESOURCE}: {CPU_WORK_SLOTS} in the head's resources "
                  "(`s2v cluster init` writes it)")


def cpu_work_cpus(cfg: dict[str, Any]) -> float:
    """The most CPUs a node marked for CPU work has: no CPU task of a run may ask for more (it would never run)."""
    types = cfg.get("available_node_types") or {}
    return max((float(((nt or {}).get("resources") or {}).get("CPU", 0)) for nt in types.values()
                if ((nt or {}).get("resources") or {}).get(CPU_WORK_RESOURCE)), default=0.0)


def _check_installs(probs: ProblemList, cfg: dict) -> None:
    """A config written before one wheel per node: `$(ls ~/s2v-dist/*.whl)` names every wheel the node holds."""
    keys = ("setup_commands", "head_setup_commands", "worker_setup_commands")
    for key in keys:
        for i, cmd in enumerate(cfg.get(key) or []):
            if "s2v-dist/*.whl" in str(cmd):
                probs.add(f"{key}[{i}]", None, "installs every wheel in ~/s2v-dist: after a version bump the node "
                          "holds old ones too (Ray's sync never deletes) and the install fails", "install "
                          "\"file://$HOME/s2v-dist/$(cat ~/s2v-dist/WHEEL)\" as the shipped templates do "
                          "(`s2v cluster init --force` rewrites the config)")


def check_node_configs(cfg: dict[str, Any], allow_placeholders: bool = True) -> ProblemList:
    """Our checks of what Ray leaves free-form."""
    probs = ProblemList()
    prov = provider_of(cfg)
    check = NODE_CONFIG_CHECKS.get(prov)
    types = cfg.get("available_node_types") or {}
    head = cfg.get("head_node_type")
    for name, nt in types.items():
        nt = nt or {}
        where = f"available_node_types.{name}"
        nc = nt.get("node_config")
        if check is not None and isinstance(nc, dict):
            check(probs, f"{where}.node_config", nc, cfg, name == head)
        _check_labels(probs, where, nt, prov)
    gpu_types = [n for n, nt in types.items() if (nt or {}).get("resources", {}).get("GPU", 0) > 0]
    if types and not gpu_types:
        probs.add("available_node_types", None, "no node type offers a GPU", "the render actors need GPU nodes")
    _check_cpu_work(probs, types, head)
    _check_installs(probs, cfg)
    _check_metadata(probs, cfg)
    _check_dashboard(probs, cfg)
    if not allow_placeholders:
        _check_placeholders(probs, cfg)
    # Deduplicate: the cache_stopped_nodes problem is found once per spot type.
    seen, unique = set(), ProblemList()
    for p in probs.items:
        if (p.where, p.field, p.reason) not in seen:
            seen.add((p.where, p.field, p.reason))
            unique.items.append(p)
    return unique


def validate_cluster_config(cfg: dict[str, Any], where: str = "cluster config",
                            allow_placeholders: bool = False) -> dict[str, Any]:
    """Ray's prepare_config + validate_config, then ours; returns the prepared config or raises ConfigError.

    allow_placeholders=True checks a shipped template (it still says YOUR-BUCKET); `up` never allows them.
    """
    from ray.autoscaler._private.util import prepare_config, validate_config

    from infra.clusters.shape import check_shape

    shape = check_shape(cfg)
    if shape:  # everything after this reads the config as mappings: stop here, every problem named
        raise ConfigError(f"{where} is invalid", shape.items)
    probs = check_node_configs(cfg, allow_placeholders=allow_placeholders)
    try:
        prepared = prepare_config(copy.deepcopy(cfg))
        validate_config(prepared)
    except Exception as e:  # noqa: BLE001 — jsonschema, ValueError, import errors of external providers
        probs.add(where, None, f"Ray rejects it: {str(e).splitlines()[0]}")
        prepared = None
    if probs:
        raise ConfigError(f"{where} is invalid", probs.items)
    return prepared
