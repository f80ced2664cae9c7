"""Ray external NodeProvider for RunPod pods (provider: {type: external, module: infra.clusters.runpod.provider.RunPodNodeProvider})."""

from __future__ import annotations

import copy
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
from infra.preemption.sigterm import FLAG_NAME, SIGTERM_FLAG_DIR, sigterm_trap_command
from infra.clusters.runpod.api import (
    LABELS_ENV,
    MARKET_LABEL,
    ON_DEMAND,
    PRICE_KEY_LABEL,
    SECRET_ENV_RE,
    SPOT,
    BadRequest,
    PodLaunchError,
    Refused,
    call,
    check_id,
    current_min_bid,
    default_key_file,
    deploy,
    deploy_mutation,
    global_hostname,
    global_network_data_centers,
    is_gpu,
    load_api_key,
    on_runpod,
    price_key,
)

log = logging.getLogger("s2v.runpod")

TAGS_ENV = "S2V_RAY_TAGS"  # initial Ray tags ride in the pod's env (RunPod has no mutable labels)
CLUSTER_ENV = "S2V_RAY_CLUSTER"
CREATED_ENV = "S2V_CREATED_AT"  # unix seconds of the create: the cost clock's launch time (the pods query has none)
DATA_CENTER_ENV = "S2V_DATA_CENTER"  # the data centre the pod was asked for (the cost report's zone)
LIVE = {"RUNNING", "CREATED", "RESTARTING"}  # desiredStatus values of a pod that is, or will be, a Ray node
GONE = {"TERMINATED"}  # anything else (EXITED: interrupted or stopped; DEAD; PAUSED) still bills its disk
# Docker delivers SIGTERM to PID 1 only: the entrypoint traps it and writes this boot's flag (the contract of
# infra/preemption/sigterm.py: a 0700 folder under the renderer's home, the boot id inside, written atomically),
# then starts sshd and waits.
SIGTERM_ENTRYPOINT = (
    "bash -c '" + sigterm_trap_command(Path(SIGTERM_FLAG_DIR) / FLAG_NAME) + "; "
    "(test -x /start.sh && /start.sh || (service ssh start || /usr/sbin/sshd)) & wait; sleep infinity & wait'"
)


def pod_env(pod: dict) -> dict[str, str]:
    """A pod's env as RunPod lists it (["K=V", ...], or a mapping) as a dict."""
    env = pod.get("env") or []
    if isinstance(env, dict):
        return {str(k): str(v) for k, v in env.items()}
    return dict(e.split("=", 1) for e in env if "=" in e)


