"""`s2v cluster check` on GCP: application-default credentials, the project, service accounts and their bucket roles,
GPU quotas of the region, machine types in the zone, images, firewall and OS Login — REST calls with short timeouts.

Endpoints are Google's unless CLOUDSDK_API_ENDPOINT_OVERRIDES_<API> names another (gcloud's own variables)."""

from __future__ import annotations

import os
import re
import urllib.parse

from infra.clusters.preflight import CONNECT_S, FAIL, OK, READ_S, SKIP, WARN, Finding, Needs, Unreachable, run_steps

ENDPOINTS = {"compute": "https://compute.googleapis.com/compute/v1/", "iam": "https://iam.googleapis.com/",
             "cloudresourcemanager": "https://cloudresourcemanager.googleapis.com/",
             "storage": "https://storage.googleapis.com/storage/v1/"}
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
HEAD_ACCOUNT = "ray-autoscaler-sa-v1"  # what Ray's GCP launcher gives the head (and creates when missing)
READ_ROLES = {"roles/storage.objectViewer", "roles/storage.legacyObjectReader", "roles/storage.objectUser",
              "roles/storage.objectAdmin", "roles/storage.admin", "roles/editor", "roles/owner"}
WRITE_ROLES = {"roles/storage.objectUser", "roles/storage.objectAdmin", "roles/storage.admin", "roles/editor",
               "roles/owner"}
# accelerator type → quota metric stem (spot: PREEMPTIBLE_<stem>_GPUS, on-demand: <stem>_GPUS)
GPU_METRICS = {"nvidia-h100-80gb": "NVIDIA_H100", "nvidia-h100-mega-80gb": "NVIDIA_H100_MEGA",
               "nvidia-h200-141gb": "NVIDIA_H200", "nvidia-b200": "NVIDIA_B200", "nvidia-a100-80gb": "NVIDIA_A100_80GB",
               "nvidia-tesla-a100": "NVIDIA_A100", "nvidia-l4": "NVIDIA_L4", "nvidia-tesla-t4": "NVIDIA_T4",
               "nvidia-tesla-v100": "NVIDIA_V100"}
PRIVATE_PORTS = (8265, 6379, 10001)


def _url(api: str, path: str) -> str:
    base = os.environ.get(f"CLOUDSDK_API_ENDPOINT_OVERRIDES_{api.upper()}") or ENDPOINTS[api]
    return base.rstrip("/") + "/" + path.lstrip("/")


class _Calls:
    """One authorized session; a call that does not connect (or times out) raises Unreachable."""

    def __init__(self, creds):
        from google.auth.transport.requests import AuthorizedSession

        self.session = AuthorizedSession(creds, refresh_timeout=CONNECT_S + READ_S, max_refresh_attempts=1)

    def __call__(self, api: str, path: str, method: str = "GET", body: dict | None = None) -> tuple[int, dict]:
        import requests
        from google.auth import exceptions

        url = _url(api, path)
        try:
            r = self.session.request(method, url, json=body, timeout=(CONNECT_S, READ_S))
        except (requests.ConnectionError, requests.Timeout, exceptions.TransportError) as e:
            raise Unreachable(f"{api} at {url.split('/', 3)[2]} did not answer: {str(e)[:200]}") from None
        try:
            data = r.json()
        except ValueError:
            data = {}
        return r.status_code, data if isinstance(data, dict) else {}


def _why(data: dict) -> str:
    return str((data.get("error") or {}).get("message") or "no message")[:300]


def checks(cfg: dict, needs: Needs) -> list[Finding]:
    import google.auth
    from google.auth import exceptions

    project = str((cfg.get("provider") or {}).get("project_id") or "")
    try:
        creds, adc_project = google.auth.default(scopes=[SCOPE])
    except exceptions.DefaultCredentialsError as e:
        return [Finding("gcp credentials", FAIL, f"none resolve: {str(e)[:300]}",
                        "gcloud auth application-default login (or GOOGLE_APPLICATION_CREDENTIALS=key.json)")]
    calls, state = _Calls(creds), {}
    steps = [("gcp project", lambda: _project(calls, project, adc_project, state)),
             ("service accounts", lambda: _accounts(calls, cfg, project, state)),
             ("bucket roles", lambda: _bucket_roles(calls, project, needs, state)),
             ("gpu quotas", lambda: _quotas(calls, cfg, project, state)),
             ("images", lambda: _images(calls, cfg, state)),
             ("firewall", lambda: _firewall(calls, project, state))]
    return run_steps(steps, "Google Cloud", "check the network (a proxy, a VPN), then check again")


