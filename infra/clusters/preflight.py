"""`s2v cluster check`: what would fail a cluster, found before anything is launched — the findings, the checks every
provider shares (libraries, SSH key, pinned host keys), RunPod's, and the dispatch to preflight_aws / preflight_gcp."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import shutil
import stat
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

OK, WARN, FAIL, SKIP = "ok", "warn", "FAIL", "skip"
# A preflight answers in seconds, also with no network: one try per call, short waits (a cloud that does not
# answer within these is a finding, not something to wait out).
CONNECT_S, READ_S = 3.0, 10.0


@dataclass(frozen=True)
class Finding:
    """One thing checked: what, how it stands, what was seen, and what to do about it."""

    check: str
    status: str  # OK | WARN | FAIL | SKIP
    detail: str
    fix: str = ""

    def __str__(self) -> str:
        return f"{self.status:<4}  {self.check}: {self.detail}" + (f"\n      → {self.fix}" if self.fix else "")


class Unreachable(Exception):
    """A cloud API did not answer (no network, a closed port, a timeout): every later call would wait the same."""


@dataclass(frozen=True)
class Needs:
    """What a run on this cluster needs from its object store: buckets the nodes read, and buckets they write."""

    read: frozenset[str]
    write: frozenset[str]
    work: str | None = None  # the work area's bucket: this machine writes there too (staged inputs, the manifest)


def needs_of(cfg: dict, extra_read: Iterable[str] = (), extra_write: Iterable[str] = ()) -> Needs:
    """The config's buckets (work area, inputs, outputs, weights: infra/clusters/iam.py) plus a manifest's."""
    from infra.clusters.iam import covered, work_bucket

    readable, writable = covered(cfg)
    write = frozenset(writable | set(extra_write))
    return Needs(frozenset(readable | set(extra_read)) | write, write, work_bucket(cfg))


def failed(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.status == FAIL]


def run_steps(steps: list[tuple[str, Callable[[], list[Finding]]]], api: str, fix: str) -> list[Finding]:
    """Each step's findings in order; once the API is unreachable the rest are skipped (each would time out the
    same way), and a step's unexpected error is its own FAIL, never a traceback."""
    out: list[Finding] = []
    for i, (name, step) in enumerate(steps):
        try:
            out += step()
        except Unreachable as e:
            out.append(Finding(f"{api} reachable", FAIL, f"{e}", fix))
            out += [Finding(n, SKIP, f"not checked: {api} did not answer") for n, _ in steps[i + 1:]]
            break
        except Exception as e:  # noqa: BLE001 — a check that breaks is a finding too
            out.append(Finding(name, FAIL, f"could not be checked: {type(e).__name__}: {str(e)[:300]}",
                               "run `s2v cluster check` again; if it persists, the message above says what broke"))
    return out


# ---- libraries: on this machine, and in what the nodes install ---------------------------------------------------
# module → (distribution the extra names, s2v-batch extra that brings it), by provider and by work-area scheme;
# None: it comes with another one (google-auth with google-api-python-client), not named by any extra
LIBRARIES = {
    "aws": [("boto3", "boto3", "s3")],
    "gcp": [("googleapiclient", "google-api-python-client", "gcp"), ("google.auth", None, "gcp")],
    "runpod": [("runpod", "runpod", "runpod")],
    "s3": [("boto3", "boto3", "s3")],
    "gs": [("google.cloud.storage", "google-cloud-storage", "gcs")],
}


