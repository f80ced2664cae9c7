"""Every shipped and generated cluster config passes Ray's validator and ours, and carries what a real node needs:
an image with a new enough driver, credentials on every node type, cost labels, metadata.s2v, purchasable
fallback types, the project from the shipped wheel; our node_config checks catch typos; no config value can
inject shell (issue 12 item 13)."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import yaml

from core.errors import ConfigError, InputError
from core.settings import Settings
from infra.clusters.config import (
    MARKET_LABEL,
    ONDEMAND_RESOURCE,
    PRICE_LABEL,
    SPOT_RESOURCE,
    check_node_configs,
    load_config,
    provider_of,
    validate_cluster_config,
)
from infra.clusters.generate import AWS_GPU_IMAGE_PARAM, dump_config, generate_config
from infra.clusters.ship import build_bundle, source_files, source_fingerprint
from storage_servers import s3_env, s3_server, unique  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = sorted((ROOT / "infra" / "clusters").glob("*.yaml"))
SHIPPED = [ROOT / "cluster.yaml", *TEMPLATES]
COMMAND_KEYS = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands")


def _generated(provider: str, spot: bool = True, **kw) -> dict:
    s = Settings(spot=spot, cloud_gpu_count=8 if provider != "runpod" else 2, cloud_max_workers=3,
                 cloud_region="us-central1" if provider == "gcp" else "us-east-1", model_dir="s3://weights/wan",
                 cloud_project="proj-1", **kw)
    return generate_config(s, provider, bucket="my-bucket")


def _commands(cfg: dict) -> list[str]:
    out = [c for k in COMMAND_KEYS for c in cfg.get(k) or []]
    for nt in cfg["available_node_types"].values():
        out += list(nt.get("worker_setup_commands") or []) + list(nt.get("initialization_commands") or [])
    return [str(c) for c in out]


ALL_CONFIGS = [pytest.param(lambda p=p: load_config(p), id=p.name) for p in SHIPPED] + [
    pytest.param(lambda prov=prov, spot=spot: _generated(prov, spot), id=f"init-{prov}-{'spot' if spot else 'od'}")
    for prov in ("aws", "gcp", "runpod") for spot in (True, False)]


@pytest.mark.parametrize("make", ALL_CONFIGS)
def test_configs_carry_what_a_real_node_needs(make):
    cfg = make()
    prepared = validate_cluster_config(cfg, allow_placeholders=True)
    assert prepared["head_node_type"] == "head"
    prov = provider_of(cfg)
    types = cfg["available_node_types"]
    assert any(nt["resources"].get("GPU") for nt in types.values())
    for name, nt in types.items():
        nc, labels = nt["node_config"], nt["labels"]
        assert labels[MARKET_LABEL] in ("spot", "on-demand") and labels[PRICE_LABEL]
        if prov == "aws":
            assert nc["ImageId"].startswith(("ami-", "resolve:ssm:/aws/service/"))
            if nt["resources"].get("GPU"):
                assert "base-oss-nvidia-driver-gpu-ubuntu-22.04" in nc["ImageId"]
                assert nc["IamInstanceProfile"] == {"Name": "s2v-worker"}
            assert labels[PRICE_LABEL] == nc["InstanceType"]
            assert (labels[MARKET_LABEL] == "spot") == ("InstanceMarketOptions" in nc)
        elif prov == "gcp":
            image = nc["disks"][0]["initializeParams"]["sourceImage"]
            if nt["resources"].get("GPU"):
                assert image.endswith("-nvidia-580")  # driver ≥ 580.65.06 for torch 2.13's CUDA 13 build
                assert nc["serviceAccounts"][0]["email"].startswith("s2v-worker@")
            assert labels[PRICE_LABEL] == nc["machineType"]
            assert (labels[MARKET_LABEL] == "spot") == (nc.get("scheduling", {}).get("provisioningModel") == "SPOT")
        if prov != "runpod":  # RunPod prices are the RunPod provider's
            assert Settings().node_price(labels[PRICE_LABEL], labels[MARKET_LABEL]) is not None
    assert cfg["metadata"]["s2v"]["work"].startswith(("s3://", "gs://"))
    text = "\n".join(_commands(cfg))
    # The project comes from the wheel `up` mounts, every time: no repository URL, no `test -d` guard.
    assert "git clone" not in text and "github.com" not in text and "test -d" not in text
    assert "$(cat ~/s2v-dist/WHEEL)" in text and "*.whl\"" not in text and "--reinstall-package s2v-batch" in text
    assert "s2v-batch[all]" in text  # GPU workers get the model stack
    assert "--dashboard-host=127.0.0.1" in text and "0.0.0.0" not in text


def test_root_cluster_yaml_is_the_aws_template():
    assert load_config(ROOT / "cluster.yaml") == load_config(ROOT / "infra" / "clusters" / "aws.yaml")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_placeholders_are_refused_before_up(path):
    with pytest.raises(ConfigError, match="placeholder 'YOUR-BUCKET'.*s2v cluster init"):
        validate_cluster_config(load_config(path))


def test_gcp_on_demand_fallback_is_purchasable_and_project_required():
    for n in (1, 2, 4, 8):
        cfg = generate_config(Settings(cloud_gpu_count=n, cloud_region="us-central1", cloud_project="p", spot=True),
                              "gcp", bucket="b")
        od = cfg["available_node_types"]["gpu_ondemand"]["node_config"]["machineType"]
        assert od in {1: "a2-ultragpu-1g", 2: "a2-ultragpu-2g", 4: "a2-ultragpu-4g", 8: "a3-highgpu-8g"}[n]
        assert cfg["metadata"]["s2v"]["zones"] == ["us-central1-a", "us-central1-c"]
    # A spot-only type on the on-demand node type is caught, with the alternative named.
    cfg = copy.deepcopy(cfg)
    cfg["available_node_types"]["gpu_ondemand"]["node_config"]["machineType"] = "a3-highgpu-1g"
    cfg["available_node_types"]["gpu_ondemand"]["labels"][PRICE_LABEL] = "a3-highgpu-1g"
    with pytest.raises(ConfigError, match="sold as Spot only.*a2-ultragpu-1g"):
        validate_cluster_config(cfg)
    # The template's project is a placeholder that `up` refuses.
    tpl = load_config(ROOT / "infra" / "clusters" / "gcp.yaml")
    tpl["metadata"]["s2v"]["work"] = "gs://real-bucket/w"
    with pytest.raises(ConfigError, match="placeholder 'YOUR-PROJECT'"):
        validate_cluster_config(tpl)


@pytest.mark.parametrize("provider", ["aws", "gcp", "runpod"])
@pytest.mark.parametrize("spot", [True, False])
def test_generated_configs_validate(provider, spot, tmp_path):
    cfg = _generated(provider, spot)
    types = cfg["available_node_types"]
    assert ("gpu_spot" in types) is spot
    od = types["gpu_ondemand"]
    n = 8 if provider != "runpod" else 2
    assert od["resources"]["GPU"] == n and od["resources"][ONDEMAND_RESOURCE] == n
    assert od["max_workers"] == 3 and cfg["max_workers"] == 3
    if spot:
        assert types["gpu_spot"]["resources"][SPOT_RESOURCE] == n
    if provider == "aws":
        assert od["node_config"]["InstanceType"] == "p5.48xlarge" and od["resources"]["CPU"] == 192
        assert cfg["provider"]["region"] == "us-east-1"
    elif provider == "gcp":
        assert od["node_config"]["machineType"] == "a3-highgpu-8g"
        assert cfg["provider"]["project_id"] == "proj-1"
        assert "proj-1" in od["node_config"]["serviceAccounts"][0]["email"]
    else:
        assert cfg["provider"]["type"] == "external" and od["node_config"]["gpu_count"] == 2
    assert cfg["metadata"]["s2v"]["model_dir"] == "s3://weights/wan"
    assert cfg["metadata"]["s2v"]["work"] == ("gs" if provider == "gcp" else "s3") + "://my-bucket/s2v-work"
    out = dump_config(cfg, tmp_path / "c.yaml", provider)
    validate_cluster_config(yaml.safe_load(out.read_text()))


def _aws():
    cfg = copy.deepcopy(load_config(ROOT / "cluster.yaml"))
    cfg["metadata"]["s2v"]["work"] = "s3://real-bucket/w"
    return cfg


def _problems(cfg):
    return [str(p) for p in check_node_configs(cfg).items]


def test_misspelt_markettype_key_passes_ray_but_not_us():
    cfg = _aws()
    imo = cfg["available_node_types"]["gpu_spot"]["node_config"]["InstanceMarketOptions"]
    imo["MarketTyp"] = imo.pop("MarketType")
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cfg)))  # Ray's own schema lets it through: node_config is free-form
    with pytest.raises(ConfigError) as ei:
        validate_cluster_config(cfg)
    assert "MarketTyp" in str(ei.value) and "did you mean 'MarketType'" in str(ei.value)


def test_wrong_case_key_and_bad_value():
    cfg = _aws()
    nc = cfg["available_node_types"]["gpu_spot"]["node_config"]
    nc["instanceType"] = nc.pop("InstanceType")
    nc["InstanceMarketOptions"]["MarketType"] = "spott"
    probs = _problems(cfg)
    assert any("instanceType" in p and "case-sensitive" in p for p in probs)
    assert any("MarketType" in p and "'spott'" in p and "did you mean 'spot'" in p for p in probs)


def test_spot_requires_no_stopped_node_cache():
    cfg = _aws()
    cfg["provider"]["cache_stopped_nodes"] = True
    assert any("cache_stopped_nodes" in p for p in _problems(cfg))


def test_missing_credentials_image_and_wrong_labels_are_caught():
    cfg = _aws()
    spot = cfg["available_node_types"]["gpu_spot"]
    del spot["node_config"]["IamInstanceProfile"]
    del cfg["available_node_types"]["gpu_ondemand"]["node_config"]["ImageId"]
    spot["labels"][MARKET_LABEL] = "on-demand"
    cfg["available_node_types"]["head"]["labels"][PRICE_LABEL] = "m6i.2xlarge"
    probs = _problems(cfg)
    assert any("gpu_spot.node_config" in p and "IamInstanceProfile" in p and "head only" in p for p in probs)
    assert any("gpu_ondemand.node_config" in p and "ImageId" in p and "18.04" in p for p in probs)
    assert any("gpu_spot.labels" in p and "says on-demand but node_config launches spot" in p for p in probs)
    assert any("head.labels" in p and "'m6i.2xlarge'" in p and "'m6i.xlarge'" in p for p in probs)
    del spot["labels"]
    cfg["available_node_types"]["head"]["labels"] = {PRICE_LABEL: "bad value!", MARKET_LABEL: "spott"}
    probs = _problems(cfg)
    assert any("gpu_spot" in p and "labels" in p and "missing" in p for p in probs)
    assert any("Invalid label key value `bad value!`" in p for p in probs)
    assert any("'spott'" in p and "did you mean 'spot'" in p for p in probs)


def test_metadata_is_checked_with_did_you_mean():
    cfg = _aws()
    cfg["metadata"]["s2v"]["idle_stop_minute"] = 10
    cfg["metadata"]["s2v"]["dashboard_port"] = "8265"
    probs = _problems(cfg)
    assert any("idle_stop_minute" in p and "did you mean 'idle_stop_minutes'" in p for p in probs)
    assert any("dashboard_port" in p and "must be a int" in p for p in probs)
    cfg = _aws()
    cfg["metadata"]["s2v"]["work"] = ".s2v-work"  # a local work area cannot hold a multi-node run's state
    assert any("work" in p and "nodes share no disk" in p for p in _problems(cfg))
    cfg["metadata"] = {}
    assert any("metadata" in p and "s2v" in p and "missing" in p for p in _problems(cfg))
    cfg = _aws()
    cfg["metadata"]["s2v"]["prices"] = {"p5.4xlarge": {"on_demand": "cheap"}}
    assert any("prices" in p and "p5.4xlarge" in p for p in _problems(cfg))


def test_public_jobs_api_is_refused():
    cfg = _aws()
    cmds = cfg["head_start_ray_commands"]
    cmds[1] = cmds[1].replace("--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0")
    assert any("--dashboard-host" in p and "remote code execution" in p for p in _problems(cfg))
    cfg = _aws()
    cfg["metadata"]["s2v"]["dashboard_port"] = 8300
    assert any("--dashboard-port" in p and "8300" in p for p in _problems(cfg))
    # the value Ray takes is the last one, however it is written: every spelling of a public bind is refused
    for public in ("--dashboard-host=127.0.0.1 --dashboard-host=0.0.0.0", "--dashboard-host 0.0.0.0",
                   "--dashboard-host='0.0.0.0'", '--dashboard-host="::"'):
        cfg = _aws()
        cmds = cfg["head_start_ray_commands"]
        cmds[1] = cmds[1].replace("--dashboard-host=127.0.0.1", public)
        assert any("--dashboard-host" in p and "remote code execution" in p for p in _problems(cfg)), public


def test_gcp_scheduling_list_form_and_typos():
    cfg = load_config(ROOT / "infra" / "clusters" / "gcp.yaml")
    nc = cfg["available_node_types"]["gpu_spot"]["node_config"]
    good = nc["scheduling"]
    nc["scheduling"] = [{"preemptible": True}]
    assert any("must be a mapping" in p for p in _problems(cfg))
    nc["scheduling"] = dict(good, provisioningModel="SPOTT", automaticRestart=True)
    nc["machinetype"] = nc.pop("machineType")
    probs = _problems(cfg)
    assert any("provisioningModel" in p and "did you mean 'SPOT'" in p for p in probs)
    assert any("machinetype" in p and "'machineType'" in p for p in probs)
    nc["scheduling"] = dict(good, automaticRestart=True)
    assert any("automaticRestart" in p and "false for SPOT" in p for p in _problems(cfg))


def test_runpod_node_config_typos():
    cfg = load_config(ROOT / "infra" / "clusters" / "runpod.yaml")
    nc = cfg["available_node_types"]["gpu_spot"]["node_config"]
    nc["gpu_typeid"] = nc.pop("gpu_type_id")
    nc["cloud_type"] = "SECUR"
    probs = _problems(cfg)
    assert any("gpu_typeid" in p and "gpu_type_id" in p for p in probs)
    assert any("cloud_type" in p and "SECURE" in p for p in probs)


def test_ray_schema_errors_are_config_errors():
    cfg = _aws()
    cfg["max_workerz"] = 3
    with pytest.raises(ConfigError, match="Ray rejects it"):
        validate_cluster_config(cfg)
    cfg = _aws()
    cfg["head_node_type"] = "nope"
    with pytest.raises(ConfigError):
        validate_cluster_config(cfg)


def test_unknown_provider_and_missing_work_area():
    with pytest.raises(ConfigError, match="unknown provider"):
        generate_config(Settings(), "azure", bucket="b")
    with pytest.raises(ConfigError, match="--bucket"):
        generate_config(Settings(), "aws")


def test_price_table_covers_every_type_init_can_produce():
    from infra.clusters.generate import DEFAULT_GPU_TYPE, MACHINES

    s = Settings()
    for prov, markets in DEFAULT_GPU_TYPE.items():
        for market, by_n in markets.items():
            for gtype in by_n.values():
                assert s.node_price(gtype, market) is not None, (gtype, market)
    for gtype in MACHINES:
        assert gtype in s.node_prices
    assert s.node_price("a3-highgpu-1g", "on-demand") is None  # not sold on-demand: never priced as if it were
    assert s.node_price("p5.4xlarge", "spot") < s.node_price("p5.4xlarge", "on-demand")
    assert s.node_price("nope", "spot") is None
    # a node whose market label is not spot/on-demand is reported unpriced (the run's report names it), never $0;
    # the config validator refuses such a label before any node starts
    assert s.node_price("p5.4xlarge", "spott") is None
    os.environ["S2V_NODE_PRICES"] = json.dumps({"p5.4xlarge": {"on_demand": 5.0, "spot": 2.0}})
    try:
        assert Settings().node_price("p5.4xlarge", "spot") == 2.0
    finally:
        del os.environ["S2V_NODE_PRICES"]


def test_bundle_is_exactly_the_fingerprinted_files(tmp_path):
    out = tmp_path / "dist"
    (out).mkdir()
    (out / "s2v_batch-0.0.1-py3-none-any.whl").write_bytes(b"old")  # an older build: must go
    b = build_bundle(ROOT, out)
    assert [p.name for p in out.glob("*.whl")] == [b.wheel.name]
    names = {n for n in zipfile.ZipFile(b.wheel).namelist() if ".dist-info/" not in n}
    expected = {f.as_posix() for f in source_files(ROOT) if f.parts[0] != f.name}
    assert names == expected
    record = json.loads((out / "s2v-build.json").read_text())
    assert record["fingerprint"] == b.fingerprint == source_fingerprint(ROOT) and record["version"] == b.version
    assert (out / "constraints.txt").read_text().startswith("ray==")


def test_an_unchanged_checkout_reuses_its_wheel_and_a_changed_one_builds_again(tmp_path, monkeypatch):
    import shutil

    from infra.clusters import ship

    project = tmp_path / "project"
    for rel in source_files(ROOT):
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, project / rel)
    cache, builds = tmp_path / "wheels", []
    real = ship._pip_wheel
    monkeypatch.setattr(ship, "_pip_wheel", lambda src, out: (builds.append(src), real(src, out)))
    first = build_bundle(project, tmp_path / "a", cache)
    second = build_bundle(project, tmp_path / "b", cache)  # another cluster, the same checkout: no build
    assert len(builds) == 1 and second.fingerprint == first.fingerprint
    assert second.wheel.read_bytes() == first.wheel.read_bytes()
    (project / "orchestrator" / "__init__.py").write_text('"""changed"""\n__version__ = "0.1.0"\n')
    third = build_bundle(project, tmp_path / "b", cache)
    assert len(builds) == 2 and third.fingerprint != first.fingerprint
    assert [p.name for p in (tmp_path / "b").glob("*.whl")] == [third.wheel.name]


HOSTILE = ["s3://b/x'; touch PWNED1; echo '", "s3://b/$(touch PWNED2)", "/models/`touch PWNED3`\"; touch PWNED4 #"]


@pytest.mark.parametrize("provider", ["aws", "gcp", "runpod"])
def test_hostile_model_dir_never_reaches_a_shell_command(provider):
    for bad in HOSTILE:
        cfg = generate_config(Settings(model_dir=bad, cloud_project="p",
                                       cloud_region="us-central1" if provider == "gcp" else "us-east-1"),
                              provider, bucket="b")
        assert cfg["metadata"]["s2v"]["model_dir"] == bad  # carried as data (node.json), read by Python
        assert not any("PWNED" in c for c in _commands(cfg))


def test_hostile_values_in_node_setup_stay_data(tmp_path, s3_env, monkeypatch):
    """`node prepare` writes ~/.s2v/node.env from node.json with shlex-quoted values; bash sourcing it gets the
    exact strings back and runs nothing. The weight sync gets the URI as an argv element (SeaweedFS on
    loopback answers: no such objects), so the URI is recorded verbatim in the FAILED marker."""
    from infra.clusters.weights import FAILED, model_copy_dir

    home = tmp_path / "home"
    evil_dir = tmp_path / "nvme'; touch PWNED5; echo '$(touch PWNED6)"
    evil_dir.mkdir(parents=True)
    bad_uri = "s3://" + s3_env.make_bucket(unique("hostile")) + "/x'; touch PWNED7 #$(touch PWNED8)"
    (home / "s2v-dist").mkdir(parents=True)
    (home / "s2v-dist" / "node.json").write_text(json.dumps(
        {"metadata": {"node_cache_dirs": [str(evil_dir)], "model_dir": bad_uri}}))
    env = dict(os.environ, HOME=str(home), PYTHONPATH=str(ROOT), S2V_S3_ENDPOINT_URL=s3_env.endpoint,
               S2V_S3_REGION="us-east-1", S2V_S3_ADDRESSING_STYLE="path")
    env.pop("S2V_NODE_CACHE", None)
    for cmd in ("prepare", "sync-weights"):
        r = subprocess.run([sys.executable, "-m", "infra.clusters.node", cmd], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    got = subprocess.run(["bash", "-c", '. "$HOME/.s2v/node.env" && printf %s "$S2V_NODE_CACHE"'], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=30)
    assert got.returncode == 0 and got.stdout == str(evil_dir / "s2v")
    marker = model_copy_dir(evil_dir / "s2v", bad_uri) / FAILED
    deadline = time.monotonic() + 90
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert json.loads(marker.read_text())["source"] == bad_uri
    assert not list(tmp_path.rglob("PWNED*")) and not list(home.rglob("PWNED*"))
    # .bashrc sources the environment first thing (Ubuntu's .bashrc stops early for non-interactive shells).
    assert (home / ".bashrc").read_text().splitlines()[0].startswith("[ -f ~/.s2v/node.env ]")


def test_weights_sync_at_setup_and_ensure_local(tmp_path, s3_env, monkeypatch):
    """The GPU-node setup starts the copy in the background; a render actor's ensure_local waits for READY (or
    syncs itself where no setup ran). Real SeaweedFS on loopback."""
    from infra.clusters.node import prepare, sync_weights
    from infra.clusters.weights import READY, ensure_local, status

    bucket = s3_env.make_bucket(unique("weights"))
    client = s3_env.client()
    files = {"wan/config.json": b"{}", "wan/diffusion/model-00001.safetensors": os.urandom(300_000),
             "wan/wav2vec2/w.bin": os.urandom(70_000)}
    for k, v in files.items():
        client.put_object(Bucket=bucket, Key=k, Body=v)
    uri = f"s3://{bucket}/wan"
    home = tmp_path / "home"
    (home / "s2v-dist").mkdir(parents=True)
    (home / "s2v-dist" / "node.json").write_text(json.dumps({"metadata": {"model_dir": uri, "node_cache_dirs": []}}))
    for k, v in {"S2V_S3_ENDPOINT_URL": s3_env.endpoint, "S2V_S3_REGION": "us-east-1",
                 "S2V_S3_ADDRESSING_STYLE": "path", "PYTHONPATH": str(ROOT)}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("S2V_NODE_CACHE", raising=False)
    root = prepare(home)
    dest = sync_weights(home)
    assert status(dest, uri) in ("syncing", "ready", "absent")
    got = ensure_local(uri, Settings(s3_endpoint_url=s3_env.endpoint, s3_region="us-east-1",
                                     s3_addressing_style="path"), cache_root=root, timeout_s=120, poll_s=0.2)
    assert got == dest
    for k, v in files.items():
        assert (dest / k.removeprefix("wan/")).read_bytes() == v
    assert json.loads((dest / READY).read_text())["files"] == 3
    # Without a setup sync (another cache), the actor copies the weights itself.
    other = ensure_local(uri, Settings(s3_endpoint_url=s3_env.endpoint, s3_region="us-east-1",
                                       s3_addressing_style="path"), cache_root=tmp_path / "elsewhere", timeout_s=60)
    assert (other / "wav2vec2" / "w.bin").read_bytes() == files["wan/wav2vec2/w.bin"]
    assert AWS_GPU_IMAGE_PARAM.startswith("/aws/service/deeplearning/ami/x86_64/")


@pytest.mark.parametrize("hostile", ["wan/../../../../escaped.txt", "wan//abs/escaped.txt", "wan/./x", "wan/a\0b"])
def test_weight_sync_refuses_keys_that_leave_its_folder(tmp_path, monkeypatch, hostile):
    """An object store lists keys as they were written: `..`, empty parts or a NUL joined to the cache folder wrote
    files anywhere on the node (as root on RunPod). The sync refuses the whole copy, naming the key, and writes
    nothing (a fake store with real listing semantics: S3 keeps such keys as written)."""
    from infra.storage import base
    from infra.storage.uri import Uri
    from infra.clusters.weights import FAILED, sync

    written = []

    class Store:
        def list(self, prefix):
            return iter([Uri("s3", "b", "wan/ok.bin"), Uri("s3", "b", hostile)])

        def download(self, uri, dest):
            written.append(dest)
            Path(dest).parent.mkdir(parents=True, exist_ok=True)
            Path(dest).write_bytes(b"x")
            return dest

    monkeypatch.setattr(base, "storage_for", lambda *a, **k: Store())
    dest = tmp_path / "cache" / "models" / "m"
    with pytest.raises(InputError, match="leaves the weights folder"):
        sync("s3://b/wan", dest)
    assert not written and not list(tmp_path.rglob("escaped.txt"))  # checked before anything is copied
    assert "leaves the weights folder" in json.loads((dest / FAILED).read_text())["error"]


def test_iam_policies_are_scoped_to_the_bucket_and_the_worker_role():
    iam = ROOT / "infra" / "clusters" / "iam"
    worker = json.loads((iam / "aws-worker-policy.json").read_text())
    head = json.loads((iam / "aws-head-policy.json").read_text())
    for doc in (worker, head):
        s3 = [st for st in doc["Statement"] if any(a.startswith("s3:") for a in st["Action"])]
        assert s3 and all(r.startswith("arn:aws:s3:::BUCKET") for st in s3 for r in [st["Resource"]])
    assert not any(a.startswith(("ec2:", "iam:")) for st in worker["Statement"] for a in st["Action"])
    pass_role = next(st for st in head["Statement"] if "iam:PassRole" in st["Action"])
    assert "arn:aws:iam::ACCOUNT:role/s2v-worker" in pass_role["Resource"] and "*" not in pass_role["Resource"]
    assert json.loads((iam / "aws-ec2-trust.json").read_text())["Statement"][0]["Principal"]["Service"] == \
        "ec2.amazonaws.com"
    # The first spot launch in an account creates AWSServiceRoleForEC2Spot: without the right to, every spot
    # launch failed (AuthFailure.ServiceLinkedRoleCreationNotPermitted) and the pool bought on-demand after
    # spot_wait_s. Only that role, only for the spot service.
    slr = [st for st in head["Statement"] if "iam:CreateServiceLinkedRole" in st["Action"]]
    assert [st["Resource"] for st in slr] == [
        "arn:aws:iam::ACCOUNT:role/aws-service-role/spot.amazonaws.com/AWSServiceRoleForEC2Spot"]
    assert slr[0]["Condition"] == {"StringEquals": {"iam:AWSServiceName": "spot.amazonaws.com"}}


def test_each_providers_launcher_code_is_installed_here_and_on_the_head():
    """Ray's GCP provider imports googleapiclient, which no extra listed: `up` failed on the laptop and the head's
    autoscaler could not start. Every shipped provider's launcher class loads here (the dev install), and the
    extra the head installs (`cloud`) pulls in what each needs."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        from pip._vendor import tomli as tomllib
    from ray.autoscaler._private.providers import _get_node_provider_cls

    for tpl in TEMPLATES:
        assert _get_node_provider_cls(load_config(tpl)["provider"]) is not None, tpl.name
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]

    def resolved(name: str) -> set[str]:
        out = set()
        for req in extras[name]:
            if req.startswith("s2v-batch["):
                for inner in req[len("s2v-batch["):-1].split(","):
                    out |= resolved(inner)
            else:
                out.add(re.split(r"[<>=\[ ]", req, maxsplit=1)[0])
        return out

    assert {"boto3", "google-api-python-client", "google-cloud-storage", "runpod"} <= resolved("cloud")
    assert any("s2v-batch[cloud]" in c for c in _commands(load_config(ROOT / "infra" / "clusters" / "gcp.yaml")))