def _project(calls: _Calls, project: str, adc_project, state: dict) -> list[Finding]:
    from google.auth import exceptions

    try:
        code, data = calls("compute", f"projects/{project}")
    except exceptions.RefreshError as e:
        state["stop"] = True
        return [Finding("gcp credentials", FAIL, f"Google refused them: {str(e)[:300]}",
                        "gcloud auth application-default login, then check again")]
    if code != 200:
        state["stop"] = True
        hint = ("gcloud services enable compute.googleapis.com --project " + project if code == 403 else
                "set provider.project_id to your project id (`s2v cluster init gcp --project ID`)")
        return [Finding("gcp project", FAIL, f"{project}: HTTP {code}: {_why(data)}", hint)]
    state["project"] = data
    out = [Finding("gcp credentials", OK, f"accepted for project {project}" + (
        f" (their default project is {adc_project})" if adc_project and adc_project != project else ""))]
    items = {i.get("key"): str(i.get("value", "")) for i in (data.get("commonInstanceMetadata") or {}).get("items", [])}
    if items.get("enable-oslogin", "").upper() == "TRUE":
        out.append(Finding("os login", WARN, "the project enables OS Login, which ignores the SSH keys Ray's launcher "
                           "puts in instance metadata", "see docs/clusters.md \"GCP\" (OS Login): set enable-oslogin "
                           "FALSE on the nodes' metadata, or use an OS Login user in auth"))
    return out


def _accounts_of(cfg: dict, project: str) -> dict[str, str]:
    """service account email → the node types that run with it (the head: Ray's own account unless named)."""
    out: dict[str, list[str]] = {}
    head = cfg.get("head_node_type")
    for name, nt in (cfg.get("available_node_types") or {}).items():
        sas = ((nt or {}).get("node_config") or {}).get("serviceAccounts") or []
        emails = [str(s.get("email")) for s in sas if isinstance(s, dict) and s.get("email")]
        if not emails and name == head:
            emails = [f"{HEAD_ACCOUNT}@{project}.iam.gserviceaccount.com"]
        for e in emails:
            out.setdefault(e, []).append(name)
    return {e: ", ".join(sorted(n)) for e, n in out.items()}


def _accounts(calls: _Calls, cfg: dict, project: str, state: dict) -> list[Finding]:
    if state.get("stop"):
        return [Finding("service accounts", SKIP, "not checked: the project cannot be read")]
    out, state["emails"] = [], []
    for email, types in sorted(_accounts_of(cfg, project).items()):
        code, data = calls("iam", f"v1/projects/{project}/serviceAccounts/{urllib.parse.quote(email)}")
        check = f"service account {email.split('@')[0]} ({types})"
        if code == 200:
            state["emails"].append(email)  # its bucket roles are checked next
            out.append(Finding(check, OK, "exists"))
        elif code == 404 and email.startswith(HEAD_ACCOUNT + "@"):
            # Ray grants the account it creates roles/storage.objectAdmin on the project
            out.append(Finding(check, OK, "not yet: Ray's launcher creates it at the first up (you need "
                               "iam.serviceAccounts.create and resourcemanager.projects.setIamPolicy)"))
        elif code == 404:
            out.append(Finding(check, FAIL, f"{email} does not exist", f"gcloud iam service-accounts create "
                               f"{email.split('@')[0]} --project {project} (docs/clusters.md \"GCP\")"))
        else:
            out.append(Finding(check, WARN, f"cannot be read (HTTP {code}: {_why(data)})"))
    return out


def _members(bindings: list[dict], member: str, roles: set[str]) -> bool:
    return any(b.get("role") in roles and member in (b.get("members") or []) for b in bindings)


