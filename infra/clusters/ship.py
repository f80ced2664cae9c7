"""Code shipping: a wheel of the user's checkout (plus a build record) that `s2v cluster up` mounts on every node."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from core.errors import ConfigError

# What goes into the wheel: the packages pyproject.toml's [tool.setuptools.packages.find] includes, with the
# package-data patterns it declares, and the two files the build reads. tests/test_cluster_configs.py checks
# that a built wheel holds exactly these files, so this list and pyproject.toml cannot drift apart silently.
PACKAGES = ("core", "orchestrator", "pipeline", "infra")
SUFFIXES = (".py", ".yaml", ".json", ".html", ".js")  # .js: the lesson player (pipeline/web/lesson.js)
BUILD_FILES = ("pyproject.toml", "README.md")
RECORD = "s2v-build.json"
# The current wheel's file name, for the nodes' setup commands: Ray's rsync of ~/s2v-dist never deletes, so after a
# version bump a node holds the wheels of earlier `up`s too, and `ls ~/s2v-dist/*.whl` named two.
CURRENT = "WHEEL"
# The launcher's Ray version, pinned on the nodes: a Jobs API client and a cluster of another version disagree.
CONSTRAINTS = "constraints.txt"


@dataclass(frozen=True)
class Bundle:
    wheel: Path
    fingerprint: str
    version: str


def source_files(project_root: Path) -> list[Path]:
    """The files that go into the wheel, relative to project_root, sorted."""
    root = Path(project_root)
    if not (root / "pyproject.toml").is_file():
        raise ConfigError(f"{root} is not an s2v-batch checkout (no pyproject.toml); run `s2v cluster up` from the "
                          "project folder or pass --project")
    out = [Path(f) for f in BUILD_FILES if (root / f).is_file()]
    for pkg in PACKAGES:
        for p in sorted((root / pkg).rglob("*")):
            rel = p.relative_to(root)
            if p.is_file() and p.suffix in SUFFIXES and "__pycache__" not in rel.parts \
                    and not any(part.startswith(".") for part in rel.parts):
                out.append(rel)
    return sorted(out)


def source_fingerprint(project_root: Path) -> str:
    """sha256 over the names and bytes of exactly the files that go into the wheel."""
    root = Path(project_root)
    h = hashlib.sha256()
    for rel in source_files(root):
        h.update(rel.as_posix().encode() + b"\0")
        h.update(hashlib.sha256((root / rel).read_bytes()).digest())
    return h.hexdigest()


def _version(project_root: Path) -> str:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: pip vendors the same parser
        from pip._vendor import tomli as tomllib  # type: ignore[no-redef]
    return str(tomllib.loads((Path(project_root) / "pyproject.toml").read_text())["project"]["version"])


def _pip_wheel(src: Path, out: Path) -> None:
    """pip's own wheel build with the project's backend; offline when setuptools is importable here."""
    argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "--quiet", "--wheel-dir", str(out)]
    try:
        import setuptools  # noqa: F401 — only probing whether the backend can run without an index

        argv.append("--no-build-isolation")
    except ImportError:
        pass  # pip fetches the build backend named in pyproject.toml into an isolated environment
    r = subprocess.run(argv + [str(src)], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise ConfigError(f"building the project wheel failed:\n{(r.stderr or r.stdout)[-3000:]}")


def build_bundle(project_root: Path, out_dir: Path, cache: Path | None = None) -> Bundle:
    """Build a wheel of project_root into out_dir, write s2v-build.json and constraints.txt beside it, and remove
    older wheels there; WHEEL names it for the nodes, which may still hold wheels of earlier builds.

    The build runs on a copy of exactly source_files(): a stale build/ folder or a stray file in the checkout never
    reaches the nodes, and the fingerprint describes the wheel's contents. With `cache`, a wheel built before from
    the same fingerprint (the same bytes of the same files) is reused from <cache>/<fingerprint>/ instead of built
    again: `up` on an unchanged checkout, or for a second cluster, costs no build.
    """
    root, out = Path(project_root).resolve(), Path(out_dir)
    fingerprint = source_fingerprint(root)
    version = _version(root)
    out.mkdir(parents=True, exist_ok=True)
    kept = sorted((cache / fingerprint).glob("*.whl")) if cache is not None else []
    with tempfile.TemporaryDirectory(prefix="s2v-build-") as tmp:
        if kept:
            built = Path(tmp) / kept[-1].name
            shutil.copy2(kept[-1], built)
        else:
            built = _build(root, Path(tmp))
            if cache is not None:
                _keep(built, cache / fingerprint)
        for old in out.glob("*.whl"):
            old.unlink()
        wheel = out / built.name
        shutil.move(str(built), wheel)
    built = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    record = {"fingerprint": fingerprint, "version": version, "built": built, "wheel": wheel.name}
    (out / RECORD).write_text(json.dumps(record, indent=1) + "\n")
    (out / CURRENT).write_text(wheel.name + "\n")
    (out / CONSTRAINTS).write_text(_constraints())
    return Bundle(wheel=wheel, fingerprint=fingerprint, version=version)


def _build(root: Path, tmp: Path) -> Path:
    src, wheels = tmp / "src", tmp / "wheels"
    for rel in source_files(root):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, src / rel)
    _pip_wheel(src, wheels)
    (built,) = list(wheels.glob("*.whl"))
    return built


def _keep(wheel: Path, folder: Path) -> None:
    """Into the cache atomically (a concurrent `up` sees a whole wheel or none)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{wheel.name}.{os.getpid()}.partial"  # two `up`s at once never share a temp
    shutil.copy2(wheel, tmp)
    tmp.replace(folder / wheel.name)


def _constraints() -> str:
    from importlib.metadata import version

    return f"ray=={version('ray')}\n"


def read_record(out_dir: Path) -> dict | None:
    try:
        return json.loads((Path(out_dir) / RECORD).read_text())
    except (OSError, ValueError):
        return None
