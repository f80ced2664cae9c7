"""`s2v cluster check` on AWS: credentials, the instance profiles and what their roles allow, the spot service-linked
role, buckets, vCPU quotas, images, the key pair and security groups — each a Finding (infra/clusters/preflight.py)."""

from __future__ import annotations

import re
from typing import Any

from infra.clusters.aws_policy import decide
from infra.clusters.preflight import CONNECT_S, FAIL, OK, READ_S, SKIP, WARN, Finding, Needs, Unreachable, run_steps

SPOT_ROLE = "AWSServiceRoleForEC2Spot"
SPOT_SERVICE = "spot.amazonaws.com"
# What the head's autoscaler calls to launch and stop workers (Ray's AWS provider).
HEAD_ACTIONS = ("ec2:RunInstances", "ec2:TerminateInstances", "ec2:CreateTags", "ec2:DescribeInstances")
# Ports that must never be open to the internet: the Jobs API runs code for whoever reaches it; GCS, client server.
PRIVATE_PORTS = (8265, 6379, 10001)
PUBLIC = ("0.0.0.0/0", "::/0")
DOCS = "docs/clusters.md, \"One-time account setup\""


class _Calls:
    """boto3 clients with one try and short timeouts; an unreachable endpoint raises Unreachable."""

    def __init__(self, region: str):
        import boto3
        from botocore.config import Config

        self.session = boto3.Session(region_name=region)
        self.region = region
        self.config = Config(connect_timeout=CONNECT_S, read_timeout=READ_S, retries={"total_max_attempts": 1},
                             region_name=region)
        self.clients: dict[str, Any] = {}

    def __call__(self, service: str, op: str, **kw) -> dict:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError

        if service not in self.clients:
            self.clients[service] = self.session.client(service, config=self.config)
        client = self.clients[service]
        try:
            return getattr(client, op)(**kw)
        except (BotoConnectionError, HTTPClientError) as e:
            raise Unreachable(f"{service} at {client.meta.endpoint_url} did not answer: {e}") from None


def _code(e: Exception) -> str:
    return str(getattr(e, "response", {}).get("Error", {}).get("Code", "")) or type(e).__name__


def _client_error():
    from botocore.exceptions import ClientError

    return ClientError


def checks(cfg: dict, needs: Needs) -> list[Finding]:
    from botocore.exceptions import BotoCoreError

    region = str((cfg.get("provider") or {}).get("region") or "us-east-1")
    try:
        calls = _Calls(region)
        creds = calls.session.get_credentials()
    except BotoCoreError as e:  # a named profile that does not exist, a broken config file
        return [Finding("aws credentials", FAIL, str(e), "fix ~/.aws/config or AWS_PROFILE (`aws configure list`)")]
    if creds is None:
        return [Finding("aws credentials", FAIL, "boto3 found none (environment, ~/.aws, SSO, instance role)",
                        "`aws configure` or `aws sso login` (and AWS_PROFILE), then check again")]
    state: dict[str, Any] = {"method": getattr(creds, "method", "?")}
    steps = [("aws identity", lambda: _identity(calls, state)),
             ("instance profiles", lambda: _profiles(calls, cfg, needs, state)),
             ("spot service-linked role", lambda: _spot_role(calls, cfg, state)),
             ("buckets", lambda: _buckets(calls, needs, region)),
             ("vCPU quotas", lambda: _quotas(calls, cfg)),
             ("images", lambda: _images(calls, cfg)),
             ("key pair", lambda: _key_pairs(calls, cfg)),
             ("security groups", lambda: _security_groups(calls, cfg))]
    return run_steps(steps, "AWS", "check the network (a proxy, a VPN, AWS_ENDPOINT_URL*), then check again")


def _identity(calls: _Calls, state: dict) -> list[Finding]:
    try:
        who = calls("sts", "get_caller_identity")
    except _client_error() as e:
        state["stop"] = True
        return [Finding("aws credentials", FAIL, f"AWS refused them ({_code(e)}): {e}",
                        "renew them (`aws sso login`, new access keys) and check again")]
    state["account"] = who["Account"]
    return [Finding("aws credentials", OK, f"{who['Arn']} (account {who['Account']}, from {state['method']})")]


def _profile_names(cfg: dict) -> dict[str, str]:
    """node type → instance profile name (an Arn is cut to its name)."""
    out = {}
    for name, nt in (cfg.get("available_node_types") or {}).items():
        p = ((nt or {}).get("node_config") or {}).get("IamInstanceProfile") or {}
        value = p.get("Name") or str(p.get("Arn") or "").rsplit("/", 1)[-1]
        if value:
            out[name] = value
    return out


