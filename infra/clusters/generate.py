"""`s2v cluster init`: a config for the user's account from a template — bucket, region, zones, key, machine
types, images (AWS: resolved from their public SSM parameters), prices — validated before it is written."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import yaml

from core.errors import ConfigError
from infra.clusters.capacity import add_fallback_types, aws_offered, gcp_offered, record, resolve_zones
from infra.clusters.config import (
    HEAD, MARKET_LABEL, ONDEMAND, ONDEMAND_RESOURCE, PRICE_LABEL, SPOT, SPOT_RESOURCE, load_config, template_path,
    validate_cluster_config,
)

# GPUs per node → default machine type per market (≥ 80 GB per GPU: the 14B model needs it). GCP's A3 High with
# fewer than 8 GPUs is sold as Spot only, so its on-demand fallback is A2 Ultra (A100 80 GB).
DEFAULT_GPU_TYPE = {
    "aws": {"spot": {1: "p5.4xlarge", 8: "p5.48xlarge"}, "on-demand": {1: "p5.4xlarge", 8: "p5.48xlarge"}},
    "gcp": {"spot": {1: "a3-highgpu-1g", 2: "a3-highgpu-2g", 4: "a3-highgpu-4g", 8: "a3-highgpu-8g"},
            "on-demand": {1: "a2-ultragpu-1g", 2: "a2-ultragpu-2g", 4: "a2-ultragpu-4g", 8: "a3-highgpu-8g"}},
}
RUNPOD_DEFAULT_GPU = "NVIDIA H100 80GB HBM3"
# (vCPUs, GPUs) of the types `init` knows; Ray schedules by the resources we declare, so they must be right.
MACHINES = {
    "p5.4xlarge": (16, 1), "p5.48xlarge": (192, 8), "p4de.24xlarge": (96, 8),
    "g6e.xlarge": (4, 1), "g6e.12xlarge": (48, 4), "g6e.48xlarge": (192, 8),
    "a3-highgpu-1g": (26, 1), "a3-highgpu-2g": (52, 2), "a3-highgpu-4g": (104, 4), "a3-highgpu-8g": (208, 8),
    "a2-ultragpu-1g": (12, 1), "a2-ultragpu-2g": (24, 2), "a2-ultragpu-4g": (48, 4), "a2-ultragpu-8g": (96, 8),
}
SPOT_ONLY = re.compile(r"a3-highgpu-[124]g$")
# Public SSM parameters of the images (EC2 resolves `resolve:ssm:NAME` itself; `init` pins the current id).
SSM_PREFIX = "resolve:ssm:"
AWS_GPU_IMAGE_PARAM = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
AWS_HEAD_IMAGE_PARAM = "/aws/service/canonical/ubuntu/server/22.04/stable/current/amd64/hvm/ebs-gp2/ami-id"
AMI_ID = re.compile(r"ami-[0-9a-f]{8,17}$")


def price_key(provider: str, node_config: dict) -> str:
    """The s2v-price-key label of a node type: the instance/machine type (a RunPod GPU id as a label slug)."""
    if provider == "aws":
        return str(node_config["InstanceType"])
    if provider == "gcp":
        return str(node_config["machineType"])
    from infra.clusters.runpod.api import price_key as runpod_price_key

    return runpod_price_key(node_config)


def resolve_ssm_image(param: str, region: str) -> str:
    """The AMI id an SSM parameter holds now (boto3's credential chain; AWS_ENDPOINT_URL_SSM moves the endpoint)."""
    try:
        import boto3

        value = boto3.client("ssm", region_name=region).get_parameter(Name=param)["Parameter"]["Value"]
    except Exception as e:  # noqa: BLE001 — no credentials, no permission (ssm:GetParameter), no network
        raise ConfigError(f"cannot resolve the image from SSM parameter {param} in {region}: {e}",) from e
    if not AMI_ID.match(str(value)):
        raise ConfigError(f"SSM parameter {param} in {region} holds {value!r}, not an AMI id")
    return str(value)


def _work_uri(work: str | None, bucket: str | None, provider: str) -> str:
    if work:
        return work
    if bucket:
        scheme = "gs" if provider == "gcp" else "s3"
        name = re.sub(r"^(s3|gs)://", "", bucket).strip("/")
        return f"{scheme}://{name}/s2v-work"
    raise ConfigError("a cluster needs a work area in object storage: pass --bucket BUCKET (work area "
                      "s3://BUCKET/s2v-work, gs:// on GCP) or --work s3://BUCKET/PREFIX")


def _gpu_types(provider: str, settings, market: str) -> str:
    n = settings.cloud_gpu_count
    if settings.cloud_gpu_type and not (market == "on-demand" and SPOT_ONLY.match(settings.cloud_gpu_type)):
        return settings.cloud_gpu_type
    gtype = DEFAULT_GPU_TYPE[provider][market].get(n)
    if gtype is None:
        raise ConfigError(f"no default {provider} {market} machine type with {n} GPUs; pass --gpu-type")
    return gtype


def _resources(gtype: str, n: int) -> int:
    cpus, gpus = MACHINES.get(gtype, (8 * n, n))
    if gpus != n:
        raise ConfigError(f"{gtype} has {gpus} GPUs, not {n}; pass --gpus {gpus} or another --gpu-type")
    return cpus


def _set_zone(cfg: dict, zone: str) -> None:
    """GCP: the provider's zone and every zone-qualified disk type follow it."""
    cfg["provider"]["availability_zone"] = zone
    for nt in cfg["available_node_types"].values():
        for disk in nt["node_config"].get("disks", []):
            params = disk.get("initializeParams", {})
            if "diskType" in params:
                params["diskType"] = re.sub(r"^zones/[^/]+/", f"zones/{zone}/", params["diskType"])


def generate_config(settings, provider: str | None = None, *, work: str | None = None, bucket: str | None = None,
                    key_name: str | None = None, ssh_key: str | None = None, idle_stop_minutes: int | None = None,
                    resolve_images: bool = False, placeholders_ok: bool = False, input_buckets=(),
                    output_buckets=(), fallback_types=(), resolve_zones: bool = False, docker_image: str | None = None,
                    weights_snapshot: str | None = None) -> dict[str, Any]:
    """A config for `provider` (default settings.cloud_provider) with settings and these choices applied; a node
    image and a weights snapshot change how its nodes start (infra/clusters/coldstart.py)."""
    from infra.clusters.iam import INPUT_KEY, OUTPUT_KEY, bucket_name

    prov = provider or settings.cloud_provider
    cfg = load_config(template_path(prov))
    meta = cfg["metadata"]["s2v"]
    for key, names, flag in ((INPUT_KEY, input_buckets, "--input-bucket"), (OUTPUT_KEY, output_buckets,
                                                                             "--output-bucket")):
        if names:
            meta[key] = sorted({bucket_name(n, flag) for n in names})
    if work or bucket or not placeholders_ok:
        meta["work"] = _work_uri(work, bucket, prov)
    if settings.model_dir:
        meta["model_dir"] = settings.model_dir  # data for the nodes (node.json), never spliced into a command
    for key in ("s3_endpoint_url", "s3_region"):  # an R2/MinIO store: the nodes must speak to the same one
        if getattr(settings, key, None):
            meta[key] = getattr(settings, key)
    if idle_stop_minutes is not None:
        meta["idle_stop_minutes"] = idle_stop_minutes
    cfg["cluster_name"] = settings.cluster_name
    cfg["max_workers"] = settings.cloud_max_workers
    _place(cfg, prov, settings)
    types = cfg["available_node_types"]
    for name in (SPOT, ONDEMAND):
        _gpu_node_type(types[name], name, prov, settings)
    if not settings.spot:
        del types[SPOT]  # spot off: the on-demand type is the only GPU type
    if fallback_types:
        if prov == "runpod":
            raise ConfigError("--fallback-type is for aws and gcp; on RunPod pods fall back across data centres")
        add_fallback_types(cfg, prov, list(fallback_types), MACHINES, SPOT_ONLY)
    if resolve_zones and prov in ("aws", "gcp"):
        _offered_zones(cfg, prov, settings, list(fallback_types))
    for nt in types.values():
        nt["labels"][PRICE_LABEL] = price_key(prov, nt["node_config"])
    if prov == "aws":
        _aws_access(cfg, key_name, ssh_key)
        if resolve_images:
            _pin_aws_images(cfg)
    elif ssh_key:
        cfg["auth"]["ssh_private_key"] = ssh_key
    prices = {}
    for nt in types.values():
        k = nt["labels"][PRICE_LABEL]
        if k in settings.node_prices:
            prices[k] = settings.node_prices[k].model_dump()
    if prices:
        meta["prices"] = prices
    if docker_image:
        from infra.clusters.coldstart import use_image

        use_image(cfg, prov, docker_image)
    if weights_snapshot:
        from infra.clusters.coldstart import use_weights_snapshot

        use_weights_snapshot(cfg, prov, weights_snapshot, settings.model_dir)
    for k in [k for k, v in meta.items() if v is None]:
        del meta[k]
    validate_cluster_config(cfg, where=f"generated {prov} config", allow_placeholders=placeholders_ok)
    return cfg


def _place(cfg: dict, prov: str, settings) -> None:
    """Region, zones (GCP: the first one, and the rest for `up` to try), project or data center."""
    p, meta = cfg["provider"], cfg["metadata"]["s2v"]
    if prov == "aws":
        p["region"] = settings.cloud_region
        p["availability_zone"] = settings.cloud_zone or ",".join(f"{settings.cloud_region}{z}" for z in "abc")
    elif prov == "gcp":
        p["region"] = settings.cloud_region
        zones = [z.strip() for z in (settings.cloud_zone or "").split(",") if z.strip()] or \
            [f"{settings.cloud_region}-{z}" for z in ("a", "c")]
        meta["zones"] = zones
        _set_zone(cfg, zones[0])
        if settings.cloud_project:
            p["project_id"] = settings.cloud_project
            text = yaml.safe_dump(cfg["available_node_types"], sort_keys=False).replace("YOUR-PROJECT",
                                                                                     settings.cloud_project)
            cfg["available_node_types"] = yaml.safe_load(text)
    else:
        from infra.clusters.runpod.api import DATA_CENTER_RE

        # cloud_region defaults to an AWS region; only a RunPod data center id (EU-RO-1) pins one.
        region = settings.cloud_region or ""
        p["data_center_id"] = region if DATA_CENTER_RE.match(region) else "any"
        if settings.cloud_image:
            cfg["available_node_types"][HEAD]["node_config"]["image_name"] = settings.cloud_image


def _offered_zones(cfg: dict, prov: str, settings, fallback: list[str]) -> None:
    """Zones by where the types are offered (asked of the cloud now), and what was asked, into the config."""
    field = "InstanceType" if prov == "aws" else "machineType"
    types = sorted({nt["node_config"][field] for nt in cfg["available_node_types"].values()})
    region = cfg["provider"]["region"]
    offered = aws_offered(region, types) if prov == "aws" else gcp_offered(settings.cloud_project, region, types)
    asked = [z.strip() for z in (settings.cloud_zone or "").split(",") if z.strip()] or None
    zones = resolve_zones(cfg, prov, offered, asked)
    if prov == "aws":
        cfg["provider"]["availability_zone"] = ",".join(zones)
    else:
        cfg["metadata"]["s2v"]["zones"] = zones
        _set_zone(cfg, zones[0])
    record(cfg, prov, offered, zones, fallback)


def _gpu_node_type(nt: dict, name: str, prov: str, settings) -> None:
    """A GPU worker type (spot or on-demand): its size, its marker resource, its machine and image."""
    n = settings.cloud_gpu_count
    nt["max_workers"] = settings.cloud_max_workers
    nt["resources"]["GPU"] = n
    nt["resources"].pop(SPOT_RESOURCE, None)
    nt["resources"].pop(ONDEMAND_RESOURCE, None)
    nt["resources"][SPOT_RESOURCE if name == SPOT else ONDEMAND_RESOURCE] = n
    nc = nt["node_config"]
    if prov == "runpod":
        nc["gpu_type_id"] = settings.cloud_gpu_type or RUNPOD_DEFAULT_GPU
        nc["gpu_count"] = n
        if settings.cloud_image:
            nc["image_name"] = settings.cloud_image
        return
    gtype = _gpu_types(prov, settings, "spot" if name == SPOT else "on-demand")
    nt["resources"]["CPU"] = _resources(gtype, n)
    if prov == "aws":
        nc["InstanceType"] = gtype
        if settings.cloud_image:
            nc["ImageId"] = settings.cloud_image
    else:
        nc["machineType"] = gtype
        if settings.cloud_image:
            nc["disks"][0]["initializeParams"]["sourceImage"] = settings.cloud_image


def _aws_access(cfg: dict, key_name: str | None, ssh_key: str | None) -> None:
    if bool(key_name) != bool(ssh_key):
        raise ConfigError("--key-name and --ssh-key go together (the EC2 key pair and its private key file); "
                          "pass neither and Ray creates a key pair for the cluster")
    if key_name:
        cfg["auth"]["ssh_private_key"] = ssh_key
        for nt in cfg["available_node_types"].values():
            nt["node_config"]["KeyName"] = key_name


def _pin_aws_images(cfg: dict) -> None:
    region = cfg["provider"]["region"]
    resolved: dict[str, str] = {}
    for nt in cfg["available_node_types"].values():
        image = str(nt["node_config"].get("ImageId", ""))
        if image.startswith(SSM_PREFIX):
            param = image[len(SSM_PREFIX):]
            if param not in resolved:
                resolved[param] = resolve_ssm_image(param, region)
            nt["node_config"]["ImageId"] = resolved[param]
    if resolved:
        day = time.strftime("%Y-%m-%d", time.gmtime())
        cfg["metadata"]["s2v"]["image_source"] = "; ".join(f"{v} from {k} ({region}, {day})"
                                                           for k, v in resolved.items())


def dump_config(cfg: dict[str, Any], path: str | Path, provider: str) -> Path:
    head = (f"# Generated by `s2v cluster init {provider}`; edit freely, `s2v cluster up` re-validates.\n"
            "# docs/clusters.md explains each part; metadata.s2v holds what s2v itself reads.\n")
    out = Path(path)
    # 0600 from its first byte: it names keys, buckets and the account's layout (and Ray runs what it says)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(head + yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False, width=120))
    os.chmod(out, 0o600)  # an existing file (--force) keeps the mode it had unless set
    return out


__all__ = ["generate_config", "dump_config", "price_key", "resolve_ssm_image", "HEAD", "MARKET_LABEL"]