def library_findings(cfg: dict, provider: str) -> list[Finding]:
    from infra.clusters.config import s2v_meta

    scheme = str(s2v_meta(cfg).get("work") or "").split("://", 1)[0]
    wanted = {m: (d, x) for m, d, x in LIBRARIES.get(provider, []) + LIBRARIES.get(scheme, [])}
    out = []
    for module, (dist, extra) in wanted.items():
        ok = _importable(module)
        out.append(Finding(f"library {module}", OK if ok else FAIL,
                           "importable on this machine" if ok else "not importable on this machine, which runs the "
                           f"launcher{' and stages inputs' if extra in ('s3', 'gcs') else ''}",
                           "" if ok else f"pip install 's2v-batch[{extra}]' (or 's2v-batch[cloud]')"))
    installed = installed_extras(cfg)
    if installed is None:
        return out + [Finding("libraries on the nodes", WARN, "no setup command installs s2v-batch with extras, so "
                              "nothing says the nodes get " + ", ".join(sorted({d for d, _ in wanted.values() if d})),
                              "install \"s2v-batch[cloud] @ file://$HOME/s2v-dist/$(cat ~/s2v-dist/WHEEL)\" in "
                              "setup_commands, as the shipped templates do")]
    brought = _distributions(installed)
    if brought is None:
        return out + [Finding("libraries on the nodes", SKIP, f"the nodes install s2v-batch[{','.join(installed)}]; "
                              "this machine has no s2v-batch metadata to say what those extras bring")]
    for module, (dist, extra) in wanted.items():
        if dist is None:
            continue
        ok = dist in brought
        out.append(Finding(f"library {module} on the nodes", OK if ok else FAIL,
                           f"{'in' if ok else 'not in'} s2v-batch[{','.join(installed)}], which setup_commands install"
                           + ("" if ok else ": the head's autoscaler (or the nodes' storage) cannot start"),
                           "" if ok else f"add the {extra} extra (or cloud) to the install in setup_commands"))
    return out


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing
        return False


def installed_extras(cfg: dict) -> list[str] | None:
    """The extras of the s2v-batch install every node runs (setup_commands), None when none names any."""
    for cmd in cfg.get("setup_commands") or []:
        m = re.search(r"s2v-batch\[([A-Za-z0-9_,\s-]+)\]", str(cmd))
        if m:
            return [x.strip() for x in m.group(1).split(",") if x.strip()]
    return None