def _role_docs(calls: _Calls, role: str) -> list[dict]:
    """The role's identity policies: inline and attached (AWS-managed ones too)."""
    import json
    import urllib.parse

    def doc(d):
        return json.loads(urllib.parse.unquote(d)) if isinstance(d, str) else d

    docs = [doc(calls("iam", "get_role_policy", RoleName=role, PolicyName=n)["PolicyDocument"])
            for n in calls("iam", "list_role_policies", RoleName=role)["PolicyNames"]]
    for p in calls("iam", "list_attached_role_policies", RoleName=role)["AttachedPolicies"]:
        version = calls("iam", "get_policy", PolicyArn=p["PolicyArn"])["Policy"]["DefaultVersionId"]
        docs.append(doc(calls("iam", "get_policy_version", PolicyArn=p["PolicyArn"],
                              VersionId=version)["PolicyVersion"]["Document"]))
    return docs


def _profiles(calls: _Calls, cfg: dict, needs: Needs, state: dict) -> list[Finding]:
    if state.get("stop"):
        return [Finding("instance profiles", SKIP, "not checked: the credentials were refused")]
    head = cfg.get("head_node_type")
    names = _profile_names(cfg)
    out = [] if head in names else [Finding("instance profile (head)", OK, "none named: Ray's launcher creates and "
                                            "attaches ray-autoscaler-v1 (its own policy covers launching workers)")]
    roles: dict[str, tuple[str, list[dict]]] = {}
    for profile in sorted(set(names.values())):
        check = f"instance profile {profile}"
        try:
            got = calls("iam", "get_instance_profile", InstanceProfileName=profile)["InstanceProfile"]
        except _client_error() as e:
            if _code(e) == "NoSuchEntity":
                out.append(Finding(check, FAIL, f"does not exist in account {state.get('account')}; node types "
                                   f"{', '.join(n for n, p in names.items() if p == profile)} name it",
                                   f"create it with its role and policy ({DOCS}, step 2)"))
            else:
                out.append(Finding(check, WARN, f"cannot be read ({_code(e)}): whether it exists is unknown",
                                   "allow iam:GetInstanceProfile, iam:GetRole and iam:List*/Get*Policy* to the user "
                                   "who checks"))
            continue
        if not got.get("Roles"):
            out.append(Finding(check, FAIL, "has no role: nodes launched with it get no credentials",
                               f"aws iam add-role-to-instance-profile --instance-profile-name {profile} --role-name …"))
            continue
        role = got["Roles"][0]
        roles[profile] = (role["Arn"], _role_docs(calls, role["RoleName"]))
        bound = calls("iam", "get_role", RoleName=role["RoleName"])["Role"].get("PermissionsBoundary")
        out.append(Finding(check, WARN if bound else OK, f"role {role['RoleName']}" + (
            ": it has a permissions boundary, which this check does not evaluate" if bound else "")))
    for node_type, profile in sorted(names.items()):
        if profile in roles:
            out += _grants(node_type, profile, *roles[profile], needs, node_type == head,
                           [roles[p][0] for n, p in names.items() if n != head and p in roles])
    return out


def _grants(node_type: str, profile: str, role_arn: str, docs: list[dict], needs: Needs, is_head: bool,
            worker_roles: list[str]) -> list[Finding]:
    """What the role's own policies allow, statement by statement (SCPs and bucket policies are not seen here)."""
    wanted: list[tuple[str, str, str]] = []  # (action, resource, why)
    for b in sorted(needs.read):
        wanted += [("s3:GetObject", f"arn:aws:s3:::{b}/s2v-check", f"read {b}"),
                   ("s3:ListBucket", f"arn:aws:s3:::{b}", f"list {b}")]
    for b in sorted(needs.write):
        wanted += [("s3:PutObject", f"arn:aws:s3:::{b}/s2v-check", f"write {b}"),
                   ("s3:DeleteObject", f"arn:aws:s3:::{b}/s2v-check", f"replace files in {b}")]
    if is_head:
        wanted += [(a, "*", "launch and stop workers") for a in HEAD_ACTIONS]
        wanted += [("iam:PassRole", arn, f"hand {arn.rsplit('/', 1)[-1]} to workers") for arn in sorted(set(worker_roles))]
    missing = [(a, r, why) for a, r, why in wanted if decide(docs, a, r) != "allow"]
    check = f"{profile} grants ({node_type})"
    if not missing:
        return [Finding(check, OK, f"its role allows the {len(wanted)} actions a run needs of it")]
    lines = "; ".join(f"{a} on {r} ({why}{', denied' if decide(docs, a, r) == 'deny' else ''})" for a, r, why in missing)
    fixes = ("`s2v cluster init --force … --input-bucket/--output-bucket` writes policies covering every bucket "
             "(in <config>-iam/); put them on the role: aws iam put-role-policy --role-name "
             f"{role_arn.rsplit('/', 1)[-1]} …")
    return [Finding(check, FAIL, f"its role does not allow {lines}", fixes)]