def test_gcp_zone_failover_moves_on_only_for_capacity_and_remembers_the_zone(tmp_path, monkeypatch):
    """Ray's GCP provider keeps a cluster in one zone; `up` tries metadata.s2v.zones in order. The Compute API
    is out of reach here, so `create` raises the error GCE gives for an exhausted zone."""
    from core.errors import ClusterError
    from infra.clusters.generate import dump_config
    from infra.clusters.launch import launch_config, up_in_zones

    monkeypatch.setenv("S2V_CLUSTERS_DIR", str(tmp_path / "clusters"))
    cfg = generate_config(Settings(spot=True, cloud_project="p", cloud_region="us-central1", cloud_zone="us-central1-a,"
                                   "us-central1-c,us-central1-f"), "gcp", bucket="b")
    path = dump_config(cfg, tmp_path / "gcp.yaml", "gcp")
    tried = []

    def create(c):
        zone = c["provider"]["availability_zone"]
        tried.append(zone)
        disk = c["available_node_types"]["gpu_spot"]["node_config"]["disks"][0]["initializeParams"]["diskType"]
        assert disk == f"zones/{zone}/diskTypes/pd-balanced"
        if zone == "us-central1-a":
            raise RuntimeError("googleapiclient.errors.HttpError: ZONE_RESOURCE_POOL_EXHAUSTED: The zone "
                               "'projects/p/zones/us-central1-a' does not have enough resources available")

    assert up_in_zones(launch_config(path), create, head_exists=lambda c: False, echo=lambda m: None) == "us-central1-c"
    assert tried == ["us-central1-a", "us-central1-c"]
    # Every later command addresses the cluster where it is.
    again = launch_config(path)
    assert again["provider"]["availability_zone"] == "us-central1-c"
    # Any other failure, or a head already made, stops at once: never a second head in another zone.
    tried.clear()
    with pytest.raises(ClusterError, match="us-central1-c"):
        up_in_zones(again, lambda c: (_ for _ in ()).throw(RuntimeError("Permission denied")), lambda c: False)
    with pytest.raises(ClusterError):
        def exhausted(c):
            tried.append(c["provider"]["availability_zone"])
            raise RuntimeError("ZONE_RESOURCE_POOL_EXHAUSTED")
        up_in_zones(launch_config(path), exhausted, head_exists=lambda c: True, echo=lambda m: None)
    assert tried == ["us-central1-c"]


