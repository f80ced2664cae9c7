"""`s2v cluster check` on AWS against loopback fakes only, and the gate `up` passes first.

moto's server (ThreadedMotoServer on 127.0.0.1) answers IAM, STS, EC2, SSM and S3. Service Quotas is a small
BaseHTTPRequestHandler on 127.0.0.1 answering its documented JSON protocol (ListServiceQuotas /
ListAWSDefaultServiceQuotas with the EC2 vCPU quota names AWS uses), because moto implements Service Quotas for VPC
only. Credentials are fake and in the environment, the instance metadata service is disabled, every endpoint is
loopback, and every server is stopped by its fixture."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import yaml
from http_fakes import send_json, serving
from typer.testing import CliRunner

from orchestrator.cli.cluster import app

ACCOUNT = "123456789012"  # moto's account
AMI_PARAM = "/aws/service/ami-amazon-linux-latest/amzn2-ami-hvm-x86_64-gp2"  # a public parameter moto serves
QUOTAS = {"Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances": 64.0,
          "Running On-Demand P instances": 64.0, "All P5 Spot Instance Requests": 64.0,
          "All P4, P3 and P2 Spot Instance Requests": 0.0, "Running On-Demand G and VT instances": 0.0,
          "All G and VT Spot Instance Requests": 0.0}


class _Quotas(BaseHTTPRequestHandler):
    """Service Quotas' JSON 1.1 protocol for the two list calls the check makes (applied, then defaults)."""

    values: dict[str, float] = {}

    def do_POST(self):
        json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        op = self.headers.get("X-Amz-Target", "").rsplit(".", 1)[-1]
        if op in ("ListServiceQuotas", "ListAWSDefaultServiceQuotas"):
            code, out = 200, {"Quotas": [{"ServiceCode": "ec2", "QuotaName": n, "QuotaCode": f"L-{i:08X}",
                                          "Value": v, "Unit": "None", "Adjustable": True}
                                         for i, (n, v) in enumerate(self.values.items())]}
        else:
            code, out = 400, {"__type": "UnknownOperationException", "message": op}
        send_json(self, code, out, "application/x-amz-json-1.1")

    def log_message(self, *a):
        pass


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def offline_env(monkeypatch, tmp_path: Path) -> None:
    """Fake credentials, no metadata service, a HOME of the test's own (pinned keys, ~/.aws)."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    for k, v in {"HOME": str(home), "AWS_ACCESS_KEY_ID": "AKIDTEST", "AWS_SECRET_ACCESS_KEY": "secret",
                 "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": str(tmp_path / "none"),
                 "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "S2V_CLUSTERS_DIR": str(tmp_path / "c")}.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(k, raising=False)


@pytest.fixture
def aws(monkeypatch, tmp_path):
    """moto and the quotas fake on 127.0.0.1; yields (boto3 client factory, quotas handler)."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    offline_env(monkeypatch, tmp_path)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log, into streams CliRunner closes
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    # moto's accounts live in this process, not in the server: each test starts from an empty one
    urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST"), timeout=10)
    _Quotas.values = dict(QUOTAS)
    try:
        with serving(_Quotas) as quotas:
            monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
            monkeypatch.setenv("AWS_ENDPOINT_URL_SERVICE_QUOTAS", f"http://127.0.0.1:{quotas.server_port}")
            yield lambda svc: boto3.client(svc, region_name="us-west-2", endpoint_url=f"http://{host}:{port}")
    finally:
        moto.stop()


def write_config(tmp_path: Path, *extra: str) -> Path:
    """`s2v cluster init aws` for bucket work-bucket in us-west-2 (p5.4xlarge workers), images moto knows."""
    out = tmp_path / "cluster.yaml"
    res = CliRunner().invoke(app, ["init", "aws", "--bucket", "work-bucket", "--region", "us-west-2",
                                   "--no-resolve-images", "--no-resolve-zones", "--out", str(out), "--force", *extra])
    assert res.exit_code == 0, res.output
    cfg = yaml.safe_load(out.read_text())
    for nt in cfg["available_node_types"].values():
        nt["node_config"]["ImageId"] = f"resolve:ssm:{AMI_PARAM}"
    out.write_text(yaml.safe_dump(cfg))
    return out


