"""Cluster configs: load, and validate with Ray's schema plus our checks of what Ray leaves free-form
(node_config keys, credentials on every node type, cost labels, metadata.s2v, the private Jobs API)."""

from __future__ import annotations

import copy
import difflib
import re
import shlex
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from core.errors import ConfigError, ProblemList

PROVIDERS = ("aws", "gcp", "runpod")
HEAD, SPOT, ONDEMAND = "head", "gpu_spot", "gpu_ondemand"
# Custom resources that tell the two GPU types apart, so the scheduler can send new work to on-demand nodes
# after repeated preemptions (resources={ONDEMAND_RESOURCE: 1}).
SPOT_RESOURCE, ONDEMAND_RESOURCE = "s2v_spot", "s2v_ondemand"
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
    "preemption_sources": (str, None, "notices the nodes watch (aws, gcp, sigterm, none; default: the provider's)"),
}
# What a cluster's render actors watch for spot notices, by provider: named, never probed for (`auto` on an unknown
# machine probes nothing, and a probe of a metadata address from the wrong place is traffic nobody asked for).
PREEMPTION_SOURCES = {"aws": "aws", "gcp": "gcp", "runpod": "sigterm"}

# node_config keys each provider accepts (Ray passes node_config through untouched, so typos surface only as
# cloud API errors minutes into `up` — or, worse, are silently ignored).
AWS_KEYS = {
    "InstanceType", "ImageId", "KeyName", "SubnetId", "SubnetIds", "SecurityGroupIds", "IamInstanceProfile",
    "BlockDeviceMappings", "InstanceMarketOptions", "TagSpecifications", "Placement", "NetworkInterfaces",
    "UserData", "EbsOptimized", "MetadataOptions", "LaunchTemplate", "CapacityReservationSpecification",
    "InstanceInitiatedShutdownBehavior", "Monitoring", "CpuOptions", "HibernationOptions", "PrivateIpAddress",
    "DisableApiTermination", "EnclaveOptions", "MaintenanceOptions", "PrivateDnsNameOptions", "LicenseSpecifications",
    "InstanceRequirements", "CreditSpecification", "KernelId", "RamdiskId",
}
AWS_MARKET_KEYS = {"MarketType", "SpotOptions"}
AWS_MARKET_TYPES = {"spot", "capacity-block"}
AWS_SPOT_KEYS = {"MaxPrice", "SpotInstanceType", "BlockDurationMinutes", "ValidUntil", "InstanceInterruptionBehavior"}
GCP_KEYS = {
    "machineType", "disks", "guestAccelerators", "scheduling", "metadata", "serviceAccounts", "networkInterfaces",
    "labels", "tags", "minCpuPlatform", "shieldedInstanceConfig", "sourceMachineImage", "reservationAffinity",
    "canIpForward", "description", "confidentialInstanceConfig", "advancedMachineFeatures", "resourcePolicies",
    "displayDevice", "networkPerformanceConfig", "acceleratorType", "runtimeVersion", "acceleratorConfig",
}
GCP_SCHEDULING = {
    "provisioningModel": {"SPOT", "STANDARD"},
    "instanceTerminationAction": {"DELETE", "STOP"},
    "onHostMaintenance": {"TERMINATE", "MIGRATE"},
    "automaticRestart": {True, False},
    "preemptible": {True, False},
    "nodeAffinities": None, "minNodeCpus": None, "maxRunDuration": None, "locationHint": None,
}
RUNPOD_KEYS = {
    "gpu_type_id", "gpu_count", "image_name", "cloud_type", "interruptible", "bid_per_gpu", "container_disk_in_gb",
    "volume_in_gb", "volume_mount_path", "network_volume_id", "data_center_id", "country_code", "ports", "env",
    "docker_args", "min_vcpu_count", "min_memory_in_gb", "template_id", "support_public_ip", "allowed_cuda_versions",
    "instance_id",
}
RUNPOD_CLOUD_TYPES = {"ALL", "COMMUNITY", "SECURE"}
_NO_CREDS = ("Ray attaches its credentials to the head only, so weight sync, s3:// gs:// inputs and the work area "
             "fail here")


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


def _did_you_mean(word: str, choices) -> str | None:
    lower = {str(c).lower(): c for c in choices}
    if word.lower() in lower:
        return f"did you mean '{lower[word.lower()]}'? (keys are case-sensitive)"
    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def _unknown_keys(probs: ProblemList, where: str, got: dict, allowed,
                  why: str = "Ray does not check node_config") -> None:
    for k in got:
        if k not in allowed:
            probs.add(where, str(k), f"unknown key ({why})", _did_you_mean(str(k), allowed))


def _market_aws(nc: dict) -> str:
    imo = nc.get("InstanceMarketOptions")
    return "spot" if isinstance(imo, dict) and imo.get("MarketType") == "spot" else "on-demand"


def _market_gcp(nc: dict) -> str:
    sch = nc.get("scheduling")
    spot = isinstance(sch, dict) and (sch.get("provisioningModel") == "SPOT" or sch.get("preemptible") is True)
    return "spot" if spot else "on-demand"


