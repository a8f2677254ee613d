"""The project's layer rules: backend never imports bpy, the add-on never
imports torch, and neither imports the training code."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(folder: Path) -> dict[str, set[str]]:
    """Top-level module names imported by every .py file under ``folder``."""
    found = {}
    for path in folder.rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[path.relative_to(folder).as_posix()] = names
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
    offenders = {
        path: names & forbidden for path, names in imported_modules(ROOT / folder).items() if names & forbidden
    }
    assert offenders == {}


def test_checker_catches_a_forbidden_import(tmp_path):
    (tmp_path / "mod.py").write_text("import os\nif True:\n    from bpy.types import Operator\n")
    assert imported_modules(tmp_path) == {"mod.py": {"os", "bpy"}}