def _distributions(extras: list[str]) -> set[str] | None:
    """Every distribution s2v-batch's extras bring, nested extras followed (from the installed metadata)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    try:
        reqs = [Requirement(r) for r in metadata.requires("s2v-batch") or []]
    except metadata.PackageNotFoundError:
        return None
    seen, todo, out = set(), list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for r in reqs:
            if r.marker is None or not r.marker.evaluate({"extra": extra}):
                continue
            if r.name == "s2v-batch":
                todo += list(r.extras)
            else:
                out.add(r.name)
    return out


# ---- SSH: the key the launcher uses and the host keys s2v pinned ---------------------------------------------------
def ssh_findings(cfg: dict, config_path: str) -> list[Finding]:
    from infra.clusters.config import PROVIDERS, provider_of
    from infra.clusters.hostkeys import pinned

    out = []
    missing = [b for b in ("ssh", "ssh-keygen") if not shutil.which(b)]
    # another provider's nodes may be reached some other way (its own command runner): then it is only a warning
    bad = FAIL if provider_of(cfg) in PROVIDERS else WARN
    out.append(Finding("ssh client", bad if missing else OK, f"{', '.join(missing)} not on PATH" if missing else
                       "ssh and ssh-keygen on PATH", "install OpenSSH's client" if missing else ""))
    key = (cfg.get("auth") or {}).get("ssh_private_key")
    if key:
        path = Path(os.path.expanduser(str(key)))
        if not path.is_file():
            out.append(Finding("ssh key", FAIL, f"auth.ssh_private_key {key} does not exist",
                               "point auth.ssh_private_key at your private key (`s2v cluster init --ssh-key`)"))
        elif path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            out.append(Finding("ssh key", FAIL, f"{key} is readable by others, and ssh refuses such a key",
                               f"chmod 600 {key}"))
        else:
            out.append(Finding("ssh key", OK, f"{key}"))
    keys = pinned(config_path)
    out.append(Finding("pinned host keys", OK, f"{len(keys)} node key(s) pinned for {config_path}; every connection "
                       "checks them (StrictHostKeyChecking=yes)" if keys else "none yet: `s2v cluster up` pins the "
                       "head's key when it makes the head"))
    return out


# ---- RunPod: the API key and the GPU types ----------------------------------------------------------------------
def runpod_findings(cfg: dict) -> list[Finding]:
    from infra.clusters.runpod.api import default_key_file, gql_str

    prov = cfg.get("provider") or {}
    env = prov.get("api_key_env", "RUNPOD_API_KEY")
    key = os.environ.get(env, "").strip()
    path = Path(prov.get("api_key_file") or default_key_file(cfg.get("cluster_name", "s2v"))).expanduser()
    if not key and path.is_file():
        key = path.read_text().strip()
    if not key:
        return [Finding("runpod api key", FAIL, f"{env} is not set and {path} holds no key",
                        f"export {env}=… (a RunPod API key with read/write: RunPod console → Settings → API Keys)")]
    gpus = sorted({str((nt.get("node_config") or {}).get("gpu_type_id")) for nt in
                   (cfg.get("available_node_types") or {}).values() if (nt.get("node_config") or {}).get("gpu_type_id")})
    fields = " ".join(f"g{i}: gpuTypes(input: {{id: {gql_str(g)}}}) {{ id secureCloud communityCloud }}"
                      for i, g in enumerate(gpus))
    base = os.environ.get("RUNPOD_API_BASE_URL", "https://api.runpod.io")
    try:
        data = _graphql(f"{base}/graphql", key, f"query {{ myself {{ id }} {fields} }}")
    except Unreachable as e:
        return [Finding("runpod api", FAIL, str(e), "check the network (or RUNPOD_API_BASE_URL)")]
    except PermissionError as e:
        return [Finding("runpod api key", FAIL, str(e), f"create a new key and export {env}")]
    out = [Finding("runpod api key", OK, f"accepted (account {((data.get('myself') or {}).get('id')) or '?'})")]
    cloud = {n: (nt.get("node_config") or {}).get("cloud_type", "ALL")
             for n, nt in (cfg.get("available_node_types") or {}).items()}
    for i, g in enumerate(gpus):
        found = data.get(f"g{i}") or []
        if not found:
            out.append(Finding(f"runpod gpu {g}", FAIL, "RunPod knows no GPU type by that id",
                               "use an id from RunPod's GPU list (gpu_type_id, e.g. 'NVIDIA H100 80GB HBM3')"))
            continue
        wants_secure = any(c == "SECURE" for n, c in cloud.items()
                           if ((cfg["available_node_types"][n].get("node_config") or {}).get("gpu_type_id")) == g)
        ok = found[0].get("secureCloud") or not wants_secure
        out.append(Finding(f"runpod gpu {g}", OK if ok else FAIL, "offered" + ("" if ok else " on Community Cloud "
                           "only, but the config asks for SECURE (global networking needs it)"),
                           "" if ok else "choose a GPU type Secure Cloud offers"))
    return out


def _graphql(url: str, key: str, query: str) -> dict:
    req = urllib.request.Request(url, data=json.dumps({"query": query}).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=CONNECT_S + READ_S) as r:
            body = json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise PermissionError(f"RunPod refused the key (HTTP {e.code})") from None
        raise Unreachable(f"RunPod's API at {url} answered HTTP {e.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise Unreachable(f"cannot reach RunPod's API at {url}: {getattr(e, 'reason', e)}") from None
    if body.get("errors") and not body.get("data"):
        raise Unreachable(f"RunPod's API answered errors: {str(body['errors'])[:300]}")
    return body.get("data") or {}


# ---- all of it ------------------------------------------------------------------------------------------------
PROVIDER_CHECKS = {"aws": "infra.clusters.preflight_aws", "gcp": "infra.clusters.preflight_gcp"}
CHECK_NEEDS = {"aws": ("boto3",), "gcp": ("google.auth", "requests")}  # what those modules import


def run_checks(cfg: dict, config_path: str, needs: Needs) -> list[Finding]:
    """Every finding for a validated config: shared checks, then the provider's (its libraries imported lazily,
    and only when they are there: a missing one is already a finding)."""
    from infra.clusters.config import provider_of

    prov = provider_of(cfg)
    out = library_findings(cfg, prov) + ssh_findings(cfg, config_path)
    if prov == "runpod":
        return out + run_steps([("runpod", lambda: runpod_findings(cfg))], "RunPod", "")
    if prov not in PROVIDER_CHECKS:
        return out + [Finding(f"{prov} account", SKIP, f"s2v has no account checks for provider {prov!r}")]
    if not all(_importable(m) for m in CHECK_NEEDS[prov]):
        return out + [Finding(f"{prov} account", SKIP, "not checked: its client library is missing here")]
    return out + importlib.import_module(PROVIDER_CHECKS[prov]).checks(cfg, needs)