def _check_aws(probs: ProblemList, where: str, nc: dict, cfg: dict, is_head: bool) -> None:
    _unknown_keys(probs, where, nc, AWS_KEYS)
    if not nc.get("ImageId"):
        probs.add(where, "ImageId", "no image: Ray would fall back to its Ubuntu 18.04 Deep Learning AMI (glibc 2.27, "
                  "old driver), which cannot run torch 2.13",
                  "run `s2v cluster init aws` or set an AMI id / resolve:ssm:")
    if not is_head and not nc.get("IamInstanceProfile"):
        probs.add(where, "IamInstanceProfile", f"missing: {_NO_CREDS}", "IamInstanceProfile: {Name: s2v-worker}")
    imo = nc.get("InstanceMarketOptions")
    if imo is None:
        return
    if not isinstance(imo, dict):
        probs.add(where, "InstanceMarketOptions", "must be a mapping")
        return
    _unknown_keys(probs, f"{where}.InstanceMarketOptions", imo, AWS_MARKET_KEYS)
    mt = imo.get("MarketType")
    if mt is not None and mt not in AWS_MARKET_TYPES:
        probs.add(f"{where}.InstanceMarketOptions", "MarketType", f"invalid value {mt!r}",
                  _did_you_mean(str(mt), AWS_MARKET_TYPES) or f"one of {sorted(AWS_MARKET_TYPES)}")
    so = imo.get("SpotOptions")
    if isinstance(so, dict):
        _unknown_keys(probs, f"{where}.InstanceMarketOptions.SpotOptions", so, AWS_SPOT_KEYS)
    if mt == "spot" and cfg.get("provider", {}).get("cache_stopped_nodes", True) is not False:
        probs.add("provider", "cache_stopped_nodes", "must be false when a node type uses spot",
                  "spot instances cannot be stopped and restarted by the launcher")


def _check_gcp(probs: ProblemList, where: str, nc: dict, cfg: dict, is_head: bool) -> None:
    _unknown_keys(probs, where, nc, GCP_KEYS)
    disks = nc.get("disks") or []
    boot = next((d for d in disks if isinstance(d, dict) and d.get("boot")), None)
    if not (boot or {}).get("initializeParams", {}).get("sourceImage"):
        probs.add(where, "disks", "no boot disk with initializeParams.sourceImage", "see infra/clusters/gcp.yaml")
    if not is_head and not nc.get("serviceAccounts"):
        probs.add(where, "serviceAccounts", f"missing: {_NO_CREDS}",
                  "serviceAccounts: [{email: s2v-worker@PROJECT.iam.gserviceaccount.com, scopes: [...cloud-platform]}]")
    sch = nc.get("scheduling")
    if sch is None:
        return
    if not isinstance(sch, dict):
        probs.add(where, "scheduling", "must be a mapping, not a list",
                  "{provisioningModel: SPOT, instanceTerminationAction: DELETE, ...}")
        return
    _unknown_keys(probs, f"{where}.scheduling", sch, set(GCP_SCHEDULING))
    for k, allowed in GCP_SCHEDULING.items():
        if allowed is not None and k in sch and sch[k] not in allowed:
            probs.add(f"{where}.scheduling", k, f"invalid value {sch[k]!r}",
                      _did_you_mean(str(sch[k]), {str(a) for a in allowed}) or f"one of {sorted(map(str, allowed))}")
    if sch.get("provisioningModel") == "SPOT":
        if sch.get("automaticRestart") is not False:
            probs.add(f"{where}.scheduling", "automaticRestart", "must be false for SPOT VMs")
        if sch.get("onHostMaintenance") != "TERMINATE":
            probs.add(f"{where}.scheduling", "onHostMaintenance", "must be TERMINATE for SPOT and GPU VMs")
    elif re.match(r"a3-highgpu-[124]g$", str(nc.get("machineType", ""))):
        probs.add(where, "machineType", f"{nc['machineType']} is sold as Spot only (A3 High with fewer than 8 GPUs)",
                  "use a2-ultragpu-1g (A100 80 GB) or a3-highgpu-8g for on-demand capacity")


