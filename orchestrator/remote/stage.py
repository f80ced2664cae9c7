"""Cluster runs keep every byte in object storage: the work area, refused local outputs, local inputs staged to
the work area by content, and the resolved manifest the remote driver reads."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from core.errors import ConfigError, ManifestError, Problem
from infra.storage import Uri, parse, storage_for
from orchestrator.intake.inputs import sha256_file

CLOUD_SCHEMES = ("s3", "gs")
# model_dir is a node path or a bucket: weights are never staged; `captions: auto` names no file
STAGED_FIELDS = ("audio", "image", "pose", "captions", "lora")


def work_area(flag: str | None, cfg: dict, config_path: str, env_work: str | None) -> Uri:
    """--work, else the config's metadata.s2v.work, else S2V_WORK; it must be s3:// or gs://."""
    from infra.clusters.config import s2v_meta

    meta_work = s2v_meta(cfg).get("work")
    for value, source in ((flag, "--work"), (meta_work, f"metadata.s2v.work in {config_path}"),
                          (env_work, "S2V_WORK")):
        if value:
            break
    else:
        raise ConfigError(f"a cluster run needs a work area in object storage: set `metadata: {{s2v: {{work: "
                          f"s3://BUCKET/PREFIX}}}}` in {config_path} (`s2v cluster init` writes it) or pass "
                          "--work s3://BUCKET/PREFIX (or gs://…)")
    try:
        uri = parse(str(value))
    except Exception as e:  # noqa: BLE001 — a bad URI is the user's input
        raise ConfigError(f"{source}: {e}") from None
    if uri.scheme not in CLOUD_SCHEMES:
        raise ConfigError(f"{source} is a local path ({value}): the nodes of a cluster share no disk, so "
                          "checkpoints, run state and outputs must live in object storage; use "
                          "--work s3://BUCKET/PREFIX or gs://BUCKET/PREFIX (or set metadata.s2v.work in the config)")
    return uri


def local_output_problems(jobs) -> list[Problem]:
    """One problem per job whose output resolves to a path on this machine."""
    out = []
    for job in jobs:
        if parse(job.output).scheme not in CLOUD_SCHEMES:
            out.append(Problem(
                job.where, "output",
                f"resolves to the local path {job.output}, but a cluster run keeps every byte in object storage "
                "(its nodes share no disk with this machine)",
                "set output to s3://BUCKET/PREFIX or gs://BUCKET/PREFIX in this row, in the manifest's defaults, "
                "or with --set output=s3://BUCKET/PREFIX"))
    return out


def staging_problems(jobs, manifest: str, settings) -> list[Problem]:
    """One problem per local input a cluster run would refuse to upload: a file must be the kind its field takes
    (by content) and lie, symlinks resolved, under the manifest's folder or a staging root. A manifest written by
    someone else must not be able to ship ~/.aws/credentials to a bucket as a `lora:` or `captions:` file."""
    from orchestrator.intake.filetypes import FIELD_KINDS, WHAT, misfit

    m = parse(manifest)
    roots = [Path(m.key).resolve().parent] if m.scheme == "file" else []
    roots += [Path(r).expanduser().resolve() for r in settings.staging_roots or []]
    where = " or ".join(str(r) for r in roots) or "(none: the manifest is not a local file)"
    out = []
    for job in jobs:
        for f in STAGED_FIELDS:
            v = getattr(job, f, None)
            if not v or (f == "captions" and v == "auto") or parse(v).scheme != "file":
                continue
            path = Path(parse(v).key).resolve()
            if not path.is_file():
                continue  # the storage checks say it is missing
            if not any(path.is_relative_to(r) for r in roots):
                out.append(Problem(job.where, f, f"{path} is outside the folders a cluster run uploads from ({where})",
                                   "move the file beside the manifest, or add its folder to staging_roots "
                                   "(S2V_STAGING_ROOTS='[\"/path\"]')"))
            elif why := misfit(f, path):
                out.append(Problem(job.where, f, f"{why}; refusing to upload it to the cluster's bucket",
                                   f"give {f} {WHAT[FIELD_KINDS[f]]}"))
    return out


def bucket_problems(jobs, cfg: dict, config: str) -> list[Problem]:
    """One problem per object-store location of a row whose bucket the cluster's grants do not cover: the head
    would reject the row after upload, or a node would fail on it mid-run."""
    from infra.clusters.config import provider_of
    from infra.clusters.iam import INPUT_KEY, OUTPUT_KEY, covered

    if provider_of(cfg) == "runpod":
        return []  # pods use the user's own object-store keys: no grants of ours to check against
    readable, writable = covered(cfg)
    out = []
    for job in jobs:
        for name in (*STAGED_FIELDS, "model_dir", "output"):
            v = getattr(job, name, None)
            if not v or v == "auto" or parse(v).scheme not in ("s3", "gs"):
                continue
            bucket = parse(v).bucket
            ok = bucket in (writable if name == "output" else readable)
            if not ok:
                kind, flag = ("write", "--output-bucket") if name == "output" else ("read", "--input-bucket")
                out.append(Problem(job.where, name, f"bucket {bucket!r} is not one the nodes of {config} may "
                                   f"{kind} (metadata.s2v.{OUTPUT_KEY if name == 'output' else INPUT_KEY} and "
                                   "the work bucket)", f"`s2v cluster init … {flag} {bucket}` writes the grants for "
                                   f"it, or add it to metadata.s2v and to the nodes' roles yourself"))
    return out