def test_run_settings_env_carries_the_cluster_work_area_weights_and_prices():
    from infra.clusters.launch import run_settings_env

    cfg = _generated("aws")
    cfg["metadata"]["s2v"]["prices"]["p5.48xlarge"] = {"on_demand": 40.0, "spot": 15.0}
    env = run_settings_env(cfg)
    assert env["S2V_WORK"] == "s3://my-bucket/s2v-work" and env["S2V_MODEL_DIR"] == "s3://weights/wan"
    os.environ["S2V_NODE_PRICES"] = env["S2V_NODE_PRICES"]
    try:
        s = Settings()
        assert s.node_price("p5.48xlarge", "spot") == 15.0 and s.node_price("m6i.xlarge", "on-demand") == 0.192
    finally:
        del os.environ["S2V_NODE_PRICES"]


@pytest.mark.parametrize("make", ALL_CONFIGS)
def test_every_command_parses_in_bash(make):
    """A quoting slip in a template shows up here, not minutes into `up` on a billed node."""
    for cmd in _commands(make()):
        r = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, f"{cmd}\n{r.stderr}"


@pytest.mark.parametrize("make", ALL_CONFIGS)
def test_cpu_work_is_marked_on_the_head_and_on_no_gpu_type(make):
    """Shipped and generated configs mark the head for a run's CPU work (tests/test_placement.py shows the tasks
    then stay there); a config that marks a GPU type, or no type at all, is refused with the field named."""
    from infra.clusters.config import CPU_WORK_RESOURCE

    cfg = make()
    types = cfg["available_node_types"]
    assert types[cfg["head_node_type"]]["resources"].get(CPU_WORK_RESOURCE)
    assert not any(nt["resources"].get(CPU_WORK_RESOURCE) for nt in types.values() if nt["resources"].get("GPU"))
    gpu = next(n for n, nt in types.items() if nt["resources"].get("GPU"))
    bad = copy.deepcopy(cfg)
    bad["available_node_types"][gpu]["resources"][CPU_WORK_RESOURCE] = 1
    assert any(f"{gpu}.resources" in p and "is on a GPU node type" in p for p in _problems(bad))
    bare = copy.deepcopy(cfg)
    del bare["available_node_types"]["head"]["resources"][CPU_WORK_RESOURCE]
    bare["available_node_types"]["cpu_extra"] = {"resources": {"CPU": 8, CPU_WORK_RESOURCE: 1000},
                                                 "node_config": {}, "min_workers": 0, "max_workers": 1}
    assert any("head.resources" in p and f"{CPU_WORK_RESOURCE}: 1000" in p for p in _problems(bare))
    old = copy.deepcopy(cfg)  # a config `init` wrote before one wheel per node
    old["setup_commands"] = ['uv pip install "s2v-batch[cloud] @ file://$(ls ~/s2v-dist/*.whl)"']
    assert any("setup_commands[0]" in p and "installs every wheel" in p for p in _problems(old))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_a_node_installs_the_current_wheel_when_older_ones_are_still_there(path, tmp_path):
    """Ray's rsync never deletes, so after a version bump a node's ~/s2v-dist held two wheels and
    `$(ls ~/s2v-dist/*.whl)` gave uv two lines: the install failed on the head and every new worker. The shipped
    setup commands, run by bash in a node's HOME, now drop the old wheel and install the one WHEEL names (`uv`
    here records its arguments: the command lines are what is under test)."""
    import subprocess

    from infra.clusters.ship import CURRENT

    home = tmp_path / "home"
    dist = home / "s2v-dist"
    dist.mkdir(parents=True)
    old, new = "s2v_batch-0.1.0-py3-none-any.whl", "s2v_batch-0.2.0-py3-none-any.whl"
    for name in (old, new):
        (dist / name).write_bytes(b"PK")
    (dist / CURRENT).write_text(new + "\n")
    uv = home / ".local" / "bin" / "uv"
    uv.parent.mkdir(parents=True)
    uv.write_text(f"#!/bin/sh\nprintf '%s\\0' \"$@\" >> {tmp_path / 'uv.args'}\nprintf '\\n' >> {tmp_path / 'uv.calls'}\n")
    uv.chmod(0o755)
    cfg = load_config(path)
    for cmd in _commands(cfg):
        if "s2v-dist" in cmd:
            subprocess.run(["bash", "-c", cmd], env={"HOME": str(home), "PATH": "/usr/bin:/bin"}, check=True)
    assert sorted(p.name for p in dist.glob("*.whl")) == [new]
    args = (tmp_path / "uv.args").read_text().split("\0")
    targets = [a for a in args if "s2v-batch[" in a]
    calls = (tmp_path / "uv.calls").read_text().count("\n")
    assert calls == 2 and len(targets) == 2  # the light install on every node, the model stack on GPU workers
    assert all(a.endswith(f" @ file://{home}/s2v-dist/{new}") for a in targets), targets


