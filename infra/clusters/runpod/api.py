"""RunPod's GraphQL API as our provider uses it: escaped mutations, bids, price keys, the API key file, calls."""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from pathlib import Path
from typing import Any

from ray.autoscaler.node_launch_exception import NodeLaunchException

from core.errors import ClusterError, ConfigError, TransientError
from core.retry import retrying

log = logging.getLogger("s2v.runpod")

# Ray node labels every pod carries, set from what was actually launched (a refused spot bid becomes on-demand).
PRICE_KEY_LABEL, MARKET_LABEL = "s2v-price-key", "s2v-market"
SPOT, ON_DEMAND = "spot", "on-demand"
LABELS_ENV = "S2V_RAY_LABELS"  # pod env → merged into RAY_OVERRIDE_LABELS by the pod's `ray start` command

# What may reach RunPod's GraphQL unquoted is checked against these; every string goes through gql_str.
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_PORTS_RE = re.compile(r"^(\d{1,5}/(tcp|http))(,\d{1,5}/(tcp|http))*$")
_CUDA_RE = re.compile(r"^\d{1,2}\.\d{1,2}$")
DATA_CENTER_RE = re.compile(r"^[A-Z]{2,3}-[A-Z]{2,3}-\d{1,2}$")  # EU-RO-1, US-TX-3, EUR-IS-2
# Pod env is readable by anyone who can list the account's pods (and is echoed in error messages).
SECRET_ENV_RE = re.compile(r"API_?KEY|SECRET|PASSWORD|TOKEN|ACCESS_KEY|CREDENTIAL", re.I)
CLOUD_TYPES = {"ALL", "COMMUNITY", "SECURE"}
CPU_TEMPLATE = "runpod-ubuntu"  # what the SDK's create_pod sends for a CPU pod without a template


class PodLaunchError(ClusterError, NodeLaunchException):
    """RunPod created no pod: a ClusterError for s2v, a NodeLaunchException so Ray's autoscaler backs off the type."""

    def __init__(self, category: str, description: str, src_exc_info: Any = None) -> None:
        NodeLaunchException.__init__(self, category, description, src_exc_info)


class Refused(Exception):
    """RunPod answered a mutation with an error: nothing was created."""


class BadRequest(Refused):
    """RunPod's GraphQL rejected the mutation itself (a field or argument its schema does not have, a value of the
    wrong type): the same request fails on-demand too, so it fails loudly instead of buying on-demand."""


# graphql-js's validation messages (what RunPod's API answers for a mutation its schema rejects), and its
# "try again" answers for a server-side failure; anything else is RunPod saying no to this pod (capacity, bid).
_SCHEMA_ERROR_RE = re.compile(
    r"Cannot query field|Unknown argument|is not defined by type|Unknown type|Expected (value of )?type|"
    r"got invalid value|Syntax Error|required, but it was not provided|GRAPHQL_(VALIDATION_FAILED|PARSE_FAILED)", re.I)
_TRANSIENT_ERROR_RE = re.compile(r"internal server error|something went wrong|try again later|timed? ?out|"
                                 r"service unavailable|bad gateway", re.I)


def classify(message: str) -> Exception:
    """A deploy's GraphQL error as what it means for the launch: BadRequest (fix the config or s2v; never fall
    back), TransientError (the pod may exist: look it up, never resend) or Refused (no pod: fall back)."""
    if re.search(r'Cannot query field "podRentInterruptable"', message):
        # the mutation itself is gone: RunPod retired interruptible pods, so there is no spot to ask for
        return Refused(f"RunPod no longer offers interruptible pods ({message})")
    if _SCHEMA_ERROR_RE.search(message):
        return BadRequest(message)
    if _TRANSIENT_ERROR_RE.search(message):
        return TransientError(f"RunPod API: {message}")
    return Refused(message)


def gql_str(value: Any) -> str:
    """A GraphQL string literal (JSON string escaping is valid GraphQL): quotes and backslashes cannot escape it."""
    return json.dumps(str(value))


def check_id(value: str, what: str = "pod id") -> str:
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise ConfigError(f"invalid RunPod {what} {value!r}")
    return value


def is_gpu(nc: dict[str, Any]) -> bool:
    return bool(nc.get("gpu_type_id"))


def gpu_slug(gpu_type_id: str) -> str:
    s = re.sub(r"^nvidia\s+", "", str(gpu_type_id).strip().lower())
    return re.sub(r"[^a-z0-9]+", "-", s).strip("-")


def price_key(nc: dict[str, Any]) -> str:
    """The key of core.settings' node_prices for one pod of this node_config: runpod-<gpu>-x<count>."""
    if is_gpu(nc):
        return f"runpod-{gpu_slug(nc['gpu_type_id'])}-x{int(nc.get('gpu_count', 1))}"
    return f"runpod-cpu-{gpu_slug(nc.get('instance_id') or 'default')}"


def global_hostname(pod_id: str) -> str:
    """The pod's name on RunPod's global network; it resolves only inside RunPod."""
    return f"{check_id(pod_id)}.runpod.internal"