def _bucket_roles(calls: _Calls, project: str, needs: Needs, state: dict) -> list[Finding]:
    if state.get("stop"):
        return [Finding("bucket roles", SKIP, "not checked: the project cannot be read")]
    code, data = calls("cloudresourcemanager", f"v1/projects/{project}:getIamPolicy", "POST", {})
    project_bindings = data.get("bindings", []) if code == 200 else None
    out = []
    for b in sorted(needs.read):
        code, data = calls("storage", f"b/{urllib.parse.quote(b)}/iam")
        if code == 404:
            out.append(Finding(f"bucket {b}", FAIL, "does not exist", f"gcloud storage buckets create gs://{b} "
                               f"--project {project} --location REGION"))
            continue
        if code != 200:
            out.append(Finding(f"bucket {b}", WARN, f"its IAM policy cannot be read (HTTP {code}: {_why(data)})"))
            continue
        out.append(Finding(f"bucket {b}", OK, "exists"))
        for email in state.get("emails", []):
            member = f"serviceAccount:{email}"
            roles = WRITE_ROLES if b in needs.write else READ_ROLES
            ok = _members(data.get("bindings", []), member, roles) or (
                project_bindings is not None and _members(project_bindings, member, roles))
            kind = "read/write" if b in needs.write else "read"
            role = "objectAdmin" if b in needs.write else "objectViewer"
            out.append(Finding(f"{email.split('@')[0]} on {b}", OK if ok else FAIL if project_bindings is not None
                               else WARN, f"may {kind}" if ok else f"has no role that lets it {kind} gs://{b}" + (
                                   "" if project_bindings is not None else " on the bucket (the project's policy "
                                   "cannot be read)"),
                               "" if ok else f"gcloud storage buckets add-iam-policy-binding gs://{b} --member={member} "
                               f"--role=roles/storage.{role} (or run the <config>-iam/gcp-bucket-grants.sh init wrote)"))
    return out


def _accelerators(calls: _Calls, project: str, zone: str, nc: dict) -> tuple[list[tuple[str, int]] | None, str]:
    mt = str(nc.get("machineType", "")).rsplit("/", 1)[-1]
    code, data = calls("compute", f"projects/{project}/zones/{zone}/machineTypes/{mt}")
    if code != 200:
        return None, f"machine type {mt} is not offered in {zone} (HTTP {code}: {_why(data)})"
    accs = [(a.get("guestAcceleratorType"), int(a.get("guestAcceleratorCount", 0))) for a in data.get("accelerators", [])]
    accs += [(str(a.get("acceleratorType", "")).rsplit("/", 1)[-1], int(a.get("acceleratorCount", 0)))
             for a in nc.get("guestAccelerators") or []]
    return accs, mt


def _quotas(calls: _Calls, cfg: dict, project: str, state: dict) -> list[Finding]:
    if state.get("stop"):
        return [Finding("gpu quotas", SKIP, "not checked: the project cannot be read")]
    prov = cfg.get("provider") or {}
    region, zone = str(prov.get("region")), str(prov.get("availability_zone"))
    code, data = calls("compute", f"projects/{project}/regions/{region}")
    if code != 200:
        return [Finding(f"region {region}", FAIL, f"HTTP {code}: {_why(data)}", "set provider.region to a GCP region")]
    limits = {q.get("metric"): float(q.get("limit", 0)) for q in data.get("quotas", [])}
    limits["GPUS_ALL_REGIONS"] = {q.get("metric"): float(q.get("limit", 0)) for q in
                                  (state.get("project") or {}).get("quotas", [])}.get("GPUS_ALL_REGIONS", -1)
    out = []
    for name, nt in sorted((cfg.get("available_node_types") or {}).items()):
        nc = (nt or {}).get("node_config") or {}
        accs, mt = _accelerators(calls, project, zone, nc)
        if accs is None:
            out.append(Finding(f"machine type ({name})", FAIL, mt, "pick a zone that offers it (metadata.s2v.zones) "
                               "or another machine type"))
            continue
        spot = str((nc.get("scheduling") or {}).get("provisioningModel", "")).upper() == "SPOT" or bool(
            (nc.get("scheduling") or {}).get("preemptible"))
        count = 1 if name == cfg.get("head_node_type") else int(nt.get("max_workers", cfg.get("max_workers", 0)) or 0)
        for acc, per_node in accs:
            stem = GPU_METRICS.get(acc)
            check = f"{'spot' if spot else 'on-demand'} GPU quota for {mt} ({name})"
            if stem is None:
                out.append(Finding(check, SKIP, f"no quota metric known for {acc}"))
                continue
            metric = f"{'PREEMPTIBLE_' if spot else ''}{stem}_GPUS"
            for m, limit in ((metric, limits.get(metric, 0.0)), ("GPUS_ALL_REGIONS", limits["GPUS_ALL_REGIONS"])):
                if limit < 0:
                    continue  # the project's answer had no global GPU quota
                total = per_node * count
                status = FAIL if limit < per_node else WARN if limit < total else OK
                out.append(Finding(f"{check} {m}", status, f"{limit:g} in {region if m == metric else 'all regions'}"
                                   f"; {per_node} per node, {total} at max_workers", "" if status == OK else
                                   f"ask for {total}: console → IAM & Admin → Quotas → {m} ({region})"))
    return out


