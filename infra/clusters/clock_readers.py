"""The three readers of the cloud's clock (infra/clusters/clock.py): EC2 DescribeInstances, GCE instances
aggregatedList, RunPod's pods query; each lists one cluster's instances by the tags/labels/env the launcher set."""

from __future__ import annotations

import os
import re
import time
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlparse

from core.errors import ClusterError, ConfigError
from infra.clusters.clock import AWS_ENDED, CLUSTER_TAG, GCP_ENDED, KIND_TAG, TYPE_TAG, Instance

# AWS writes the time of a user's stop or terminate into StateTransitionReason: "User initiated (2026-11-03
# 21:04:05 GMT)"; a spot interruption or a failed launch may carry no time (then the tracker's last read bounds it).
_AWS_REASON_TIME = re.compile(r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (?:GMT|UTC)\)")
GCP_COMPUTE = "https://compute.googleapis.com/compute/v1/"
GCP_ENDPOINT_ENV = "CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE"  # gcloud's own override of the Compute endpoint


def _ts(text: str | None) -> float | None:
    """An RFC 3339 time (GCE's creationTimestamp: 2026-11-03T13:04:05.123-08:00) as unix seconds."""
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class AwsClock:
    """EC2 DescribeInstances filtered by tag ray-cluster-name (boto3's credential chain; AWS_ENDPOINT_URL_EC2 moves
    the endpoint). EC2 lists terminated instances for about an hour after they end."""

    provider = "aws"

    def __init__(self, region: str, cluster_name: str, client=None) -> None:
        self.region, self.cluster_name, self._client = region, cluster_name, client

    def instances(self) -> list[Instance]:
        if self._client is None:
            import boto3

            self._client = boto3.client("ec2", region_name=self.region)
        try:
            pages = self._client.get_paginator("describe_instances").paginate(
                Filters=[{"Name": f"tag:{CLUSTER_TAG}", "Values": [self.cluster_name]}])
            found = [i for page in pages for r in page["Reservations"] for i in r["Instances"]]
        except Exception as e:  # noqa: BLE001 — botocore's errors: no credentials, AccessDenied, endpoint down
            raise ClusterError(f"cannot list the EC2 instances of cluster {self.cluster_name} in {self.region} "
                               f"(needs ec2:DescribeInstances): {e}") from e
        return [self._instance(i) for i in found]

    @staticmethod
    def _instance(i: dict) -> Instance:
        tags = {t["Key"]: t["Value"] for t in i.get("Tags") or []}
        state = i["State"]["Name"]
        end = None
        if state in AWS_ENDED:
            m = _AWS_REASON_TIME.search(i.get("StateTransitionReason") or "")
            if m:
                end = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
        return Instance(id=i["InstanceId"], node_type=tags.get(TYPE_TAG), instance_type=i["InstanceType"],
                        market="spot" if i.get("InstanceLifecycle") == "spot" else "on-demand",
                        zone=(i.get("Placement") or {}).get("AvailabilityZone"), launched=i["LaunchTime"].timestamp(),
                        terminated=end, state=state, head=tags.get(KIND_TAG) == "head",
                        end_source="provider" if end is not None else None)


def compute_session(base: str):
    """(session, base URL) for the Compute API: Google's default credentials, or none for a loopback endpoint that
    gcloud's override names (a test's fake; credentials are never sent there)."""
    import requests

    if urlparse(base).hostname in ("127.0.0.1", "localhost", "::1"):
        return requests.Session()
    import google.auth
    from google.auth.transport.requests import AuthorizedSession

    creds, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/compute.readonly"])
    return AuthorizedSession(creds)


def compute_get(session, base: str, path: str, params: dict | None = None) -> list[dict]:
    """Every page of a Compute aggregatedList: the items of each scope (zone) together."""
    url, params, out = base.rstrip("/") + "/" + path, dict(params or {}), []
    while True:
        r = session.get(url, params=params, timeout=30)
        if r.status_code != 200:
            raise ClusterError(f"Compute API {path}: HTTP {r.status_code}: {r.text[:300]}")
        doc = r.json()
        for scope, items in (doc.get("items") or {}).items():
            for key, values in items.items():
                if isinstance(values, list):
                    out += [dict(v, _scope=scope) for v in values]
        if not doc.get("nextPageToken"):
            return out
        params["pageToken"] = doc["nextPageToken"]