# ---- calls --------------------------------------------------------------------------------------------
def _once(fn, *a, **kw):
    import requests

    try:
        return fn(*a, **kw)
    except requests.RequestException as e:
        raise TransientError(f"RunPod API: {e}") from e
    except ValueError as e:  # the SDK's response.json() on a 5xx HTML page
        raise TransientError(f"RunPod API answered garbage: {e}") from e


def call(fn, *a, **kw):
    """An idempotent SDK call (a read, a terminate) under the cloud_api retry policy."""
    return retrying("cloud_api")(_once, fn, *a, **kw)


def call_once(fn, *a, **kw):
    """A call that must never be resent blindly (a create): transient failures surface as TransientError."""
    return _once(fn, *a, **kw)


def run_query(query: str) -> dict:
    from runpod.api.graphql import run_graphql_query

    return call(run_graphql_query, query)["data"]


# ---- mutations ------------------------------------------------------------------------------------------
def _common_fields(name: str, nc: dict[str, Any], env: dict[str, str]) -> list[str]:
    fields = [f"name: {gql_str(name)}", f"imageName: {gql_str(nc['image_name'])}"]
    ct = nc.get("cloud_type", "ALL")
    if ct not in CLOUD_TYPES:
        raise ConfigError(f"cloud_type must be one of {sorted(CLOUD_TYPES)}, got {ct!r}")
    fields += [f"cloudType: {ct}", "startSsh: true"]
    if nc.get("container_disk_in_gb") is not None:
        fields.append(f"containerDiskInGb: {int(nc['container_disk_in_gb'])}")
    for key, gql in (("volume_mount_path", "volumeMountPath"), ("network_volume_id", "networkVolumeId"),
                     ("country_code", "countryCode")):
        if nc.get(key):
            fields.append(f"{gql}: {gql_str(nc[key])}")
    dc = nc.get("data_center_id")
    if dc and dc != "any":
        fields.append(f"dataCenterId: {gql_str(dc)}")
    ports = str(nc.get("ports", "22/tcp")).replace(" ", "")
    if not _PORTS_RE.fullmatch(ports):
        raise ConfigError(f"invalid RunPod ports {ports!r}; expected like '22/tcp,8265/http'")
    fields.append(f"ports: {gql_str(ports)}")
    if nc.get("docker_args") is not None:
        fields.append(f"dockerArgs: {gql_str(nc['docker_args'])}")
    items = []
    for k, v in env.items():
        if not _ENV_KEY_RE.fullmatch(str(k)):
            raise ConfigError(f"invalid environment variable name {k!r} for a RunPod pod")
        items.append(f"{{ key: {gql_str(k)}, value: {gql_str(v)} }}")
    fields.append(f"env: [{', '.join(items)}]")
    return fields


def cuda_versions(nc: dict[str, Any]) -> list[str]:
    versions = nc.get("allowed_cuda_versions") or []
    if isinstance(versions, str) or not all(isinstance(v, str) and _CUDA_RE.fullmatch(v) for v in versions):
        raise ConfigError(f"allowed_cuda_versions must be a list like ['13.0', '13.1'], got {versions!r}")
    return list(versions)


def deploy_mutation(name: str, nc: dict[str, Any], env: dict[str, str], *, interruptible: bool,
                    global_network: bool, bid_per_gpu: float | None = None) -> tuple[str, str]:
    """(operation, mutation): podRentInterruptable / podFindAndDeployOnDemand for GPU pods, deployCpuPod for CPU."""
    fields = _common_fields(name, nc, env)
    if not is_gpu(nc):
        if global_network:
            raise ConfigError("RunPod offers global networking on NVIDIA GPU pods only; a CPU pod cannot join it")
        if interruptible:
            raise ConfigError("RunPod has no interruptible CPU pods")
        if nc.get("instance_id"):
            fields.append(f"instanceId: {gql_str(check_id(nc['instance_id'], 'CPU instance id'))}")
        fields.append(f"templateId: {gql_str(nc.get('template_id') or CPU_TEMPLATE)}")
        op = "deployCpuPod"
    else:
        fields += [f"gpuTypeId: {gql_str(nc['gpu_type_id'])}", f"gpuCount: {int(nc.get('gpu_count', 1))}",
                   f"supportPublicIp: {'true' if nc.get('support_public_ip', True) else 'false'}"]
        for key, gql in (("volume_in_gb", "volumeInGb"), ("min_vcpu_count", "minVcpuCount"),
                         ("min_memory_in_gb", "minMemoryInGb")):
            if nc.get(key) is not None:
                fields.append(f"{gql}: {int(nc[key])}")
        if nc.get("template_id"):
            fields.append(f"templateId: {gql_str(nc['template_id'])}")
        versions = cuda_versions(nc)
        if versions:
            fields.append(f"allowedCudaVersions: [{', '.join(gql_str(v) for v in versions)}]")
        if global_network:
            fields.append("globalNetwork: true")
        if interruptible:
            if bid_per_gpu is None or not float(bid_per_gpu) > 0:
                raise ConfigError(f"a RunPod spot bid must be a positive USD/GPU-hour, got {bid_per_gpu!r}")
            fields.append(f"bidPerGpu: {float(bid_per_gpu):.4f}")
            op = "podRentInterruptable"
        else:
            op = "podFindAndDeployOnDemand"
    return op, f"mutation {{ {op}(input: {{ {', '.join(fields)} }}) {{ id imageName machineId }} }}"