def test_init_writes_grants_for_every_bucket_a_run_touches(tmp_path):
    """`init --input-bucket/--output-bucket` lists the other buckets in metadata.s2v and writes grants covering
    them: AWS policies (the work and output buckets read/write, inputs read-only), GCP bucket bindings."""
    from typer.testing import CliRunner

    from orchestrator.cli.cluster import app

    out = tmp_path / "aws.yaml"
    res = CliRunner().invoke(app, ["init", "--no-resolve-zones", "aws", "--bucket", "work-b", "--input-bucket", "s3://media-lib/x",
                                   "--output-bucket", "pub-site", "--model-dir", "s3://weights-b/wan2.2",
                                   "--out", str(out), "--no-resolve-images"])
    assert res.exit_code == 0, res.output
    meta = yaml.safe_load(out.read_text())["metadata"]["s2v"]
    assert meta["input_buckets"] == ["media-lib"] and meta["output_buckets"] == ["pub-site"]
    for who in ("head", "worker"):
        doc = json.loads((tmp_path / "aws-iam" / f"aws-{who}-policy.json").read_text())
        grants = {a: set() for a in ("s3:ListBucket", "s3:GetObject", "s3:PutObject")}
        for st in doc["Statement"]:
            for a in st["Action"]:
                if a in grants:
                    grants[a] |= set(st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]])
        readable = ("work-b", "media-lib", "pub-site", "weights-b")  # the weights' bucket too: every node syncs it
        assert grants["s3:ListBucket"] == {f"arn:aws:s3:::{b}" for b in readable}
        assert grants["s3:GetObject"] == {f"arn:aws:s3:::{b}/*" for b in readable}
        assert grants["s3:PutObject"] == {"arn:aws:s3:::work-b/*", "arn:aws:s3:::pub-site/*"}
        assert any("iam:PassRole" in st["Action"] for st in doc["Statement"]) == (who == "head")
    gcp = tmp_path / "gcp.yaml"
    res = CliRunner().invoke(app, ["init", "--no-resolve-zones", "gcp", "--bucket", "work-b", "--project", "proj-1", "--input-bucket",
                                   "media-lib", "--out", str(gcp)])
    assert res.exit_code == 0, res.output
    script = (tmp_path / "gcp-iam" / "gcp-bucket-grants.sh").read_text()
    for sa in ("s2v-worker", "ray-autoscaler-sa-v1"):  # the head stitches and publishes: it needs them too
        assert f"gs://media-lib --member=serviceAccount:{sa}@proj-1.iam.gserviceaccount.com " \
               "--role=roles/storage.objectViewer" in script
        assert f"gs://work-b --member=serviceAccount:{sa}@proj-1.iam.gserviceaccount.com " \
               "--role=roles/storage.objectAdmin" in script
    res = CliRunner().invoke(app, ["init", "--no-resolve-zones", "aws", "--bucket", "w", "--input-bucket", "Not A Bucket", "--out",
                                   str(tmp_path / "bad.yaml"), "--no-resolve-images"])
    assert res.exit_code == 2 and "--input-bucket 'Not A Bucket' is not a bucket name" in res.output