def _object_name(path: Path) -> str:
    """The file's name, kept readable but safe in a URI (no '?', '#', '%' or spaces to trip a parser)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", path.name).strip("._") or "input"
    return name[:120]


@dataclass
class Staged:
    """What staging did: the manifest URI the remote driver reads and the input files it moved."""

    manifest: Uri
    jobs: int
    uploaded: list[str] = field(default_factory=list)  # local paths uploaded now
    reused: list[str] = field(default_factory=list)  # local paths whose content was already in the work area


def stage_inputs(jobs, work: Uri, settings) -> tuple[dict[str, Uri], list[str], list[str]]:
    """Upload each distinct local input once to <work>/inputs/<sha256>/<name>; skip content already there."""
    storage = storage_for(work, settings)
    locals_: dict[str, Path] = {}
    for job in jobs:
        for f in STAGED_FIELDS:
            v = getattr(job, f, None)
            if v and not (f == "captions" and v == "auto") and parse(v).scheme == "file":
                locals_.setdefault(v, Path(parse(v).key))
    staged, uploaded, reused = {}, [], []
    for location, path in locals_.items():
        dest = work.join("inputs", sha256_file(path), _object_name(path))
        if storage.exists(dest):
            reused.append(location)
        else:
            storage.upload(path, dest)
            uploaded.append(location)
        staged[location] = dest
    return staged, uploaded, reused


def staged_manifest_text(jobs, staged: dict[str, Uri], source: str) -> str:
    """The resolved jobs (defaults and --set applied) as YAML, every local input replaced by its staged URI, each
    row under a comment naming the row it came from (the remote driver's messages cite the staged file)."""
    out = [f"# staged by `s2v render --cluster` from {_one_line(source)}: locations are URIs, defaults applied",
           "jobs:"]
    for job in jobs:
        row = job.model_dump(mode="json", exclude_none=True)
        for f in STAGED_FIELDS:
            if row.get(f) in staged:
                row[f] = str(staged[row[f]])
        out.append(f"  # {_one_line(job.source or job.id)}")
        dumped = yaml.safe_dump([row], sort_keys=False, allow_unicode=True, width=120)
        out += ["  " + line if line else line for line in dumped.splitlines()]
    return "\n".join(out) + "\n"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def validate(manifest: str, settings, cli_defaults: dict | None = None, cluster: tuple[dict, str] | None = None):
    """Load and check the manifest on this machine, so problems name the user's file and rows: fields, local
    outputs and inputs that may not be uploaded (refused), buckets the cluster's grants do not cover (with
    cluster: its config and path), inputs present and output prefixes writable. Returns (good jobs, problems);
    raises ManifestError when no job is left to submit."""
    from orchestrator.intake.admission import admit

    def checks(jobs, _):
        out = local_output_problems(jobs) + staging_problems(jobs, manifest, settings)
        return out + (bucket_problems(jobs, *cluster) if cluster else [])

    adm = admit(manifest, settings, cli_defaults, checks=(checks,))
    if not adm.jobs:
        raise ManifestError(f"nothing submitted: every job of {manifest} has a problem", list(adm.problems))
    return list(adm.jobs), list(adm.problems)


def stage(jobs, source: str, work: Uri, settings, echo: Callable[[str], None] = print) -> Staged:
    """Stage the jobs' local inputs and their resolved manifest to the work area (each written once)."""
    from orchestrator.workarea.layout import WorkArea

    WorkArea.at(str(work), settings).ensure_marker()  # what is staged there is s2v's: `s2v gc` may clean it
    staged, uploaded, reused = stage_inputs(jobs, work, settings)
    text = staged_manifest_text(jobs, staged, source)
    digest = hashlib.sha256(text.encode()).hexdigest()[:24]
    dest = work.join("manifests", f"{digest}.yaml")
    st = storage_for(dest, settings)
    if not st.exists(dest):
        st.write_bytes(dest, text.encode())
    if uploaded or reused:
        echo(f"staged {len(uploaded) + len(reused)} local input(s) to {work.join('inputs')} "
             f"({len(uploaded)} uploaded, {len(reused)} already there)")
    return Staged(dest, len(jobs), uploaded, reused)
