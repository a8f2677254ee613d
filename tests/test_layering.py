"""The project's layer rules: backend never imports bpy, the add-on never
imports torch, and neither imports the training code, directly or through
any module of the project that it imports (lazy imports inside functions count)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("backend", "blender_addon", "training")
# The built add-on bundles the backend as ``<addon>.backend``; in a checkout it is the sibling package.
BUNDLED = {"blender_addon.backend": "backend"}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(root: Path, packages=PACKAGES) -> dict[str, set[str]]:
    """Every project module under ``root`` -> the dotted names it imports (relative ones made absolute).

    ``from a import b`` records both ``a`` and ``a.b``, since ``b`` may be a module.
    """
    graph = {}
    for package in packages:
        for path in (root / package).rglob("*.py"):
            module = module_name(path, root)
            names = set()
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
                if isinstance(node, ast.Import):
                    names.update(alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom):
                    base = _absolute(node, module, path.name == "__init__.py")
                    names.add(base)
                    names.update(f"{base}.{alias.name}" for alias in node.names)
            graph[module] = {_unbundle(name) for name in names if name}
    return graph


def _unbundle(name: str) -> str:
    for bundled, real in BUNDLED.items():
        if name == bundled or name.startswith(bundled + "."):
            return real + name[len(bundled) :]
    return name


def reachable_imports(graph: dict[str, set[str]], start: str) -> dict[str, str]:
    """Top-level names imported by ``start`` or any project module it reaches -> the module importing it.

    Importing ``a.b.c`` also runs ``a/__init__`` and ``a/b/__init__``, so those are followed too.
    """
    parts = start.split(".")
    todo = [".".join(parts[:k]) for k in range(1, len(parts) + 1) if ".".join(parts[:k]) in graph]
    seen, found = set(todo), {}
    while todo:
        module = todo.pop()
        for name in graph.get(module, ()):
            parts = name.split(".")
            found.setdefault(parts[0], module)
            for k in range(1, len(parts) + 1):
                prefix = ".".join(parts[:k])
                if prefix in graph and prefix not in seen:
                    seen.add(prefix)
                    todo.append(prefix)
    return found


@pytest.mark.parametrize(
    "folder, forbidden",
    [
        ("backend", {"bpy", "bmesh", "mathutils", "training"}),
        ("blender_addon", {"torch", "training"}),
        ("training", {"bpy"}),
    ],
)
def test_folder_never_imports(folder, forbidden):
    assert (ROOT / folder).is_dir()
    graph = import_graph(ROOT)
    offenders = {}
    for module in (m for m in graph if m == folder or m.startswith(folder + ".")):
        bad = {name: via for name, via in reachable_imports(graph, module).items() if name in forbidden}
        if bad:
            offenders[module] = bad
    assert offenders == {}


def test_checker_follows_imports_through_other_modules(tmp_path):
    (tmp_path / "app").mkdir()
    (tmp_path / "lib").mkdir()
    (tmp_path / "app" / "__init__.py").write_text("")
    (tmp_path / "app" / "ui.py").write_text("from .bridge import talk\n")
    (tmp_path / "app" / "bridge.py").write_text("def talk():\n    from lib.core import run\n")
    (tmp_path / "lib" / "__init__.py").write_text("import heavy\n")
    (tmp_path / "lib" / "core.py").write_text("import os\n")
    graph = import_graph(tmp_path, ("app", "lib"))
    found = reachable_imports(graph, "app.ui")
    assert found["heavy"] == "lib"  # reached through app.bridge -> lib.core -> lib/__init__
    assert reachable_imports(graph, "lib.core")["heavy"] == "lib"  # importing lib.core runs lib/__init__
    assert "heavy" not in reachable_imports(import_graph(tmp_path, ("app",)), "app.ui")
