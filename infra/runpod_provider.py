"""Ray external NodeProvider for RunPod pods (provider: {type: external, module: infra.runpod_provider.RunPodNodeProvider})."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from base64 import urlsafe_b64decode, urlsafe_b64encode
from pathlib import Path
from typing import Any

from ray.autoscaler.node_provider import NodeProvider

from core.errors import ClusterError, ConfigError, TransientError
from core.retry import retrying

log = logging.getLogger("s2v.runpod")

# What may reach the SDK's f-string GraphQL unescaped: ids and enum-like values are checked against these.
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_PORTS_RE = re.compile(r"^(\d{1,5}/(tcp|http))(,\d{1,5}/(tcp|http))*$")
CLOUD_TYPES = {"ALL", "COMMUNITY", "SECURE"}
TAGS_ENV = "S2V_RAY_TAGS"  # initial Ray tags ride in the pod's env (RunPod has no mutable labels)
CLUSTER_ENV = "S2V_RAY_CLUSTER"
LIVE = {"RUNNING", "CREATED", "RESTARTING"}  # desiredStatus values of a pod that still costs money
# Docker delivers SIGTERM to PID 1 only; this entrypoint leaves a flag the preemption watcher reads.
SIGTERM_ENTRYPOINT = (
    "bash -c 'trap \"touch /tmp/s2v-sigterm\" TERM; "
    "(test -x /start.sh && /start.sh || (service ssh start || /usr/sbin/sshd)) & wait; sleep infinity & wait'"
)


def gql_str(value: Any) -> str:
    """A GraphQL string literal (JSON string escaping is valid GraphQL): quotes and backslashes cannot escape it."""
    return json.dumps(str(value))


def check_id(value: str, what: str = "pod id") -> str:
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise ConfigError(f"invalid RunPod {what} {value!r}")
    return value


def _call(fn, *a, **kw):
    """One SDK call under the cloud_api retry policy; network blips and 5xx become TransientError."""
    import requests

    def once():
        try:
            return fn(*a, **kw)
        except requests.RequestException as e:
            raise TransientError(f"RunPod API: {e}") from e
        except ValueError as e:  # the SDK's response.json() on a 5xx HTML page
            raise TransientError(f"RunPod API answered garbage: {e}") from e

    return retrying("cloud_api")(once)


def deployment_mutation(name: str, nc: dict[str, Any], env: dict[str, str], interruptible: bool,
                        global_network: bool) -> str:
    """podFindAndDeployOnDemand / podRentInterruptable with every value escaped or validated."""
    fields = [f"name: {gql_str(name)}", f"imageName: {gql_str(nc['image_name'])}"]
    ct = nc.get("cloud_type", "ALL")
    if ct not in CLOUD_TYPES:
        raise ConfigError(f"cloud_type must be one of {sorted(CLOUD_TYPES)}, got {ct!r}")
    fields.append(f"cloudType: {ct}")
    if nc.get("gpu_type_id"):
        fields.append(f"gpuTypeId: {gql_str(nc['gpu_type_id'])}")
        fields.append(f"gpuCount: {int(nc.get('gpu_count', 1))}")
    for key, gql in (("container_disk_in_gb", "containerDiskInGb"), ("volume_in_gb", "volumeInGb"),
                     ("min_vcpu_count", "minVcpuCount"), ("min_memory_in_gb", "minMemoryInGb")):
        if nc.get(key) is not None:
            fields.append(f"{gql}: {int(nc[key])}")
    for key, gql in (("volume_mount_path", "volumeMountPath"), ("network_volume_id", "networkVolumeId"),
                     ("template_id", "templateId"), ("country_code", "countryCode")):
        if nc.get(key):
            fields.append(f"{gql}: {gql_str(nc[key])}")
    dc = nc.get("data_center_id")
    if dc and dc != "any":
        fields.append(f"dataCenterId: {gql_str(dc)}")
    ports = str(nc.get("ports", "22/tcp")).replace(" ", "")
    if not _PORTS_RE.fullmatch(ports):
        raise ConfigError(f"invalid RunPod ports {ports!r}; expected like '22/tcp,8265/http'")
    fields.append(f"ports: {gql_str(ports)}")
    fields.append(f"dockerArgs: {gql_str(nc.get('docker_args', SIGTERM_ENTRYPOINT))}")
    fields.append(f"supportPublicIp: {'true' if nc.get('support_public_ip', True) else 'false'}")
    fields.append("startSsh: true")
    if global_network:
        fields.append("globalNetwork: true")
    items = []
    for k, v in env.items():
        if not _ENV_KEY_RE.fullmatch(str(k)):
            raise ConfigError(f"invalid environment variable name {k!r} for a RunPod pod")
        items.append(f"{{ key: {gql_str(k)}, value: {gql_str(v)} }}")
    fields.append(f"env: [{', '.join(items)}]")
    if interruptible:
        fields.append(f"bidPerGpu: {float(nc.get('bid_per_gpu', 0.0) or 0.0):.4f}")
        op = "podRentInterruptable"
    else:
        op = "podFindAndDeployOnDemand"
    return f"mutation {{ {op}(input: {{ {', '.join(fields)} }}) {{ id desiredStatus imageName machineId }} }}"


class RunPodNodeProvider(NodeProvider):
    """Pods named s2v-<cluster>-<uuid>; Ray tags = pod env (at create) + a local overlay file (later updates)."""

    def __init__(self, provider_config: dict[str, Any], cluster_name: str) -> None:
        super().__init__(provider_config, cluster_name)
        import runpod

        self._rp = runpod
        key = os.environ.get(provider_config.get("api_key_env", "RUNPOD_API_KEY"))
        if key:
            runpod.api_key = key
        if not runpod.api_key:
            raise ClusterError("RUNPOD_API_KEY is not set (needed by `s2v cluster up` and on the head node)")
        self.global_network = bool(provider_config.get("global_networking", True))
        state_dir = Path(provider_config.get("state_dir", Path.home() / ".s2v" / "runpod")).expanduser()
        state_dir.mkdir(parents=True, exist_ok=True)
        self._overlay_path = state_dir / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', cluster_name)}-tags.json"
        self._lock = threading.RLock()
        self._pods: dict[str, dict] = {}
        self._warned_spot = False

    # ---- state -------------------------------------------------------------------------------------
    def _overlay(self) -> dict[str, dict[str, str]]:
        try:
            return json.loads(self._overlay_path.read_text())
        except (OSError, ValueError):
            return {}

    def _save_overlay(self, data: dict[str, dict[str, str]]) -> None:
        tmp = self._overlay_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self._overlay_path)

    @staticmethod
    def _env(pod: dict) -> dict[str, str]:
        env = pod.get("env") or []
        if isinstance(env, dict):
            return {str(k): str(v) for k, v in env.items()}
        return dict(e.split("=", 1) for e in env if "=" in e)

    def _tags_of(self, pod: dict) -> dict[str, str]:
        env = self._env(pod)
        tags: dict[str, str] = {}
        if TAGS_ENV in env:
            try:
                tags = json.loads(urlsafe_b64decode(env[TAGS_ENV].encode()).decode())
            except ValueError:
                log.warning("pod %s has unreadable tags", pod.get("id"))
        tags.update(self._overlay().get(pod["id"], {}))
        return tags

    def _refresh(self) -> list[dict]:
        pods = _call(self._rp.get_pods) or []
        mine = [p for p in pods if self._env(p).get(CLUSTER_ENV) == self.cluster_name]
        with self._lock:
            self._pods = {p["id"]: p for p in mine}
        return mine

    def _pod(self, node_id: str) -> dict:
        with self._lock:
            pod = self._pods.get(node_id)
        if pod is None or pod.get("runtime") is None:
            pod = _call(self._rp.get_pod, check_id(node_id))
            if not pod:
                raise ClusterError(f"RunPod pod {node_id} not found")
            with self._lock:
                self._pods[node_id] = pod
        return pod

    # ---- NodeProvider ------------------------------------------------------------------------------
    def non_terminated_nodes(self, tag_filters: dict[str, str]) -> list[str]:
        out = []
        for pod in self._refresh():
            if pod.get("desiredStatus") not in LIVE:
                continue
            tags = self._tags_of(pod)
            if all(tags.get(k) == v for k, v in tag_filters.items()):
                out.append(pod["id"])
        return out

    def is_running(self, node_id: str) -> bool:
        pod = self._pod(node_id)
        return pod.get("desiredStatus") == "RUNNING" and bool((pod.get("runtime") or {}).get("ports"))

    def is_terminated(self, node_id: str) -> bool:
        try:
            return self._pod(node_id).get("desiredStatus") not in LIVE
        except ClusterError:
            return True

    def node_tags(self, node_id: str) -> dict[str, str]:
        return self._tags_of(self._pod(node_id))

    def _port(self, node_id: str, private: int, public: bool) -> dict | None:
        for p in (self._pod(node_id).get("runtime") or {}).get("ports") or []:
            if p.get("privatePort") == private and bool(p.get("isIpPublic")) == public:
                return p
        return None

    def ssh_endpoint(self, node_id: str) -> tuple[str, int]:
        """(host, port) of the pod's sshd: RunPod NATs port 22 to a random public port."""
        p = self._port(node_id, 22, True)
        if p is None:
            raise ClusterError(f"pod {node_id} exposes no public SSH port yet")
        return p["ip"], int(p["publicPort"])

    def external_ip(self, node_id: str) -> str:
        p = self._port(node_id, 22, True)
        return p["ip"] if p else None

    def internal_ip(self, node_id: str) -> str:
        if self.global_network:
            # Pod-to-pod over global networking; resolvable only from inside RunPod.
            try:
                return socket.gethostbyname(f"{check_id(node_id)}.runpod.internal")
            except OSError:
                pass
        p = self._port(node_id, 22, False)
        return p["ip"] if p else self.external_ip(node_id)

    def create_node(self, node_config: dict[str, Any], tags: dict[str, str], count: int) -> dict[str, dict]:
        nc = dict(node_config)
        interruptible = bool(nc.get("interruptible", False))
        created: dict[str, dict] = {}
        for _ in range(count):
            name = f"s2v-{self.cluster_name}-{uuid.uuid4().hex[:8]}"
            env = {str(k): str(v) for k, v in (nc.get("env") or {}).items()}
            env[CLUSTER_ENV] = self.cluster_name
            env[TAGS_ENV] = urlsafe_b64encode(json.dumps(dict(tags)).encode()).decode()
            pod = self._deploy(name, nc, env, interruptible)
            log.info("created RunPod pod %s (%s)", pod["id"], name)
            created[pod["id"]] = pod
        return created

    def _deploy(self, name: str, nc: dict, env: dict, interruptible: bool) -> dict:
        from runpod.api.graphql import run_graphql_query
        from runpod.error import QueryError

        if interruptible:
            try:
                q = deployment_mutation(name, nc, env, True, self.global_network)
                return _call(run_graphql_query, q)["data"]["podRentInterruptable"]
            except QueryError as e:
                # RunPod is retiring interruptible pods: fall back, loudly, to on-demand.
                if not self._warned_spot:
                    log.warning("RunPod refused an interruptible pod (%s); launching ON-DEMAND instead — "
                                "this costs the on-demand price", e)
                    self._warned_spot = True
        q = deployment_mutation(name, nc, env, False, self.global_network)
        try:
            return _call(run_graphql_query, q)["data"]["podFindAndDeployOnDemand"]
        except QueryError as e:
            raise ClusterError(f"RunPod could not create pod {name}: {e}") from e

    def set_node_tags(self, node_id: str, tags: dict[str, str]) -> None:
        with self._lock:
            data = self._overlay()
            data.setdefault(check_id(node_id), {}).update(tags)
            self._save_overlay(data)

    def terminate_node(self, node_id: str) -> None:
        _call(self._rp.terminate_pod, check_id(node_id))
        with self._lock:
            self._pods.pop(node_id, None)
            data = self._overlay()
            if data.pop(node_id, None) is not None:
                self._save_overlay(data)

    def get_command_runner(self, log_prefix, node_id, auth_config, cluster_name, process_runner,
                           use_internal_ip, docker_config=None):
        runner = super().get_command_runner(log_prefix, node_id, auth_config, cluster_name, process_runner,
                                            use_internal_ip, docker_config)
        if not use_internal_ip and hasattr(runner, "ssh_options"):
            runner.ssh_options.arg_dict["Port"] = self.ssh_endpoint(node_id)[1]
        return runner

    @staticmethod
    def bootstrap_config(cluster_config: dict[str, Any]) -> dict[str, Any]:
        cluster_config.setdefault("provider", {}).setdefault("use_internal_ips", False)
        return cluster_config