def _spot_role(calls: _Calls, cfg: dict, state: dict) -> list[Finding]:
    types = cfg.get("available_node_types") or {}
    spot = [n for n, nt in types.items() if ((nt or {}).get("node_config") or {}).get("InstanceMarketOptions")]
    if not spot:
        return [Finding("spot service-linked role", SKIP, "no spot node types")]
    if state.get("stop"):
        return [Finding("spot service-linked role", SKIP, "not checked: the credentials were refused")]
    try:
        calls("iam", "get_role", RoleName=SPOT_ROLE)
        return [Finding("spot service-linked role", OK, f"{SPOT_ROLE} exists")]
    except _client_error() as e:
        if _code(e) != "NoSuchEntity":
            return [Finding("spot service-linked role", WARN, f"cannot read {SPOT_ROLE} ({_code(e)})",
                            "allow iam:GetRole to the user who checks")]
    head_profile = _profile_names(cfg).get(cfg.get("head_node_type"))
    arn = f"arn:aws:iam::{state.get('account')}:role/aws-service-role/{SPOT_SERVICE}/{SPOT_ROLE}"
    if head_profile:
        try:
            role = calls("iam", "get_instance_profile", InstanceProfileName=head_profile)["InstanceProfile"]["Roles"][0]
            docs = _role_docs(calls, role["RoleName"])
        except (_client_error(), IndexError, KeyError):
            docs = []
        if decide(docs, "iam:CreateServiceLinkedRole", arn, {"iam:AWSServiceName": SPOT_SERVICE}) == "allow":
            return [Finding("spot service-linked role", OK, f"{SPOT_ROLE} does not exist yet; the head's role may "
                            "create it at the first spot launch")]
    return [Finding("spot service-linked role", FAIL, f"{SPOT_ROLE} does not exist and the head's role may not create "
                    f"it: every spot launch of {', '.join(spot)} would fail (AuthFailure.ServiceLinkedRoleCreation"
                    "NotPermitted) and the run would buy on-demand after spot_wait_s",
                    f"aws iam create-service-linked-role --aws-service-name {SPOT_SERVICE} (once per account)")]


def _buckets(calls: _Calls, needs: Needs, region: str) -> list[Finding]:
    out = []
    for b in sorted(needs.read):
        check = f"bucket {b}"
        try:
            head = calls("s3", "head_bucket", Bucket=b)
        except _client_error() as e:
            code = _code(e)
            if code in ("301", "PermanentRedirect"):  # S3 answers a bucket of another region with a redirect
                where = e.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("x-amz-bucket-region")
                out.append(Finding(check, WARN, f"in {where or 'another region'}, not the cluster's {region}: every "
                                   "byte crosses regions (slow, billed)", "keep the cluster and its buckets in one "
                                   "region"))
            elif code in ("404", "NoSuchBucket"):
                out.append(Finding(check, FAIL, "does not exist", f"aws s3 mb s3://{b} --region {region}"))
            elif code in ("403", "AccessDenied"):
                mine = b == needs.work
                out.append(Finding(check, FAIL if mine else WARN, "your credentials may not read it" + (
                    ": this machine stages inputs and the manifest to the work area" if mine else
                    " (the nodes' roles may still: see their grants)"),
                    "allow s3:ListBucket, s3:GetObject and s3:PutObject on it to the user who renders"
                    if mine else ""))
            else:
                out.append(Finding(check, WARN, f"cannot be checked ({code})"))
            continue
        where = (head.get("ResponseMetadata", {}).get("HTTPHeaders", {}) or {}).get("x-amz-bucket-region")
        far = bool(where) and where != region
        out.append(Finding(check, WARN if far else OK, f"in {where or 'its region'}" + (
            f", not the cluster's {region}: every byte crosses regions (slow, billed)" if far else ""),
            "keep the cluster and its buckets in one region" if far else ""))
    return out


