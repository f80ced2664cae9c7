"""The house: every import arrow points down, at two scales. Between the top packages: orchestrator on top;
pipeline and infra under it, neither importing the other; core (errors, settings, retry) at the bottom. Inside the
orchestrator, sub-packages in the order of the data flow: cli → run | review → render | deliver → plan | remote →
workarea | intake. No import cycle between any two modules, at most three modules loose at the top of orchestrator/, no
module over 450 lines, no function over 80. Read from the source with ast, so a lazy import inside a function
counts as much as one at the top."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "pipeline", "infra", "orchestrator")
# package → the project packages it may import
ALLOWED = {
    "core": set(),
    "pipeline": {"core"},
    "infra": {"core"},
    "orchestrator": {"core", "pipeline", "infra"},
}
# orchestrator sub-package → the sub-packages it may import (besides itself)
INSIDE = {
    "cli": {"review", "run", "render", "deliver", "plan", "remote", "workarea", "intake"},
    "review": {"deliver", "plan", "workarea", "intake"},
    "run": {"render", "deliver", "plan", "workarea", "intake"},
    "render": {"plan", "workarea", "intake"},
    "deliver": {"plan", "workarea", "intake"},
    "plan": {"workarea", "intake"},
    "remote": {"workarea", "intake"},
    "workarea": set(),
    "intake": set(),
}
MAX_MODULE_LINES, MAX_FUNCTION_LINES, MAX_LOOSE = 450, 80, 3


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            out[".".join(parts)] = path
    return out


def _imported(path: Path) -> set[str]:
    """Every project module a file imports, as dotted names (`from a.b import c` names a.b.c when that is a module)."""
    tree = ast.parse(path.read_text(), str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in out if m.split(".")[0] in PACKAGES}


def _imports(path: Path) -> set[str]:
    """The top packages a file imports."""
    return {m.split(".")[0] for m in _imported(path)}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_down(package):
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for top in _imports(path) & set(ALLOWED) - {package}:
            if top not in ALLOWED[package]:
                bad.append(f"{path.relative_to(ROOT)} imports {top}")
    assert not bad, "\n".join(bad)


def test_orchestrator_sub_packages_import_down_the_data_flow():
    assert set(INSIDE) == {p.name for p in (ROOT / "orchestrator").iterdir() if (p / "__init__.py").is_file()}
    bad = []
    for name, path in _modules().items():
        parts = name.split(".")
        if parts[0] != "orchestrator" or len(parts) < 3:
            continue
        sub = parts[1]
        for m in _imported(path):
            target = m.split(".")
            if target[0] == "orchestrator" and len(target) > 1 and target[1] in INSIDE and target[1] != sub \
                    and target[1] not in INSIDE[sub]:
                bad.append(f"{path.relative_to(ROOT)} ({sub}) imports {m}")
    assert not bad, "\n".join(bad)


def test_no_import_cycle_anywhere():
    mods = _modules()
    graph = {m: {t for t in _imported(p) if t in mods and t != m} for m, p in mods.items()}
    # a package's __init__ is not a dependency of its own modules' imports of siblings
    for m in graph:
        graph[m] = {t for t in graph[m] if not m.startswith(t + ".")}
    cycles, state = [], {}

    def visit(m, stack):
        state[m] = "open"
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == "open":
                cycles.append(" → ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not cycles, "\n".join(cycles)


def test_module_and_function_sizes():
    loose = [p.name for p in (ROOT / "orchestrator").glob("*.py")]
    assert len(loose) <= MAX_LOOSE, loose
    big, long_ = [], []
    for name, path in _modules().items():
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            big.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_.append(f"{name}.{node.name}: {n} lines")
    assert not big and not long_, "\n".join(big + long_)


def test_every_module_says_what_it_is_for():
    silent = [name for name, path in _modules().items() if not ast.get_docstring(ast.parse(path.read_text()))]
    assert not silent, silent


def test_the_checker_sees_lazy_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from orchestrator.errors import X\n    import pipeline.media\n")
    assert _imports(f) == {"orchestrator", "pipeline"}
    assert _imported(f) == {"orchestrator.errors", "orchestrator.errors.X", "pipeline.media"}