def test_an_s3_compatible_store_reaches_the_config_the_nodes_and_the_run():
    """S2V_S3_ENDPOINT_URL at init (R2, MinIO) lands in metadata.s2v, which node.json carries to every node and the
    run's env carries to the driver; a value that is no URL is named."""
    from core.errors import ConfigError
    from core.settings import Settings
    from infra.clusters.config import validate_cluster_config
    from infra.clusters.generate import generate_config
    from infra.clusters.launch import run_settings_env

    s = Settings(cloud_provider="runpod", s3_endpoint_url="https://acct.r2.cloudflarestorage.com", s3_region="auto")
    cfg = generate_config(s, work="s3://night/s2v-work")
    assert cfg["metadata"]["s2v"]["s3_endpoint_url"] == "https://acct.r2.cloudflarestorage.com"
    env = run_settings_env(cfg)
    assert env["S2V_S3_ENDPOINT_URL"] == "https://acct.r2.cloudflarestorage.com" and env["S2V_S3_REGION"] == "auto"
    cfg["metadata"]["s2v"]["s3_endpoint_url"] = "acct.r2.cloudflarestorage.com"
    with pytest.raises(ConfigError) as e:
        validate_cluster_config(cfg)
    assert any("s3_endpoint_url" in str(p) and "http(s)://" in str(p) for p in e.value.problems)