def _family(instance_type: str) -> tuple[str, str]:
    """'p5.4xlarge' → ('P', 'P5'); 'g6e.xlarge' → ('G', 'G6'); 'vt1.3xlarge' → ('VT', 'VT1')."""
    m = re.match(r"([a-z]+)(\d*)", instance_type.split(".", 1)[0])
    letters, gen = (m.group(1), m.group(2)) if m else (instance_type, "")
    return letters.upper(), (letters + gen).upper()


def _quota_families(name: str) -> tuple[str, set[str]] | None:
    """A vCPU quota's market and the families it counts: 'All P4, P3 and P2 Spot Instance Requests' → ('spot',
    {'P4', 'P3', 'P2'}); 'Running On-Demand Standard (A, C, …) instances' → ('on-demand', {'A', 'C', …})."""
    m = re.match(r"Running On-Demand (.+) instances$", name) or re.match(r"All (.+) Spot Instance Requests$", name)
    if not m:
        return None
    group = m.group(1)
    group = re.sub(r"^Standard \((.*)\)$", r"\1", group)
    return ("on-demand" if name.startswith("Running") else "spot",
            {t.strip().upper() for t in re.split(r",|\band\b", group) if t.strip()})


def _quotas(calls: _Calls, cfg: dict) -> list[Finding]:
    types = cfg.get("available_node_types") or {}
    head = cfg.get("head_node_type")
    asked: dict[tuple[str, str], list[tuple[str, int]]] = {}  # (market, instance type) → [(node type, count)]
    for name, nt in types.items():
        nc = (nt or {}).get("node_config") or {}
        if nc.get("InstanceType"):
            market = "spot" if nc.get("InstanceMarketOptions") else "on-demand"
            count = 1 if name == head else int((nt or {}).get("max_workers", cfg.get("max_workers", 0)) or 0)
            asked.setdefault((market, nc["InstanceType"]), []).append((name, count))
    got = calls("ec2", "describe_instance_types", InstanceTypes=sorted({t for _, t in asked}))["InstanceTypes"]
    vcpus = {t["InstanceType"]: int(t["VCpuInfo"]["DefaultVCpus"]) for t in got}
    quotas = _ec2_quotas(calls)
    out = []
    for (market, itype), users in sorted(asked.items()):
        letters, family = _family(itype)
        match = [(q, fams) for q, (mk, fams, _limit) in quotas.items() if mk == market and (family in fams or letters in fams)]
        check = f"{market} vCPU quota for {itype}"
        if itype not in vcpus:
            out.append(Finding(check, FAIL, f"{itype} is not an instance type in {calls.region}",
                               "pick a type EC2 offers in the region (`s2v cluster init --gpu-type`)"))
            continue
        if not match:
            out.append(Finding(check, SKIP, f"no Service Quotas vCPU quota names the {letters} family"))
            continue
        name, _ = max(match, key=lambda m: family in m[1])  # 'P5' over 'P'
        limit, one = quotas[name][2], vcpus[itype]
        total = sum(c for _, c in users) * one
        who = ", ".join(n for n, _ in users)
        status = FAIL if limit < one else WARN if limit < total else OK
        out.append(Finding(check, status, f"'{name}' is {limit:g} vCPUs in {calls.region}; {who} need(s) {one} per "
                           f"node, {total} at max_workers" + (" — not one node fits" if status == FAIL else
                                                              " — fewer nodes than max_workers fit" if status == WARN
                                                              else ""),
                           "" if status == OK else f"ask for {total} vCPUs: Service Quotas console → Amazon EC2 → "
                           f"'{name}' (new accounts start at 0 for GPU families; running instances count too)"))
    return out


def _ec2_quotas(calls: _Calls) -> dict[str, tuple[str, set[str], float]]:
    """vCPU quota name → (market, families, applied value), defaults where none is applied."""
    found: dict[str, tuple[str, set[str], float]] = {}
    for op in ("list_service_quotas", "list_aws_default_service_quotas"):
        token = None
        for _page in range(20):
            kw = {"ServiceCode": "ec2", "MaxResults": 100, **({"NextToken": token} if token else {})}
            try:
                page = calls("service-quotas", op, **kw)
            except _client_error():
                break
            for q in page.get("Quotas", []):
                parsed = _quota_families(q.get("QuotaName", ""))
                if parsed and q["QuotaName"] not in found:
                    found[q["QuotaName"]] = (*parsed, float(q.get("Value", 0)))
            token = page.get("NextToken")
            if not token:
                break
    return found