def _images(calls: _Calls, cfg: dict, state: dict) -> list[Finding]:
    if state.get("stop"):
        return [Finding("images", SKIP, "not checked: the project cannot be read")]
    images = sorted({str((d.get("initializeParams") or {}).get("sourceImage")) for nt in
                     (cfg.get("available_node_types") or {}).values()
                     for d in (((nt or {}).get("node_config") or {}).get("disks") or [])
                     if (d.get("initializeParams") or {}).get("sourceImage")})
    out = []
    for image in images:
        path = re.sub(r"^https://[^/]+/compute/v1/", "", image)
        code, data = calls("compute", path)
        state_ = (data.get("deprecated") or {}).get("state", "")
        if code != 200 or data.get("status") not in (None, "READY") or state_ in ("OBSOLETE", "DELETED"):
            out.append(Finding(f"image {image}", FAIL, f"does not resolve (HTTP {code}: {_why(data) if code != 200 else state_ or data.get('status')})",
                               "name an image or family that exists (gcloud compute images list)"))
        else:
            out.append(Finding(f"image {image}", WARN if state_ == "DEPRECATED" else OK,
                               f"{data.get('name', '?')}" + (" (deprecated)" if state_ == "DEPRECATED" else "")))
    return out


def _covers(rule: dict, port: int) -> bool:
    for allowed in rule.get("allowed") or []:
        if allowed.get("IPProtocol") not in ("tcp", "all"):
            continue
        for spec in allowed.get("ports") or ["0-65535"]:
            lo, _, hi = str(spec).partition("-")
            if int(lo) <= port <= int(hi or lo):
                return True
    return False


def _firewall(calls: _Calls, project: str, state: dict) -> list[Finding]:
    if state.get("stop"):
        return [Finding("firewall", SKIP, "not checked: the project cannot be read")]
    code, data = calls("compute", f"projects/{project}/global/firewalls")
    if code != 200:
        return [Finding("firewall", WARN, f"rules cannot be read (HTTP {code}: {_why(data)})")]
    rules = [r for r in data.get("items", []) if r.get("direction", "INGRESS") == "INGRESS" and not r.get("disabled")
             and str(r.get("network", "")).endswith("/default")]
    public = [r for r in rules if "0.0.0.0/0" in (r.get("sourceRanges") or [])]
    exposed = sorted({p for r in public for p in PRIVATE_PORTS if _covers(r, p)})
    if exposed:
        return [Finding("firewall", FAIL, f"network default opens port(s) {', '.join(map(str, exposed))} to the "
                        "internet: the Jobs API (8265) runs code for whoever reaches it",
                        "delete or narrow those rules; s2v reaches the head through SSH")]
    if not any(_covers(r, 22) for r in rules):
        return [Finding("firewall", FAIL, "no rule on network default lets SSH (22) in: the launcher cannot reach "
                        "the nodes", f"gcloud compute firewall-rules create allow-ssh --network default --allow "
                        f"tcp:22 --project {project}")]
    return [Finding("firewall", OK, "SSH allowed on network default; the Jobs API, GCS and client ports are not public")]