def _check_runpod(probs: ProblemList, where: str, nc: dict, cfg: dict, is_head: bool) -> None:
    from infra.clusters.runpod.api import DATA_CENTER_RE, SECRET_ENV_RE

    _unknown_keys(probs, where, nc, RUNPOD_KEYS)
    ct = nc.get("cloud_type", "ALL")
    if ct not in RUNPOD_CLOUD_TYPES:
        probs.add(where, "cloud_type", f"invalid value {ct!r}", _did_you_mean(str(ct), RUNPOD_CLOUD_TYPES))
    if not nc.get("image_name") and not nc.get("template_id"):
        probs.add(where, "image_name", "an image_name or template_id is required")
    gc = nc.get("gpu_count", 1)
    if not isinstance(gc, int) or gc < 1:
        probs.add(where, "gpu_count", f"must be a positive integer, got {gc!r}")
    gpu = bool(nc.get("gpu_type_id"))
    if cfg.get("provider", {}).get("global_networking", True):
        # Ray's head and workers talk over global networking: RunPod offers it on NVIDIA GPU pods in Secure Cloud.
        if not gpu:
            probs.add(where, "gpu_type_id", "a CPU pod cannot join RunPod's global networking, so Ray's other nodes "
                      "could not reach it", "make it a small GPU pod (e.g. NVIDIA RTX A4000) with resources GPU: 0")
        if ct != "SECURE":
            probs.add(where, "cloud_type", f"{ct} cannot use global networking", "use SECURE")
    elif len(cfg.get("available_node_types") or {}) > 1:
        probs.add("provider", "global_networking", "is off, so RunPod pods cannot reach each other and no Ray "
                  "worker could join the head", "set global_networking: true")
    if not gpu and nc.get("interruptible"):
        probs.add(where, "interruptible", "RunPod has no interruptible CPU pods")
    bid = nc.get("bid_per_gpu")
    if bid is not None and (isinstance(bid, bool) or not isinstance(bid, (int, float)) or bid <= 0):
        probs.add(where, "bid_per_gpu", f"must be a positive USD per GPU-hour, got {bid!r}",
                  "or leave it out to bid RunPod's current minimum bid")
    cuda = nc.get("allowed_cuda_versions")
    if cuda is not None and (not isinstance(cuda, list) or not cuda
                             or not all(isinstance(v, str) and re.match(r"^\d{1,2}\.\d{1,2}$", v) for v in cuda)):
        probs.add(where, "allowed_cuda_versions", f"must be a non-empty list of versions like '13.0', got {cuda!r}",
                  "quote them in YAML: [\"13.0\"] (13.0 unquoted is the number 13)")
    for w, dc in ((where, nc.get("data_center_id")), ("provider", cfg.get("provider", {}).get("data_center_id"))):
        if dc is not None and dc != "any" and not DATA_CENTER_RE.fullmatch(str(dc)):
            probs.add(w, "data_center_id", f"invalid RunPod data center {dc!r}", "like EU-RO-1, or 'any'")
    head = cfg.get("head_node_type")
    if gpu and is_head:
        if (cfg["available_node_types"][head] or {}).get("resources", {}).get("GPU") != 0:
            probs.add(f"available_node_types.{head}", "resources", "the head's small GPU would take render actors",
                      "declare GPU: 0 in the head's resources")
    env = nc.get("env") or {}
    if not isinstance(env, dict):
        probs.add(where, "env", "must be a mapping of NAME: value")
    else:
        for k in env:
            if SECRET_ENV_RE.search(str(k)):
                probs.add(where, f"env.{k}", "looks like a secret; RunPod returns pod env to anyone who can list "
                          "the account's pods", "deliver secrets as files (file_mounts), not pod env")


_CHECKS = {"aws": _check_aws, "gcp": _check_gcp, "runpod": _check_runpod}
_PRICE_KEY_FIELD = {"aws": "InstanceType", "gcp": "machineType"}
_MARKET_OF = {"aws": _market_aws, "gcp": _market_gcp}


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
            probs.add(f"{where}.labels", key, "missing", _did_you_mean(key, [k for k in labels]) if labels else None)
    market = labels.get(MARKET_LABEL)
    if market and market not in MARKETS:
        probs.add(f"{where}.labels", MARKET_LABEL, f"invalid value {market!r}", _did_you_mean(str(market), MARKETS)
                  or f"one of {list(MARKETS)}")
    nc = nt.get("node_config") or {}
    field = _PRICE_KEY_FIELD.get(prov)
    if field and labels.get(PRICE_LABEL) and nc.get(field) and labels[PRICE_LABEL] != nc[field]:
        probs.add(f"{where}.labels", PRICE_LABEL, f"is {labels[PRICE_LABEL]!r} but node_config.{field} is "
                  f"{nc[field]!r}", "the run would be priced as the wrong instance type")
    if prov in _MARKET_OF and market in MARKETS and market != _MARKET_OF[prov](nc):
        probs.add(f"{where}.labels", MARKET_LABEL, f"says {market} but node_config launches "
                  f"{_MARKET_OF[prov](nc)}", "spot and on-demand differ several-fold in price")


def _check_metadata(probs: ProblemList, cfg: dict) -> None:
    where = "metadata.s2v"
    meta = (cfg.get("metadata") or {}).get("s2v")
    if not isinstance(meta, dict):
        probs.add("metadata", "s2v", "missing; a cluster config says where its runs keep their state",
                  "metadata: {s2v: {work: s3://BUCKET/s2v-work}} (`s2v cluster init --bucket BUCKET` writes it)")
        return
    _unknown_keys(probs, where, meta, set(META_KEYS), why="not an s2v cluster setting")
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


def check_node_configs(cfg: dict[str, Any], allow_placeholders: bool = True) -> ProblemList:
    """Our checks of what Ray leaves free-form."""
    probs = ProblemList()
    prov = provider_of(cfg)
    check = _CHECKS.get(prov)
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