def make_account(client, config: Path, *, spot_role: bool = True, head_policy: dict | None = None,
                 buckets=("work-bucket",)) -> None:
    """The IAM pieces docs/clusters.md creates, from the policies `init` wrote beside the config."""
    iam, s3 = client("iam"), client("s3")
    trust = (Path(__file__).resolve().parents[1] / "infra/clusters/iam/aws-ec2-trust.json").read_text()
    for who in ("head", "worker"):
        doc = (config.with_name(f"{config.stem}-iam") / f"aws-{who}-policy.json").read_text()
        doc = json.dumps(head_policy) if who == "head" and head_policy else doc.replace("ACCOUNT", ACCOUNT)
        iam.create_role(RoleName=f"s2v-{who}", AssumeRolePolicyDocument=trust)
        iam.put_role_policy(RoleName=f"s2v-{who}", PolicyName=f"s2v-{who}", PolicyDocument=doc)
        iam.create_instance_profile(InstanceProfileName=f"s2v-{who}")
        iam.add_role_to_instance_profile(InstanceProfileName=f"s2v-{who}", RoleName=f"s2v-{who}")
    if spot_role:
        create_spot_role(iam)
    for b in buckets:
        s3.create_bucket(Bucket=b, CreateBucketConfiguration={"LocationConstraint": "us-west-2"})


def create_spot_role(iam) -> None:
    """What `aws iam create-service-linked-role --aws-service-name spot.amazonaws.com` makes. Made by hand: moto's
    create_service_linked_role names it AWSServiceRoleForSpot, not AWS's AWSServiceRoleForEC2Spot."""
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                     "Principal": {"Service": "spot.amazonaws.com"}}]}
    iam.create_role(RoleName="AWSServiceRoleForEC2Spot", Path="/aws-service-role/spot.amazonaws.com/",
                    AssumeRolePolicyDocument=json.dumps(trust))


def statuses(output: str) -> dict[str, str]:
    """check name → status, from the command's lines (`STATUS  check: detail`)."""
    out = {}
    for line in output.splitlines():
        head, _, _ = line.partition(": ")
        parts = head.split(None, 1)
        if len(parts) == 2 and parts[0] in ("ok", "warn", "FAIL", "skip"):
            out[parts[1]] = parts[0]
    return out


