"""Build the installable add-on zip: ``python build_addon.py`` -> dist/rfit-<version>.zip.

The zip holds the add-on package with the backend bundled inside it, so the
worker runs from the installed add-on. Training code is never included.
"""

from __future__ import annotations

import argparse
import re
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PACKAGE = "rfit"
EXCLUDED_PARTS = {"__pycache__", ".pytest_cache"}
EXCLUDED_SUFFIXES = {".pyc", ".pyo"}


def version() -> str:
    text = (ROOT / "backend" / "__init__.py").read_text(encoding="utf-8")
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


def files_under(folder: Path):
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not (set(path.relative_to(ROOT).parts) & EXCLUDED_PARTS) and path.suffix not in EXCLUDED_SUFFIXES:
            yield path


def build(out_dir: Path) -> Path:
    """Write the zip and return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{PACKAGE}-{version()}.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in files_under(ROOT / "blender_addon"):
            archive.write(path, f"{PACKAGE}/{path.relative_to(ROOT / 'blender_addon').as_posix()}")
        for path in files_under(ROOT / "backend"):
            archive.write(path, f"{PACKAGE}/{path.relative_to(ROOT).as_posix()}")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="output folder (default: dist/)")
    print(build(parser.parse_args().out))


if __name__ == "__main__":
    main()
