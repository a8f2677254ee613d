"""Build the installable add-on: ``python build_addon.py`` -> dist/.

- ``dist/rfit-<version>.zip``: a Blender 4.2+ extension (manifest at the
  root), built and validated by Blender's own extension tool when the
  ``bpy`` wheel is installed, else written directly in the same layout.
- ``dist/rfit-<version>-legacy.zip``: the same files under an ``rfit/``
  folder, for Blender 3.4-4.1's "Install add-on".

Both bundle the backend (so the worker runs from the installed add-on),
with the default checkpoint and demo library unless ``--lean``. Training
code is never included.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PACKAGE = "rfit"
EXCLUDED_PARTS = {"__pycache__", ".pytest_cache"}
EXCLUDED_SUFFIXES = {".pyc", ".pyo"}
HEAVY = ("backend/checkpoints", "backend/demo")


def version() -> str:
    text = (ROOT / "backend" / "__init__.py").read_text(encoding="utf-8")
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


def staged_files(lean: bool) -> list[tuple[Path, str]]:
    """(file, path inside the package) of everything the add-on ships."""
    files = []
    for folder, prefix in ((ROOT / "blender_addon", ""), (ROOT / "backend", "backend/")):
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder).as_posix()
            if (
                not path.is_file()
                or set(path.relative_to(ROOT).parts) & EXCLUDED_PARTS
                or path.suffix in EXCLUDED_SUFFIXES
            ):
                continue
            if lean and (prefix + rel).startswith(HEAVY):
                continue
            files.append((path, prefix + rel))
    return files


def extension_tool() -> Path | None:
    try:
        import bpy  # noqa: F401  (only to find the wheel's bundled tool)
    except ImportError:
        return None
    import importlib.util

    spec = importlib.util.find_spec("bpy")
    found = list(Path(spec.origin).parent.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    return found[0] if found else None


def build(out_dir: Path, lean: bool = False) -> tuple[Path, Path]:
    """Write both zips; returns (extension zip, legacy zip)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = staged_files(lean)
    extension = out_dir / f"{PACKAGE}-{version()}.zip"
    legacy = out_dir / f"{PACKAGE}-{version()}-legacy.zip"
    tool = extension_tool()
    if tool is not None:
        with tempfile.TemporaryDirectory() as staging:
            for path, rel in files:
                (Path(staging) / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, Path(staging) / rel)
            for command in (
                ["build", "--source-dir", staging, "--output-filepath", str(extension)],
                ["validate", str(extension)],
            ):
                done = subprocess.run([sys.executable, str(tool), *command], capture_output=True, text=True)
                if done.returncode != 0:
                    raise SystemExit(f"Blender's extension tool failed ({command[0]}):\n{done.stdout}\n{done.stderr}")
    else:
        with zipfile.ZipFile(extension, "w", zipfile.ZIP_DEFLATED) as archive:
            for path, rel in files:
                archive.write(path, rel)
    with zipfile.ZipFile(legacy, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, rel in files:
            archive.write(path, f"{PACKAGE}/{rel}")
    return extension, legacy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="output folder (default: dist/)")
    parser.add_argument("--lean", action="store_true", help="leave out the default checkpoint and the demo library")
    for path in build(parser.parse_args().out, parser.parse_args().lean):
        print(path)


if __name__ == "__main__":
    main()