def _images(calls: _Calls, cfg: dict) -> list[Finding]:
    out = []
    for image in sorted({str(((nt or {}).get("node_config") or {}).get("ImageId") or "")
                         for nt in (cfg.get("available_node_types") or {}).values()} - {""}):
        ami, source = image, ""
        if image.startswith("resolve:ssm:"):
            param = image[len("resolve:ssm:"):]
            try:
                ami = calls("ssm", "get_parameter", Name=param)["Parameter"]["Value"]
                source = f" ({param})"
            except _client_error() as e:
                out.append(Finding(f"image {param}", FAIL, f"the SSM parameter cannot be read in {calls.region} "
                                   f"({_code(e)})", "name an image EC2 has in the region (`s2v cluster init "
                                   "--image ami-…`), or allow ssm:GetParameter"))
                continue
        try:
            got = calls("ec2", "describe_images", ImageIds=[ami])["Images"]
        except _client_error() as e:
            got, why = [], _code(e)
        else:
            why = "not found"
        state = got[0].get("State") if got else None
        ok = state == "available"
        out.append(Finding(f"image {ami}{source}", OK if ok else FAIL, f"{state or why} in {calls.region}",
                           "" if ok else "pick an image that exists in the region (`s2v cluster init` pins today's)"))
    return out


def _key_pairs(calls: _Calls, cfg: dict) -> list[Finding]:
    names = sorted({str(((nt or {}).get("node_config") or {}).get("KeyName")) for nt in
                    (cfg.get("available_node_types") or {}).values() if ((nt or {}).get("node_config") or {}).get("KeyName")})
    if not names:
        return [Finding("key pair", OK, "none named: Ray's launcher creates one (ray-autoscaler_*) at the first up")]
    out = []
    for name in names:
        try:
            calls("ec2", "describe_key_pairs", KeyNames=[name])
            out.append(Finding(f"key pair {name}", OK, f"exists in {calls.region}"))
        except _client_error() as e:
            out.append(Finding(f"key pair {name}", FAIL, f"not in {calls.region} ({_code(e)})",
                               f"aws ec2 import-key-pair --key-name {name} --public-key-material fileb://KEY.pub"))
    return out


def _security_groups(calls: _Calls, cfg: dict) -> list[Finding]:
    ids = sorted({g for nt in (cfg.get("available_node_types") or {}).values()
                  for g in (((nt or {}).get("node_config") or {}).get("SecurityGroupIds") or [])})
    if ids:
        groups = calls("ec2", "describe_security_groups", GroupIds=ids)["SecurityGroups"]
    else:
        name = f"ray-autoscaler-{cfg.get('cluster_name')}"
        groups = calls("ec2", "describe_security_groups",
                       Filters=[{"Name": "group-name", "Values": [name]}])["SecurityGroups"]
        if not groups:
            return [Finding("security groups", OK, f"none named, none made yet: Ray's launcher creates {name} "
                            "(SSH only from outside)")]
    out = []
    for g in groups:
        public = [(p.get("FromPort", 0), p.get("ToPort", 65535)) for p in g.get("IpPermissions", [])
                  if any(r.get("CidrIp") in PUBLIC for r in p.get("IpRanges", []))
                  or any(r.get("CidrIpv6") in PUBLIC for r in p.get("Ipv6Ranges", []))]
        exposed = [port for port in PRIVATE_PORTS if any(lo <= port <= hi for lo, hi in public)]
        ssh = any(lo <= 22 <= hi for lo, hi in ((p.get("FromPort", 0), p.get("ToPort", 65535))
                                                 for p in g.get("IpPermissions", [])))
        check = f"security group {g['GroupId']} ({g.get('GroupName', '')})"
        if exposed:
            out.append(Finding(check, FAIL, f"port(s) {', '.join(map(str, exposed))} open to the internet: the "
                               "Jobs API (8265) runs code for whoever reaches it", "remove those ingress rules; s2v "
                               "reaches the head through SSH"))
        elif not ssh:
            out.append(Finding(check, FAIL, "no ingress on port 22: the launcher cannot reach the nodes",
                               "allow TCP 22 from your address"))
        else:
            out.append(Finding(check, OK, "SSH open; the Jobs API, GCS and client ports are not public"))
    return out