def test_a_ready_account_passes_every_check(aws, tmp_path):
    import boto3

    config = write_config(tmp_path, "--input-bucket", "far-bucket")
    make_account(aws, config)
    boto3.client("s3", region_name="eu-west-1", endpoint_url=aws("s3").meta.endpoint_url).create_bucket(
        Bucket="far-bucket", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    res = CliRunner().invoke(app, ["check", str(config)])
    assert res.exit_code == 0, res.output
    got = statuses(res.output)
    assert got["bucket far-bucket"] == "warn" and "eu-west-1, not the cluster's us-west-2" in res.output
    for name in ("aws credentials", "instance profile s2v-head", "instance profile s2v-worker",
                 "s2v-head grants (head)", "s2v-worker grants (gpu_spot)", "spot service-linked role",
                 "bucket work-bucket", "spot vCPU quota for p5.4xlarge", "on-demand vCPU quota for p5.4xlarge",
                 "on-demand vCPU quota for m6i.xlarge", "library boto3", "library boto3 on the nodes", "ssh client"):
        assert got.get(name) == "ok", (name, res.output)
    assert "image ami-" in res.output and AMI_PARAM in res.output
    assert "ready:" in res.output and "Traceback" not in res.output


def test_an_empty_account_is_a_list_of_what_to_do(aws, tmp_path):
    """No spot role (and a head policy without the right to create it), no P5 spot quota, a GPU image that is not
    in the region, the worker's profile missing: each is a named finding with its fix, exit 2."""
    config = write_config(tmp_path)
    cfg = yaml.safe_load(config.read_text())
    cfg["available_node_types"]["gpu_spot"]["node_config"]["ImageId"] = "ami-0123456789abcdef0"
    config.write_text(yaml.safe_dump(cfg))
    head = json.loads((tmp_path / "cluster-iam" / "aws-head-policy.json").read_text().replace("ACCOUNT", ACCOUNT))
    head["Statement"] = [s for s in head["Statement"] if s.get("Sid") != "CreateTheSpotServiceLinkedRoleOnce"]
    make_account(aws, config, spot_role=False, head_policy=head)
    aws("iam").remove_role_from_instance_profile(InstanceProfileName="s2v-worker", RoleName="s2v-worker")
    aws("iam").delete_instance_profile(InstanceProfileName="s2v-worker")
    _Quotas.values["All P5 Spot Instance Requests"] = 0.0
    res = CliRunner().invoke(app, ["check", str(config)])
    assert res.exit_code == 2, res.output
    got = statuses(res.output)
    assert got["spot service-linked role"] == "FAIL"
    assert "aws iam create-service-linked-role --aws-service-name spot.amazonaws.com" in res.output
    assert got["spot vCPU quota for p5.4xlarge"] == "FAIL" and "All P5 Spot Instance Requests" in res.output
    assert got["on-demand vCPU quota for p5.4xlarge"] == "ok"  # the P5 on-demand quota is a separate one
    assert got["image ami-0123456789abcdef0"] == "FAIL"
    assert got["instance profile s2v-worker"] == "FAIL" and "does not exist" in res.output
    assert "checks of" in res.output and "would fail" in res.output and "Traceback" not in res.output

    # The spot role created once (docs/clusters.md step 3): that finding turns OK.
    create_spot_role(aws("iam"))
    assert statuses(CliRunner().invoke(app, ["check", str(config)]).output)["spot service-linked role"] == "ok"


def test_the_head_may_create_the_spot_role_under_the_shipped_policy(aws, tmp_path):
    config = write_config(tmp_path)
    make_account(aws, config, spot_role=False)
    res = CliRunner().invoke(app, ["check", str(config)])
    assert res.exit_code == 0, res.output
    assert "may create it at the first spot launch" in res.output


def test_manifest_buckets_are_checked_against_the_grants_and_the_roles(aws, tmp_path):
    """A catalog publishing to a bucket the config's grants do not cover: the row and field are named (as `render
    --cluster` would refuse them), the roles miss the write, and the bucket itself is missing."""
    config = write_config(tmp_path)
    make_account(aws, config)
    manifest = tmp_path / "m.yaml"
    manifest.write_text("jobs:\n  - {id: a, audio: s3://work-bucket/a.wav, image: s3://work-bucket/p.png, "
                        "output: s3://publish-bucket/out}\n")
    res = CliRunner().invoke(app, ["check", str(config), "--manifest", str(manifest)])
    assert res.exit_code == 2, res.output
    got = statuses(res.output)
    assert got["bucket publish-bucket"] == "FAIL"
    assert got["s2v-worker grants (gpu_spot)"] == "FAIL" and "s3:PutObject on arn:aws:s3:::publish-bucket" in res.output
    assert "--output-bucket publish-bucket" in res.output
    assert any(k.endswith(" output") and v == "FAIL" for k, v in got.items()), res.output

    # init with --output-bucket writes grants that cover it; with them on the roles and the bucket made, it passes.
    config = write_config(tmp_path, "--output-bucket", "publish-bucket")
    iam = aws("iam")
    for who in ("head", "worker"):
        doc = (tmp_path / "cluster-iam" / f"aws-{who}-policy.json").read_text().replace("ACCOUNT", ACCOUNT)
        iam.put_role_policy(RoleName=f"s2v-{who}", PolicyName=f"s2v-{who}", PolicyDocument=doc)
    aws("s3").create_bucket(Bucket="publish-bucket", CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
    res = CliRunner().invoke(app, ["check", str(config), "--manifest", str(manifest)])
    assert res.exit_code == 0, res.output


def test_no_network_is_a_finding_in_seconds(monkeypatch, tmp_path):
    """Every AWS endpoint a closed loopback port: one FAIL saying AWS did not answer, the rest skipped, exit 2."""
    offline_env(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
    config = write_config(tmp_path)
    start = time.monotonic()
    res = CliRunner().invoke(app, ["check", str(config)])
    took = time.monotonic() - start
    assert res.exit_code == 2, res.output
    got = statuses(res.output)
    assert got["AWS reachable"] == "FAIL" and got["buckets"] == "skip" and got["vCPU quotas"] == "skip"
    assert "did not answer" in res.output and "Traceback" not in res.output
    assert took < 15, took


def test_up_runs_the_check_first_and_names_the_flag_that_skips_it(monkeypatch, tmp_path):
    from infra.clusters import launch

    offline_env(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
    config = write_config(tmp_path)
    built = []

    def build(*a, **kw):
        built.append(a)
        from core.errors import ClusterError

        raise ClusterError("stopped before the build in this test")

    monkeypatch.setattr(launch, "build_bundle", build)
    res = CliRunner().invoke(app, ["up", str(config)])
    assert res.exit_code == 2 and "--skip-check" in res.output and "AWS reachable" in res.output, res.output
    assert built == []  # refused before the wheel was built or the launcher called
    res = CliRunner().invoke(app, ["up", str(config), "--skip-check"])
    assert built and "stopped before the build" in res.output


def test_the_policy_reader_follows_aws_evaluation():
    from infra.clusters.aws_policy import decide

    docs = [{"Statement": [{"Effect": "Allow", "Action": "s3:Get*", "Resource": "arn:aws:s3:::b/*"},
                           {"Effect": "Allow", "Action": ["S3:PutObject"], "Resource": ["arn:aws:s3:::b/*"]},
                           {"Effect": "Deny", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::b/private/*"},
                           {"Effect": "Allow", "Action": "iam:CreateServiceLinkedRole", "Resource": "*",
                            "Condition": {"StringEquals": {"iam:AWSServiceName": "spot.amazonaws.com"}}},
                           {"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"}]}]
    assert decide(docs, "s3:GetObject", "arn:aws:s3:::b/x") == "allow"
    assert decide(docs, "s3:putobject", "arn:aws:s3:::b/x") == "allow"  # actions are case-insensitive
    assert decide(docs, "s3:PutObject", "arn:aws:s3:::b/private/x") == "deny"
    assert decide(docs, "s3:GetObject", "arn:aws:s3:::other/x") == "implicit-deny"  # NotAction is not proof
    ctx = {"iam:AWSServiceName": "spot.amazonaws.com"}
    assert decide(docs, "iam:CreateServiceLinkedRole", "arn:x", ctx) == "allow"
    assert decide(docs, "iam:CreateServiceLinkedRole", "arn:x", {"iam:AWSServiceName": "ec2.amazonaws.com"}) \
        == "implicit-deny"
    assert decide(docs, "iam:CreateServiceLinkedRole", "arn:x") == "implicit-deny"  # condition unknown: no proof


def test_shared_checks_name_a_missing_key_and_a_loose_one(monkeypatch, tmp_path):
    from infra.clusters.preflight import ssh_findings

    monkeypatch.setenv("HOME", str(tmp_path))
    key = tmp_path / "id"
    cfg = {"auth": {"ssh_user": "ubuntu", "ssh_private_key": str(key)}}
    (f,) = [f for f in ssh_findings(cfg, str(tmp_path / "c.yaml")) if f.check == "ssh key"]
    assert f.status == "FAIL" and "does not exist" in f.detail
    key.write_text("k")
    key.chmod(0o644)
    (f,) = [f for f in ssh_findings(cfg, str(tmp_path / "c.yaml")) if f.check == "ssh key"]
    assert f.status == "FAIL" and f.fix == f"chmod 600 {key}"
    key.chmod(0o600)
    (f,) = [f for f in ssh_findings(cfg, str(tmp_path / "c.yaml")) if f.check == "ssh key"]
    assert f.status == "ok"


def test_a_node_install_without_the_provider_extra_is_found():
    from infra.clusters.preflight import library_findings

    cfg = {"metadata": {"s2v": {"work": "s3://b/w"}},
           "setup_commands": ["uv pip install \"s2v-batch[runpod] @ file://$HOME/s2v-dist/x.whl\""]}
    got = {f.check: f for f in library_findings(cfg, "aws")}
    assert got["library boto3 on the nodes"].status == "FAIL" and "s3 extra" in got["library boto3 on the nodes"].fix
    cfg["setup_commands"] = ["uv pip install \"s2v-batch[cloud] @ file://$HOME/s2v-dist/x.whl\""]
    assert {f.check: f.status for f in library_findings(cfg, "aws")}["library boto3 on the nodes"] == "ok"
