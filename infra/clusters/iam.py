"""The buckets a cluster touches, and the grants that cover them: IAM policies for AWS, bucket bindings for GCP.

The shipped policies (infra/clusters/iam/) cover one bucket, the work area's; a catalog whose media or outputs live
elsewhere had its rows rejected by the head's re-check. `init --input-bucket/--output-bucket` records the others in
metadata.s2v and writes grants for all of them; `render --cluster` refuses, by row and field, a location in a bucket
the config does not list."""

from __future__ import annotations

import copy
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

from core.errors import ConfigError

INPUT_KEY, OUTPUT_KEY = "input_buckets", "output_buckets"
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")  # S3's and GCS's common rules for a bucket name
READ = ["s3:GetObject"]
READ_WRITE = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]


def _cut(value) -> str:
    """`s3://media-lib/x`, `gs://media-lib` and `media-lib` all name the bucket `media-lib`."""
    return re.sub(r"^(s3|gs)://", "", str(value).strip()).split("/", 1)[0]


def _uri_bucket(value) -> str | None:
    """The bucket of an s3:// or gs:// URI; None for anything else (a node path, nothing)."""
    m = re.match(r"(s3|gs)://([^/]+)", str(value or ""))
    return m.group(2) if m else None


def bucket_name(value: str, what: str) -> str:
    """A bare bucket name (an s3:// or gs:// URI is cut to its bucket), checked."""
    name = _cut(value)
    if not _BUCKET_RE.match(name):
        raise ConfigError(f"{what} {value!r} is not a bucket name (3-63 of a-z 0-9 . _ -)")
    return name


def work_bucket(cfg: dict[str, Any]) -> str | None:
    return _uri_bucket(((cfg.get("metadata") or {}).get("s2v") or {}).get("work"))


def covered(cfg: dict[str, Any]) -> tuple[set[str], set[str]]:
    """(buckets the nodes may read, buckets they may write): the work bucket is both; the weights' bucket
    (metadata.s2v.model_dir) is read by every GPU node's weight sync."""
    meta = (cfg.get("metadata") or {}).get("s2v") or {}
    work = {work_bucket(cfg)} - {None}
    outputs = _names(meta.get(OUTPUT_KEY)) | work
    weights = {_uri_bucket(meta.get("model_dir"))} - {None}
    return _names(meta.get(INPUT_KEY)) | outputs | weights, outputs


def _names(listed) -> set[str]:
    """Bucket names from a hand-edited list too: `s3://media-lib/x` and `media-lib` are the same bucket."""
    return {_cut(b) for b in listed or []}


def aws_policies(cfg: dict[str, Any]) -> dict[str, dict]:
    """The head's and the workers' policies with a bucket statement for every bucket the config lists (the work
    bucket and outputs read/write, inputs read-only); ACCOUNT stays for `sed` (docs/clusters.md)."""
    readable, writable = covered(cfg)
    out = {}
    for who in ("head", "worker"):
        doc = json.loads(resources.files("infra.clusters").joinpath(f"iam/aws-{who}-policy.json").read_text())
        kept = [st for st in doc["Statement"] if not any(a.startswith("s3:") for a in st["Action"])]
        kept.append({"Sid": "ListTheBuckets", "Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetBucketLocation"],
                     "Resource": [f"arn:aws:s3:::{b}" for b in sorted(readable)]})
        kept.append({"Sid": "ReadWriteObjects", "Effect": "Allow", "Action": READ_WRITE,
                     "Resource": [f"arn:aws:s3:::{b}/*" for b in sorted(writable)]})
        if readable - writable:
            kept.append({"Sid": "ReadInputObjects", "Effect": "Allow", "Action": READ,
                         "Resource": [f"arn:aws:s3:::{b}/*" for b in sorted(readable - writable)]})
        out[f"aws-{who}-policy.json"] = {**copy.deepcopy(doc), "Statement": kept}
    return out


def gcp_grants(cfg: dict[str, Any], project: str) -> str:
    """The gcloud commands that give each bucket (objectAdmin or objectViewer) to the workers' service account and
    to the head's (Ray's `ray-autoscaler-sa-v1`: stitching and publishing run on the head)."""
    readable, writable = covered(cfg)
    lines = [f"gcloud storage buckets add-iam-policy-binding gs://{b} --member=serviceAccount:{sa}@{project}"
             f".iam.gserviceaccount.com --role=roles/storage.{'objectAdmin' if b in writable else 'objectViewer'}"
             for b in sorted(readable) for sa in ("s2v-worker", "ray-autoscaler-sa-v1")]
    return "\n".join(lines) + "\n"


def write_grants(cfg: dict[str, Any], provider: str, folder: Path) -> list[Path]:
    """The grants for this config's buckets, in `folder` (AWS: two policy files; GCP: a script of bindings)."""
    folder.mkdir(parents=True, exist_ok=True)
    if provider == "aws":
        paths = []
        for name, doc in aws_policies(cfg).items():
            (folder / name).write_text(json.dumps(doc, indent=2) + "\n")
            paths.append(folder / name)
        return paths
    if provider == "gcp":
        path = folder / "gcp-bucket-grants.sh"
        path.write_text(gcp_grants(cfg, str(cfg["provider"].get("project_id") or "PROJECT")))
        return [path]
    return []  # RunPod: the work area's keys are the user's own (docs/runpod.md)
