"""Finding the models of a library folder, without ever leaving it."""

from __future__ import annotations

import errno
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from backend.library.loading import MESH_EXTENSIONS
from backend.library.partnet import OBJ_FOLDER, RESULT_FILE, is_partnet_folder

FILE = "file"
PARTNET = "partnet"


@dataclass(frozen=True)
class LibraryEntry:
    """One model of the library.

    Attributes:
        path: POSIX path relative to the library root (the entry's id).
        kind: ``"file"`` for a mesh file, ``"partnet"`` for a PartNet folder.
        size: bytes (summed over a PartNet folder's files).
        mtime_ns: modification time (the latest, for a PartNet folder).
    """

    path: str
    kind: str
    size: int
    mtime_ns: int

    def absolute(self, root: Path) -> Path:
        return root / self.path

    def member_files(self, root: Path) -> list[Path]:
        """The files whose content defines this entry, in a fixed order."""
        where = self.absolute(root)
        if self.kind == FILE:
            return [where]
        objs = sorted(p for p in (where / OBJ_FOLDER).iterdir() if p.suffix.lower() == ".obj" and p.is_file())
        return [where / RESULT_FILE, *objs]

    def content_hash(self, root: Path) -> str:
        """SHA-256 of the entry's bytes (file names included for folders)."""
        digest = hashlib.sha256()
        for member in self.member_files(root):
            if self.kind != FILE:
                digest.update(member.name.encode("utf-8") + b"\0")
            with open(member, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        return digest.hexdigest()


def inside(path: Path, root: Path) -> bool:
    """True if ``path``, with every symlink resolved, lies inside ``root``."""
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # a symlink loop
        return False


def _link_problem(path: Path) -> str | None:
    """Why a symbolic link cannot be read (a loop, a missing target), or None."""
    if not path.is_symlink():
        return None
    try:
        path.resolve(strict=True)
    except RuntimeError:
        return "symbolic link loop"
    except OSError as error:
        return "symbolic link loop" if error.errno == errno.ELOOP else "broken symbolic link (its target is missing)"
    return None


def _stat_entry(rel: str, kind: str, where: Path) -> LibraryEntry:
    if kind == FILE:
        st = where.stat()
        return LibraryEntry(rel, kind, st.st_size, st.st_mtime_ns)
    files = [where / RESULT_FILE, *(p for p in (where / OBJ_FOLDER).iterdir() if p.is_file())]
    stats = [f.stat() for f in files]
    return LibraryEntry(rel, kind, sum(s.st_size for s in stats), max(s.st_mtime_ns for s in stats))


def scan_library(root: str | os.PathLike) -> tuple[list[LibraryEntry], list[tuple[str, str]]]:
    """List the models under ``root`` recursively.

    Mesh files with a known extension are models; a folder holding PartNet's
    ``result.json`` and ``objs/`` is one model. Symbolic links are never
    followed out of the library: a link whose target lies outside is
    reported, and links to folders are not walked (they could loop).

    Returns:
        (entries sorted by path, skipped ``(path, reason)`` pairs).

    Raises:
        NotADirectoryError: if ``root`` is not a folder.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise NotADirectoryError(f"library folder not found: {root}")
    entries: list[LibraryEntry] = []
    skipped: list[tuple[str, str]] = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        here = Path(folder)
        rel_here = here.relative_to(root)
        if is_partnet_folder(here):
            rel = rel_here.as_posix()
            if inside(here / RESULT_FILE, root) and inside(here / OBJ_FOLDER, root):
                entries.append(_stat_entry(rel, PARTNET, here))
            else:
                skipped.append((rel, "PartNet files link outside the library folder"))
            dirs[:] = []
            continue
        for name in sorted(dirs):
            if (here / name).is_symlink():
                skipped.append(((rel_here / name).as_posix(), "symbolic link to a folder is not followed"))
        dirs[:] = sorted(d for d in dirs if not (here / d).is_symlink() and not d.startswith("."))
        for name in sorted(files):
            if Path(name).suffix.lower() not in MESH_EXTENSIONS or name.startswith("."):
                continue
            path = here / name
            rel = (rel_here / name).as_posix()
            problem = _link_problem(path)
            if problem:
                skipped.append((rel, problem))
            elif not inside(path, root):
                skipped.append((rel, "symbolic link points outside the library folder"))
            elif not path.is_file():
                skipped.append((rel, "not a regular file"))
            else:
                entries.append(_stat_entry(rel, FILE, path))
    entries.sort(key=lambda e: e.path)
    return entries, skipped