def deploy(op: str, mutation: str) -> dict:
    """One create, never resent: Refused when RunPod says no (BadRequest when it rejects the request itself),
    TransientError when we cannot know."""
    from runpod.api.graphql import run_graphql_query
    from runpod.error import QueryError

    try:
        return call_once(run_graphql_query, mutation)["data"][op]
    except QueryError as e:
        raise classify(str(e)) from e


# ---- data centres ---------------------------------------------------------------------------------------
# The SDK has no data-centre query; `dataCenters { id name globalNetwork }` follows RunPod's GraphQL schema as
# runpodctl and the console use it (not reachable from here: a schema that lacks the field fails loudly below).
DATA_CENTERS_QUERY = "query dataCenters { dataCenters { id name globalNetwork } }"


def global_network_data_centers() -> list[str]:
    """Ids of the data centres that offer global networking, in RunPod's order; ConfigError when RunPod cannot say."""
    from runpod.error import QueryError

    try:
        rows = run_query(DATA_CENTERS_QUERY).get("dataCenters") or []
    except QueryError as e:
        raise ConfigError(f"RunPod did not list its data centres with their global-networking flag ({e}); set "
                          "provider.data_center_id to one that offers global networking (docs.runpod.io/pods/"
                          "networking), e.g. EU-RO-1") from e
    ids = [str(r["id"]) for r in rows if r.get("globalNetwork") and DATA_CENTER_RE.fullmatch(str(r.get("id", "")))]
    if not ids:
        raise ConfigError("RunPod lists no data centre with global networking; set provider.data_center_id, or "
                          "global_networking: false for a single pod")
    return ids


# ---- spot bids --------------------------------------------------------------------------------------------
def current_min_bid(nc: dict[str, Any]) -> float | None:
    """RunPod's current minimum spot bid per GPU for this GPU type, count and cloud (None if it quotes none)."""
    ct = nc.get("cloud_type", "ALL")
    secure = {"SECURE": ", secureCloud: true", "COMMUNITY": ", secureCloud: false"}.get(ct, "")
    q = (f"query {{ gpuTypes(input: {{id: {gql_str(nc['gpu_type_id'])}}}) {{ id secureSpotPrice communitySpotPrice "
         f"lowestPrice(input: {{gpuCount: {int(nc.get('gpu_count', 1))}{secure}}}) "
         f"{{ minimumBidPrice uninterruptablePrice }} }} }}")
    types = run_query(q).get("gpuTypes") or []
    if not types:
        raise ConfigError(f"RunPod knows no GPU type {nc['gpu_type_id']!r}")
    t = types[0]
    for price in ((t.get("lowestPrice") or {}).get("minimumBidPrice"),
                  t.get("communitySpotPrice") if ct == "COMMUNITY" else t.get("secureSpotPrice")):
        if price and float(price) > 0:
            return float(price)
    return None


# ---- the API key: a head-only 0600 file, never pod env, config or logs ---------------------------------------
def default_key_file(cluster_name: str) -> str:
    return f"~/.s2v/runpod/{re.sub(r'[^A-Za-z0-9_.-]', '_', cluster_name)}.api_key"


def on_runpod() -> bool:
    """Inside a RunPod pod (where RUNPOD_API_KEY, if any, is RunPod's pod-scoped key, not the account's)."""
    from infra.clusters.runpod.node import pod_env

    return bool(os.environ.get("RUNPOD_POD_ID") or pod_env().get("RUNPOD_POD_ID"))


def _write_secret(path: Path, key: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.is_file() and path.read_text().strip() == key:
        return
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    os.replace(tmp, path)


def load_api_key(provider_config: dict[str, Any], cluster_name: str) -> str:
    """The account key: from the env var on the user's machine (staged to the key file for the head), else the file."""
    path = Path(provider_config.get("api_key_file") or default_key_file(cluster_name)).expanduser()
    env_name = provider_config.get("api_key_env", "RUNPOD_API_KEY")
    key = None if on_runpod() else os.environ.get(env_name, "").strip()
    if key:
        _write_secret(path, key)
        return key
    if path.is_file():
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("RunPod API key file %s was readable by others; restricting it to its owner", path)
            path.chmod(0o600)
        key = path.read_text().strip()
        if key:
            return key
    where = ("on a RunPod pod the account key comes only from this file, which `s2v cluster up` mounts on the head "
             "(the pod's own RUNPOD_API_KEY is scoped to that pod)" if on_runpod()
             else f"export {env_name} (a RunPod API key with GraphQL read/write) before `s2v cluster up`")
    raise ClusterError(f"no RunPod API key: {env_name} is not set and {path} is missing — {where}")
