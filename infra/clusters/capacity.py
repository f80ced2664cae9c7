"""Capacity that can really fall back, resolved at `s2v cluster init`: the zones where each instance type is offered
(EC2 DescribeInstanceTypeOfferings by availability zone, GCE machineTypes per zone), extra GPU node types for the
fallback types the user allows, and what was asked, written into metadata.s2v.capacity for the reports."""

from __future__ import annotations

import copy
import re
import time
from typing import Any

from core.errors import ConfigError
from infra.clusters.config import HEAD, ONDEMAND, ONDEMAND_RESOURCE, PRICE_LABEL, SPOT, SPOT_RESOURCE

TYPE_FIELD = {"aws": "InstanceType", "gcp": "machineType"}


def aws_offered(region: str, types: list[str], client=None) -> dict[str, list[str]]:
    """type → the availability zones of `region` that offer it (boto3's chain; AWS_ENDPOINT_URL_EC2 moves it)."""
    try:
        if client is None:
            import boto3

            client = boto3.client("ec2", region_name=region)
        pages = client.get_paginator("describe_instance_type_offerings").paginate(
            LocationType="availability-zone", Filters=[{"Name": "instance-type", "Values": sorted(set(types))}])
        rows = [o for page in pages for o in page["InstanceTypeOfferings"]]
    except Exception as e:  # noqa: BLE001 — no credentials, no ec2:DescribeInstanceTypeOfferings, no network
        raise ConfigError(f"cannot ask EC2 where {', '.join(sorted(set(types)))} are offered in {region} ({e}); "
                          "pass --zone ZONES, or --no-resolve-zones to keep the config's zones") from e
    out: dict[str, list[str]] = {t: [] for t in types}
    for o in rows:
        out.setdefault(o["InstanceType"], []).append(o["Location"])
    return {t: sorted(z) for t, z in out.items()}


def gcp_offered(project: str, region: str, types: list[str], session=None, base: str | None = None
                ) -> dict[str, list[str]]:
    """type → the zones of `region` whose machineTypes list it (GCE machineTypes.aggregatedList)."""
    import os

    from infra.clusters.clock_readers import GCP_COMPUTE, GCP_ENDPOINT_ENV, compute_get, compute_session

    base = base or os.environ.get(GCP_ENDPOINT_ENV) or GCP_COMPUTE
    expr = " OR ".join(f"(name = {t})" for t in sorted(set(types)))
    try:
        rows = compute_get(session or compute_session(base), base, f"projects/{project}/aggregated/machineTypes",
                           {"filter": expr})
    except Exception as e:  # noqa: BLE001 — a ClusterError from the API, no default credentials
        raise ConfigError(f"cannot ask Compute Engine where {', '.join(sorted(set(types)))} are offered in {region} "
                          f"({e}); pass --zone ZONES, or --no-resolve-zones to keep the config's zones") from e
    out: dict[str, set[str]] = {t: set() for t in types}
    for r in rows:
        zone = str(r.get("zone") or r["_scope"]).rsplit("/", 1)[-1]
        if zone.startswith(region + "-") and r.get("name") in out:
            out[r["name"]].add(zone)
    return {t: sorted(z) for t, z in out.items()}


def slug(t: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", t.lower()).strip("_")


def add_fallback_types(cfg: dict, prov: str, fallback: list[str], machines: dict, spot_only) -> list[str]:
    """A spot and an on-demand GPU node type per fallback type (the spot one only if spot is on; the on-demand one
    only where that type is sold on-demand), each a copy of the primary type with its machine, CPUs and GPUs."""
    types, field, added = cfg["available_node_types"], TYPE_FIELD[prov], []
    for t in fallback:
        if t not in machines:
            raise ConfigError(f"fallback type {t!r} is not one `s2v cluster init` knows (its vCPUs and GPUs must be "
                              f"declared right); known: {', '.join(sorted(machines))}")
        cpus, gpus = machines[t]
        for base, marker, drop in ((SPOT, SPOT_RESOURCE, SPOT not in types), (ONDEMAND, ONDEMAND_RESOURCE,
                                                                                 bool(spot_only.match(t)))):
            if drop:
                continue
            name = f"{base}_{slug(t)}"
            nt = copy.deepcopy(types[base])
            nt["node_config"][field] = t
            nt["resources"] = {"CPU": cpus, "GPU": gpus, marker: gpus}
            nt["labels"][PRICE_LABEL] = t
            nt["priority"] = int(nt.get("priority", 0)) - 1 - len(added)  # after the primary types, in given order
            types[name] = nt
            added.append(name)
    return added


def resolve_zones(cfg: dict, prov: str, offered: dict[str, list[str]], asked_zones: list[str] | None) -> list[str]:
    """Zones where the head's type and at least one GPU type are offered (those offering the most GPU types
    first), written as AWS's availability_zone list or GCP's metadata.s2v.zones; ConfigError when none."""
    types, field = cfg["available_node_types"], TYPE_FIELD[prov]
    head = types[HEAD]["node_config"][field]
    gpu = [nt["node_config"][field] for n, nt in types.items() if n != HEAD]
    zones = [z for z in offered.get(head, []) if not asked_zones or z in asked_zones]
    score = {z: sum(z in offered.get(g, []) for g in set(gpu)) for z in zones}
    zones = sorted((z for z in zones if score[z]), key=lambda z: (-score[z], z))
    if not zones:
        where = f"zones {', '.join(asked_zones)}" if asked_zones else cfg["provider"]["region"]
        raise ConfigError(f"no zone of {where} offers both the head's {head} and a GPU type ({', '.join(sorted(set(gpu)))}); "
                          f"offered: {offered}. Pick another --region, --gpu-type or --fallback-type")
    return zones


def record(cfg: dict, prov: str, offered: dict[str, list[str]], zones: list[str], fallback: list[str]) -> None:
    """metadata.s2v.capacity: what was asked (types by node type, fallback types, zones) and where each is offered."""
    types, field = cfg["available_node_types"], TYPE_FIELD[prov]
    cfg["metadata"]["s2v"]["capacity"] = {
        "asked": {n: {"type": nt["node_config"][field], "market": nt["labels"]["s2v-market"]}
                  for n, nt in types.items()},
        "fallback_types": list(fallback), "zones": zones, "offered": offered,
        "resolved": time.strftime("%Y-%m-%d", time.gmtime())}


def types_in_zone(cfg: dict, zone: str) -> None:
    """GCP keeps a cluster in one zone: drop the GPU node types not offered there (the autoscaler would try them in
    vain), as long as one GPU type is left."""
    cap = ((cfg.get("metadata") or {}).get("s2v") or {}).get("capacity") or {}
    offered: dict[str, Any] = cap.get("offered") or {}
    if not offered:
        return
    types = cfg["available_node_types"]
    gone = [n for n, nt in types.items() if n != cfg.get("head_node_type")
            and zone not in offered.get(str(nt.get("node_config", {}).get("machineType")), [zone])]
    if len(gone) < sum(1 for n in types if n != cfg.get("head_node_type")):
        for n in gone:
            del types[n]
