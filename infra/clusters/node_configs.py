"""What each provider's node_config may hold (Ray passes it through unchecked): known keys with did-you-mean,
market options, the worker credentials every GPU type needs, RunPod's fields."""

from __future__ import annotations

import difflib
import re

from core.errors import ProblemList

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


def did_you_mean(word: str, choices) -> str | None:
    lower = {str(c).lower(): c for c in choices}
    if word.lower() in lower:
        return f"did you mean '{lower[word.lower()]}'? (keys are case-sensitive)"
    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def unknown_keys(probs: ProblemList, where: str, got: dict, allowed,
                  why: str = "Ray does not check node_config") -> None:
    for k in got:
        if k not in allowed:
            probs.add(where, str(k), f"unknown key ({why})", did_you_mean(str(k), allowed))


def _market_aws(nc: dict) -> str:
    imo = nc.get("InstanceMarketOptions")
    return "spot" if isinstance(imo, dict) and imo.get("MarketType") == "spot" else "on-demand"


def _market_gcp(nc: dict) -> str:
    sch = nc.get("scheduling")
    spot = isinstance(sch, dict) and (sch.get("provisioningModel") == "SPOT" or sch.get("preemptible") is True)
    return "spot" if spot else "on-demand"


def _check_aws(probs: ProblemList, where: str, nc: dict, cfg: dict, is_head: bool) -> None:
    unknown_keys(probs, where, nc, AWS_KEYS)
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
    unknown_keys(probs, f"{where}.InstanceMarketOptions", imo, AWS_MARKET_KEYS)
    mt = imo.get("MarketType")
    if mt is not None and mt not in AWS_MARKET_TYPES:
        probs.add(f"{where}.InstanceMarketOptions", "MarketType", f"invalid value {mt!r}",
                  did_you_mean(str(mt), AWS_MARKET_TYPES) or f"one of {sorted(AWS_MARKET_TYPES)}")
    so = imo.get("SpotOptions")
    if isinstance(so, dict):
        unknown_keys(probs, f"{where}.InstanceMarketOptions.SpotOptions", so, AWS_SPOT_KEYS)
    if mt == "spot" and cfg.get("provider", {}).get("cache_stopped_nodes", True) is not False:
        probs.add("provider", "cache_stopped_nodes", "must be false when a node type uses spot",
                  "spot instances cannot be stopped and restarted by the launcher")


def _check_gcp(probs: ProblemList, where: str, nc: dict, cfg: dict, is_head: bool) -> None:
    unknown_keys(probs, where, nc, GCP_KEYS)
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
    unknown_keys(probs, f"{where}.scheduling", sch, set(GCP_SCHEDULING))
    for k, allowed in GCP_SCHEDULING.items():
        if allowed is not None and k in sch and sch[k] not in allowed:
            probs.add(f"{where}.scheduling", k, f"invalid value {sch[k]!r}",
                      did_you_mean(str(sch[k]), {str(a) for a in allowed}) or f"one of {sorted(map(str, allowed))}")
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

    unknown_keys(probs, where, nc, RUNPOD_KEYS)
    ct = nc.get("cloud_type", "ALL")
    if ct not in RUNPOD_CLOUD_TYPES:
        probs.add(where, "cloud_type", f"invalid value {ct!r}", did_you_mean(str(ct), RUNPOD_CLOUD_TYPES))
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


NODE_CONFIG_CHECKS = {"aws": _check_aws, "gcp": _check_gcp, "runpod": _check_runpod}
PRICE_KEY_FIELD = {"aws": "InstanceType", "gcp": "machineType"}
MARKET_OF = {"aws": _market_aws, "gcp": _market_gcp}
