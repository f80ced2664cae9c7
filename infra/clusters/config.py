"""Cluster configs: generate from settings (templates + overrides), validate with Ray's schema and our own node_config checks."""

from __future__ import annotations

import copy
import difflib
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

# provider → GPUs per node → default instance/machine/GPU type (≥ 80 GB per GPU: the 14B model needs it).
DEFAULT_GPU_TYPE = {
    "aws": {1: "p5.4xlarge", 8: "p5.48xlarge"},
    "gcp": {1: "a3-highgpu-1g", 2: "a3-highgpu-2g", 4: "a3-highgpu-4g", 8: "a3-highgpu-8g"},
    "runpod": {},  # RunPod takes gpu_count separately
}
RUNPOD_DEFAULT_GPU = "NVIDIA H100 80GB HBM3"

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


def _did_you_mean(word: str, choices: set[str] | list[str]) -> str | None:
    lower = {c.lower(): c for c in choices}
    if word.lower() in lower:
        return f"did you mean '{lower[word.lower()]}'? (keys are case-sensitive)"
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def _unknown_keys(probs: ProblemList, where: str, got: dict, allowed: set[str]) -> None:
    for k in got:
        if k not in allowed:
            probs.add(where, str(k), "unknown key (Ray does not check node_config)", _did_you_mean(str(k), allowed))


def _check_aws(probs: ProblemList, where: str, nc: dict, cfg: dict) -> None:
    _unknown_keys(probs, where, nc, AWS_KEYS)
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


def _check_gcp(probs: ProblemList, where: str, nc: dict, cfg: dict) -> None:
    _unknown_keys(probs, where, nc, GCP_KEYS)
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


def _check_runpod(probs: ProblemList, where: str, nc: dict, cfg: dict) -> None:
    import re

    from infra.runpod_api import DATA_CENTER_RE, SECRET_ENV_RE

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
        if dc is not None and dc != "any" and not DATA_CENTER_RE.match(str(dc)):
            probs.add(w, "data_center_id", f"invalid RunPod data center {dc!r}", "like EU-RO-1, or 'any'")
    head = cfg.get("head_node_type")
    if gpu and where == f"available_node_types.{head}.node_config":
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


def check_node_configs(cfg: dict[str, Any]) -> ProblemList:
    """Our checks of what Ray leaves free-form: node_config keys and values, spot pitfalls."""
    probs = ProblemList()
    prov = provider_of(cfg)
    check = _CHECKS.get(prov)
    types = cfg.get("available_node_types") or {}
    for name, nt in types.items():
        nc = (nt or {}).get("node_config")
        if check is not None and isinstance(nc, dict):
            check(probs, f"available_node_types.{name}.node_config", nc, cfg)
    gpu_types = [n for n, nt in types.items() if (nt or {}).get("resources", {}).get("GPU", 0) > 0]
    if types and not gpu_types:
        probs.add("available_node_types", None, "no node type offers a GPU", "the render actors need GPU nodes")
    # Deduplicate: the cache_stopped_nodes problem is found once per spot type.
    seen, unique = set(), ProblemList()
    for p in probs.items:
        if (p.where, p.field, p.reason) not in seen:
            seen.add((p.where, p.field, p.reason))
            unique.items.append(p)
    return unique


def validate_cluster_config(cfg: dict[str, Any], where: str = "cluster config") -> dict[str, Any]:
    """Ray's prepare_config + validate_config, then ours; returns the prepared config or raises ConfigError."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    probs = check_node_configs(cfg)
    try:
        prepared = prepare_config(copy.deepcopy(cfg))
        validate_config(prepared)
    except Exception as e:  # noqa: BLE001 — jsonschema, ValueError, import errors of external providers
        probs.add(where, None, f"Ray rejects it: {str(e).splitlines()[0]}")
        prepared = None
    if probs:
        raise ConfigError(f"{where} is invalid", probs.items)
    return prepared


def generate_config(settings, provider: str | None = None) -> dict[str, Any]:
    """A config for `provider` (default settings.cloud_provider) with settings applied to the template."""
    prov = provider or settings.cloud_provider
    cfg = load_config(template_path(prov))
    cfg["cluster_name"] = settings.cluster_name
    cfg["max_workers"] = settings.cloud_max_workers
    n = settings.cloud_gpu_count
    p = cfg["provider"]
    if prov == "aws":
        p["region"] = settings.cloud_region
        p["availability_zone"] = settings.cloud_zone or ",".join(f"{settings.cloud_region}{z}" for z in "abc")
    elif prov == "gcp":
        p["region"] = settings.cloud_region
        p["availability_zone"] = settings.cloud_zone or f"{settings.cloud_region}-a"
        p["project_id"] = settings.cloud_project or p["project_id"]
    else:
        from infra.runpod_api import DATA_CENTER_RE

        # cloud_region defaults to an AWS region; only a RunPod data center id (EU-RO-1) pins one.
        region = settings.cloud_region or ""
        p["data_center_id"] = region if DATA_CENTER_RE.match(region) else "any"
        if settings.cloud_image:
            cfg["available_node_types"][HEAD]["node_config"]["image_name"] = settings.cloud_image
    types = cfg["available_node_types"]
    for name in (SPOT, ONDEMAND):
        nt = types[name]
        nt["max_workers"] = settings.cloud_max_workers
        nt["resources"]["GPU"] = n
        nt["resources"][SPOT_RESOURCE if name == SPOT else ONDEMAND_RESOURCE] = n
        nc = nt["node_config"]
        if prov == "runpod":
            nc["gpu_type_id"] = settings.cloud_gpu_type or RUNPOD_DEFAULT_GPU
            nc["gpu_count"] = n
            if settings.cloud_image:
                nc["image_name"] = settings.cloud_image
            continue
        gtype = settings.cloud_gpu_type or DEFAULT_GPU_TYPE[prov].get(n)
        if gtype is None:
            raise ConfigError(f"no default {prov} machine type with {n} GPUs; set cloud_gpu_type")
        if prov == "aws":
            nc["InstanceType"] = gtype
            if settings.cloud_image:
                nc["ImageId"] = settings.cloud_image
        else:
            nc["machineType"] = gtype
            if settings.cloud_image:
                nc["disks"][0]["initializeParams"]["sourceImage"] = settings.cloud_image
    if not settings.spot:
        # Spot off: the spot type disappears and the on-demand type is the only GPU type.
        del types[SPOT]
    if settings.model_dir:
        # Weights are synced once per node at setup; the render actors read S2V_MODEL_DIR.
        local = "~/s2v-models"
        sync = (f"aws s3 sync {settings.model_dir} {local}" if settings.model_dir.startswith("s3://") else
                f"gcloud storage rsync -r {settings.model_dir} {local}" if settings.model_dir.startswith("gs://")
                else f"test -d {settings.model_dir}")
        cfg["worker_setup_commands"] = [f"mkdir -p {local} && {sync}"]
        target = local if "://" in settings.model_dir else settings.model_dir
        cfg["setup_commands"] = list(cfg["setup_commands"]) + [
            f"grep -q S2V_MODEL_DIR ~/.bashrc || echo 'export S2V_MODEL_DIR={target}' >> ~/.bashrc"
        ]
    validate_cluster_config(cfg, where=f"generated {prov} config")
    return cfg


def dump_config(cfg: dict[str, Any], path: str | Path, provider: str) -> Path:
    head = f"# Generated by `s2v cluster init --provider {provider}`; edit freely, `s2v cluster up` re-validates.\n"
    out = Path(path)
    out.write_text(head + yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False))
    return out