def pod_labels(env: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(Ray node labels, initial Ray tags) a pod was created with, from its env; unreadable ones are empty."""
    try:
        labels = json.loads(env.get(LABELS_ENV) or "{}")
    except ValueError:
        labels = {}
    try:
        tags = json.loads(urlsafe_b64decode(env[TAGS_ENV].encode()).decode()) if TAGS_ENV in env else {}
    except ValueError:
        log.warning("a pod has unreadable tags (%s)", TAGS_ENV)
        tags = {}
    return labels, tags


class RunPodNodeProvider(NodeProvider):
    """Pods named s2v-<cluster>-<uuid>; Ray tags = pod env (at create) + a local overlay file (later updates)."""

    def __init__(self, provider_config: dict[str, Any], cluster_name: str) -> None:
        super().__init__(provider_config, cluster_name)
        import runpod

        self._rp = runpod
        runpod.api_key = load_api_key(provider_config, cluster_name)
        self.global_network = bool(provider_config.get("global_networking", True))
        self.data_center_id = provider_config.get("data_center_id")
        state_dir = Path(provider_config.get("state_dir", Path.home() / ".s2v" / "runpod")).expanduser()
        state_dir.mkdir(parents=True, exist_ok=True)
        self._overlay_path = state_dir / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', cluster_name)}-tags.json"
        self._lock = threading.RLock()
        self._pods: dict[str, dict] = {}
        self._ips: dict[str, str] = {}
        self.fallbacks: list[str] = []  # pods launched on-demand because RunPod refused their spot bid
        self._centres: list[str] | None = None  # data centres with global networking, asked once per provider

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
        return pod_env(pod)

    def _tags_of(self, pod: dict) -> dict[str, str]:
        _labels, tags = pod_labels(self._env(pod))
        tags.update(self._overlay().get(pod["id"], {}))
        return tags

    def _refresh(self) -> list[dict]:
        pods = call(self._rp.get_pods) or []
        mine = [p for p in pods if self._env(p).get(CLUSTER_ENV) == self.cluster_name]
        for pod in mine:
            if pod.get("desiredStatus") not in LIVE | GONE:
                self._reap(pod)
        live = [p for p in mine if p.get("desiredStatus") in LIVE]
        with self._lock:
            self._pods = {p["id"]: p for p in live}
        return live

    def _reap(self, pod: dict) -> None:
        """An EXITED (interrupted) pod will not come back as a Ray node but bills its disk until deleted."""
        labels = self.node_labels_of(pod)
        log.warning("RunPod pod %s (%s, %s) is %s — interrupted or exited; deleting it", pod["id"],
                    pod.get("name"), labels.get(MARKET_LABEL, "?"), pod.get("desiredStatus"))
        try:
            self.terminate_node(pod["id"])
        except (ClusterError, TransientError) as e:  # the next refresh tries again
            log.warning("could not delete pod %s yet: %s", pod["id"], e)

    def _pod(self, node_id: str) -> dict:
        with self._lock:
            pod = self._pods.get(node_id)
        if pod is None or pod.get("runtime") is None:
            pod = call(self._rp.get_pod, check_id(node_id))
            if not pod:
                raise ClusterError(f"RunPod pod {node_id} not found")
            with self._lock:
                self._pods[node_id] = pod
        return pod

    def node_labels_of(self, pod: dict) -> dict[str, str]:
        return pod_labels(self._env(pod))[0]

    def node_labels(self, node_id: str) -> dict[str, str]:
        """The Ray node labels this pod starts with: price key and market as actually launched."""
        return self.node_labels_of(self._pod(node_id))

    # ---- NodeProvider ------------------------------------------------------------------------------
    def non_terminated_nodes(self, tag_filters: dict[str, str]) -> list[str]:
        out = []
        for pod in self._refresh():
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
        """The address the pod's Ray node advertises (its global-network IP; the head's monitor matches on it)."""
        if node_id in self._ips:
            return self._ips[node_id]
        if self.global_network and on_runpod():  # *.runpod.internal resolves only inside RunPod
            try:
                ip = socket.gethostbyname(global_hostname(node_id))
                self._ips[node_id] = ip
                return ip
            except OSError as e:
                log.warning("cannot resolve %s yet: %s", global_hostname(node_id), e)
        p = self._port(node_id, 22, False)
        return p["ip"] if p else self.external_ip(node_id)

    def create_node(self, node_config: dict[str, Any], tags: dict[str, str], count: int) -> dict[str, dict]:
        nc = dict(node_config)
        if self.data_center_id and not nc.get("data_center_id"):
            nc["data_center_id"] = self.data_center_id
        nc.setdefault("docker_args", SIGTERM_ENTRYPOINT)
        base_env = {str(k): str(v) for k, v in (nc.get("env") or {}).items()}
        secrets = sorted(k for k in base_env if SECRET_ENV_RE.search(k))
        if secrets:
            raise ConfigError(f"node_config env {secrets} looks like a secret: RunPod returns pod env to anyone who "
                              "can list the account's pods; deliver it as a file (file_mounts) instead")
        base_env[CLUSTER_ENV] = self.cluster_name
        base_env[TAGS_ENV] = urlsafe_b64encode(json.dumps(dict(tags)).encode()).decode()
        created: dict[str, dict] = {}
        for _ in range(count):
            base_env[CREATED_ENV] = f"{time.time():.0f}"
            pod = self._launch(f"s2v-{self.cluster_name}-{uuid.uuid4().hex[:8]}", nc, base_env)
            created[pod["id"]] = pod
        return created

    def _launch(self, name: str, nc: dict, base_env: dict[str, str]) -> dict:
        key = price_key(nc)

        def env(market: str) -> dict[str, str]:
            return {**base_env, LABELS_ENV: json.dumps({PRICE_KEY_LABEL: key, MARKET_LABEL: market})}

        if nc.get("interruptible") and not is_gpu(nc):
            raise ConfigError("RunPod has no interruptible CPU pods; set interruptible: false or a gpu_type_id")
        if nc.get("interruptible"):
            try:
                if nc.get("bid_per_gpu") is not None and not float(nc["bid_per_gpu"]) > 0:
                    raise ConfigError(f"bid_per_gpu must be a positive USD per GPU-hour, got {nc['bid_per_gpu']!r}")
                bid = float(nc["bid_per_gpu"]) if nc.get("bid_per_gpu") is not None else current_min_bid(nc)
                if not bid:
                    raise Refused(f"RunPod quotes no spot price for {nc['gpu_type_id']}")
                pod = self._create(name, nc, env(SPOT), interruptible=True, bid=bid)
                log.info("created RunPod pod %s (%s) as SPOT %s, bid $%.3f/GPU-hour", pod["id"], name, key, bid)
                return pod
            except BadRequest as e:
                raise PodLaunchError("RunPodBadRequest", f"RunPod rejected the request for a SPOT pod {name} ({key}) "
                                     f"as malformed: {e}. Not falling back to on-demand: the same request would "
                                     "fail there too; check node_config against RunPod's API") from e
            except Refused as e:
                self.fallbacks.append(name)
                log.warning("RunPod refused a SPOT pod %s (%s): launching it ON-DEMAND instead — it is billed at the "
                            "on-demand price and labelled %s=%s, %s=%s", key, e, PRICE_KEY_LABEL, key,
                            MARKET_LABEL, ON_DEMAND)
        try:
            pod = self._create(name, nc, env(ON_DEMAND), interruptible=False)
        except Refused as e:
            category = "RunPodBadRequest" if isinstance(e, BadRequest) else "RunPodRefused"
            raise PodLaunchError(category, f"RunPod could not create pod {name} ({key}): {e}") from e
        log.info("created RunPod pod %s (%s) ON-DEMAND %s", pod["id"], name, key)
        return pod

    def _create(self, name: str, nc: dict, env: dict[str, str], *, interruptible: bool,
                bid: float | None = None) -> dict:
        """In the pinned data centre, or (none pinned, global networking on) in each one that offers global
        networking in turn, the next one when RunPod refuses this one (capacity); a malformed request stops at once."""
        centres = self._data_centres(nc)
        for i, dc in enumerate(centres):
            try:
                return self._create_in(name, dict(nc, data_center_id=dc) if dc else nc,
                                       {**env, DATA_CENTER_ENV: dc} if dc else env, interruptible=interruptible, bid=bid)
            except BadRequest:
                raise
            except Refused as e:
                if i + 1 == len(centres):
                    raise
                log.info("RunPod refused pod %s in %s (%s); trying %s", name, dc, e, centres[i + 1])
        raise AssertionError("unreachable: no data centre to try")

    def _data_centres(self, nc: dict) -> list[str | None]:
        dc = nc.get("data_center_id")
        if dc and dc != "any":
            return [dc]
        if not (self.global_network and is_gpu(nc)):
            return [None]  # RunPod picks; a pod that needs no global network may land anywhere
        if self._centres is None:
            self._centres = global_network_data_centers()
        return list(self._centres)

    def _create_in(self, name: str, nc: dict, env: dict[str, str], *, interruptible: bool,
                   bid: float | None = None) -> dict:
        op, mutation = deploy_mutation(name, nc, env, interruptible=interruptible,
                                       global_network=self.global_network, bid_per_gpu=bid)
        try:
            return deploy(op, mutation)
        except TransientError as e:
            # The request may have created a billable pod: look it up by its unique name, never resend blindly.
            pod = self._find_by_name(name)
            if pod is None:
                raise PodLaunchError(
                    "CreateUnknown", f"RunPod did not answer the create of {name} ({e}) and no such pod is listed; "
                    "not retried, to avoid a duplicate — if it appears later it carries this cluster's tag and the "
                    "autoscaler manages it") from e
            log.warning("create of %s failed in transit (%s) but RunPod lists it as %s: using it", name, e, pod["id"])
            return pod

    def _find_by_name(self, name: str, attempts: int = 3) -> dict | None:
        def look() -> dict:
            for pod in call(self._rp.get_pods) or []:
                if pod.get("name") == name and self._env(pod).get(CLUSTER_ENV) == self.cluster_name:
                    return pod
            raise TransientError(f"pod {name} not listed (yet)")

        try:
            return retrying("cloud_api", attempts=attempts)(look)
        except TransientError:
            return None

    def set_node_tags(self, node_id: str, tags: dict[str, str]) -> None:
        with self._lock:
            data = self._overlay()
            data.setdefault(check_id(node_id), {}).update(tags)
            self._save_overlay(data)

    def terminate_node(self, node_id: str) -> None:
        from runpod.error import QueryError

        try:
            call(self._rp.terminate_pod, check_id(node_id))
        except QueryError as e:  # already gone is fine; anything else is not
            try:
                pod = call(self._rp.get_pod, node_id)
            except QueryError:
                pod = None
            if pod and pod.get("desiredStatus") not in GONE:
                raise ClusterError(f"RunPod could not terminate pod {node_id}: {e}") from e
        with self._lock:
            self._pods.pop(node_id, None)
            self._ips.pop(node_id, None)
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

    # ---- the API key reaches the head's autoscaler as a head-only file mount -----------------------
    @staticmethod
    def bootstrap_config(cluster_config: dict[str, Any]) -> dict[str, Any]:
        """On the user's machine: stage the key to a 0600 file and mount it on the head (like Ray's SSH key)."""
        p = cluster_config.setdefault("provider", {})
        p.setdefault("use_internal_ips", False)
        key_file = p.setdefault("api_key_file", default_key_file(cluster_config.get("cluster_name", "default")))
        load_api_key(p, cluster_config.get("cluster_name", "default"))  # fails early, before any pod exists
        cluster_config.setdefault("file_mounts", {})[key_file] = str(Path(key_file).expanduser())
        return cluster_config

    def prepare_for_head_node(self, cluster_config: dict[str, Any]) -> dict[str, Any]:
        """The config the head's autoscaler runs with: its workers never receive the key file."""
        cfg = copy.deepcopy(cluster_config)
        cfg.get("file_mounts", {}).pop(cfg.get("provider", {}).get("api_key_file"), None)
        return cfg
