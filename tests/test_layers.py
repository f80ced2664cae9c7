"""The house: every import arrow points down. orchestrator on top; pipeline and infra under it, neither importing
the other's caller; core (errors, settings, retry) at the bottom, importing none of them. Read from the source
with ast, so a lazy import inside a function counts as much as one at the top."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package → the project packages it may import
ALLOWED = {
    "core": set(),
    "pipeline": {"core"},
    "infra": {"core"},
    "orchestrator": {"core", "pipeline", "infra"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_down(package):
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for top in _imports(path) & set(ALLOWED) - {package}:
            if top not in ALLOWED[package]:
                bad.append(f"{path.relative_to(ROOT)} imports {top}")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_lazy_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from orchestrator.errors import X\n    import pipeline.media\n")
    assert _imports(f) == {"orchestrator", "pipeline"}