class GcpClock:
    """GCE instances.aggregatedList filtered by label ray-cluster-name: creationTimestamp, and lastStopTimestamp
    once stopped. A deleted instance (spot preemption with DELETE, the autoscaler's scale-down) vanishes from the
    list: the tracker ends it at its last sighting."""

    provider = "gcp"

    def __init__(self, project: str, cluster_name: str, region: str | None = None, session=None,
                 base: str | None = None) -> None:
        self.project, self.cluster_name, self.region = project, cluster_name, region
        self.base = base or os.environ.get(GCP_ENDPOINT_ENV) or GCP_COMPUTE
        self._session = session

    def instances(self) -> list[Instance]:
        try:
            self._session = self._session or compute_session(self.base)
            found = compute_get(self._session, self.base, f"projects/{self.project}/aggregated/instances",
                                {"filter": f"labels.{CLUSTER_TAG} = {self.cluster_name}"})
        except ClusterError:
            raise
        except Exception as e:  # noqa: BLE001 — no default credentials, a refused connection
            raise ClusterError(f"cannot list the GCE instances of cluster {self.cluster_name} in project "
                               f"{self.project} (needs compute.instances.list): {e}") from e
        return [self._instance(i) for i in found]

    @staticmethod
    def _instance(i: dict) -> Instance:
        labels, status = i.get("labels") or {}, i.get("status", "")
        sch = i.get("scheduling") or {}
        spot = sch.get("provisioningModel") == "SPOT" or sch.get("preemptible") is True
        end = _ts(i.get("lastStopTimestamp")) if status in GCP_ENDED else None
        return Instance(id=str(i.get("id") or i["name"]), node_type=labels.get(TYPE_TAG),
                        instance_type=str(i.get("machineType", "")).rsplit("/", 1)[-1],
                        market="spot" if spot else "on-demand", zone=str(i.get("zone", "")).rsplit("/", 1)[-1] or None,
                        launched=_ts(i["creationTimestamp"]), terminated=end, state=status,
                        head=labels.get(KIND_TAG) == "head", end_source="provider" if end is not None else None)


# The pods query: the SDK's own fields (runpod/api/queries/pods.py), which RunPod's API has answered for years.
RUNPOD_PODS = ("query myPods { myself { pods { id name desiredStatus costPerHr env podType uptimeSeconds gpuCount "
               "machine { gpuDisplayName } } } }")


class RunPodClock:
    """RunPod's pods of this cluster (by the S2V_RAY_CLUSTER env our provider gives each pod): launched at the
    S2V_CREATED_AT the provider recorded (else now − uptimeSeconds), priced at RunPod's own costPerHr. A
    terminated pod vanishes from the list: the tracker ends it at its last sighting."""

    provider = "runpod"

    def __init__(self, provider_config: dict[str, Any], cluster_name: str) -> None:
        self.provider_config, self.cluster_name = provider_config, cluster_name

    def instances(self) -> list[Instance]:
        import runpod

        from infra.clusters.runpod.api import load_api_key, run_query
        from infra.clusters.runpod.provider import CLUSTER_ENV, CREATED_ENV, DATA_CENTER_ENV, pod_env, pod_labels

        runpod.api_key = load_api_key(self.provider_config, self.cluster_name)
        try:
            pods = ((run_query(RUNPOD_PODS).get("myself") or {}).get("pods")) or []
        except Exception as e:  # noqa: BLE001 — a QueryError, or the retries ran out
            raise ClusterError(f"cannot list the RunPod pods of cluster {self.cluster_name}: {e}") from e
        now, out = time.time(), []
        for pod in pods:
            env = pod_env(pod)
            if env.get(CLUSTER_ENV) != self.cluster_name:
                continue
            labels, tags = pod_labels(env)
            try:
                launched = float(env[CREATED_ENV])
            except (KeyError, ValueError):
                launched = now - float(pod.get("uptimeSeconds") or 0)
            gone = pod.get("desiredStatus") == "TERMINATED"
            out.append(Instance(
                id=pod["id"], node_type=tags.get(TYPE_TAG), instance_type=labels.get("s2v-price-key", "?"),
                market="spot" if pod.get("podType") == "INTERRUPTABLE" else "on-demand", zone=env.get(DATA_CENTER_ENV),
                launched=launched, terminated=None, state="terminated" if gone else str(pod.get("desiredStatus")),
                head=tags.get(KIND_TAG) == "head",
                usd_per_hour=float(pod["costPerHr"]) if pod.get("costPerHr") not in (None, "") else None))
        return out


def clock_for(cfg: dict[str, Any]):
    """The reader for a cluster config's provider (its region/project/zones, its cluster name)."""
    from infra.clusters.config import provider_of

    prov, name, p = provider_of(cfg), str(cfg["cluster_name"]), cfg.get("provider") or {}
    if prov == "aws":
        return AwsClock(p["region"], name)
    if prov == "gcp":
        return GcpClock(p["project_id"], name, p.get("region"))
    if prov == "runpod":
        return RunPodClock(p, name)
    raise ConfigError(f"no cost clock for provider {prov!r}; expected aws, gcp or runpod")
