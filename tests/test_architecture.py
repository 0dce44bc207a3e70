"""The layer rules of ARCHITECTURE.md, enforced on the import graph (parsed with ast, nothing imported).

Packages are dcsim's sub-packages and top-level modules (dcsim.sim, dcsim.cli, dcsim.checks, ...).
Every import counts, at module level or inside a function. The old module paths (dcsim._moved) still import,
with a warning, for one release.
"""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

from dcsim._moved import MOVED

ROOT = Path(__file__).resolve().parent.parent / "dcsim"

NEVER = {
    "library": ({"cli", "workflows"}, "the library never imports the command line or the workflows"),
    "workflows": ({"cli"}, "the workflows never import the command line"),
    "data": ({"training", "models", "sim", "conversion"}, "data never imports training, models or the simulator"),
    "sim": ({"training", "data"}, "the simulator never imports training or data"),
}
LIBRARY = {"allocator", "analysis", "checks", "conversion", "data", "io", "models", "parallel", "sim", "training"}


def _module(path: Path, root: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    is_pkg = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_pkg else parts), is_pkg


def _imports(path: Path, root: Path) -> set[str]:
    """Absolute names of the dcsim modules ``path`` imports."""
    name, is_pkg = _module(path, root)
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == root.name}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                target = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != root.name:
                continue
            found.add(target)
            found |= {f"{target}.{a.name}" for a in node.names}  # 'from dcsim import cli' imports a package
    return found


def _package(module: str) -> str | None:
    """The top-level package (or module) under dcsim of ``module``; None for dcsim itself and private ones."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and not parts[1].startswith("_") else None


def package_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """{package: packages it imports}, over every module under ``root``."""
    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        src = _package(_module(path, root)[0])
        if src is None:
            continue
        targets = {_package(t) for t in _imports(path, root)}
        known = {p.stem for p in root.iterdir() if not p.name.startswith("_")}
        graph.setdefault(src, set()).update(t for t in targets if t in known and t != src)
    return graph


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Broken layer rules, as sentences."""
    out = []
    for src, targets in sorted(graph.items()):
        for rule, (never, why) in NEVER.items():
            applies = src in LIBRARY if rule == "library" else src == rule
            out += [f"{src} imports {t}: {why}" for t in sorted(targets & never) if applies]
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles between packages (each as a path that returns to its start)."""
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_layer_rules_hold():
    assert violations(package_graph()) == []


def test_no_import_cycle_between_packages():
    assert cycles(package_graph()) == []


def test_cli_is_small():
    lines = sum(len(p.read_text().splitlines()) for p in (ROOT / "cli").glob("*.py"))
    assert lines <= 400, f"dcsim/cli has {lines} lines: move work into dcsim.workflows"


@pytest.mark.parametrize(
    ("package", "source", "broken"),
    [
        ("sim", "from ..training import train\n", "sim imports training"),
        ("data", "from ..models import build_model\n", "data imports models"),
        ("io", "from ..workflows.report import report\n", "io imports workflows"),
        ("analysis", "def f():\n    from dcsim.cli import main\n", "analysis imports cli"),
    ],
)
def test_the_checks_catch_a_broken_rule(tmp_path, package, source, broken):
    """A copy of the tree with one forbidden import added fails the check, naming it."""
    import shutil

    root = tmp_path / "dcsim"
    shutil.copytree(ROOT, root, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    (root / package / "offending.py").write_text(source)
    assert any(v.startswith(broken) for v in violations(package_graph(root)))


def test_the_checks_catch_a_cycle(tmp_path):
    import shutil

    root = tmp_path / "dcsim"
    shutil.copytree(ROOT, root, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    (root / "io" / "offending.py").write_text("from ..analysis import tables\n")
    (root / "analysis" / "offending.py").write_text("from ..io import zoo\n")
    assert cycles(package_graph(root)) != [] or "analysis" in package_graph(root)["io"]


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_module_paths_warn_and_forward(old):
    sys.modules.pop(f"dcsim.{old}", None)  # imported afresh, so it warns
    with pytest.warns(DeprecationWarning, match=f"dcsim.{old} moved to dcsim.{MOVED[old]}"):
        module = importlib.import_module(f"dcsim.{old}")
    new = importlib.import_module(f"dcsim.{MOVED[old]}")
    public = [name for name in vars(new) if not name.startswith("_")]
    assert public and all(getattr(module, name) is getattr(new, name) for name in public)
