"""The library index on disk: build, update incrementally, load.

Layout of an index folder::

    manifest.json          format version, library root, options, sources, skipped files
    sources/<hash>.npz     one per source (see ``backend.library.source.Source``)

The manifest is the single point of truth. A run writes the ``.npz`` of
every new or changed model first, under a name derived from the model's
content and the options, then replaces ``manifest.json`` with one atomic
``os.replace``; only then are files that no manifest names removed. An
interrupted run therefore leaves the previous index intact (plus stray
files that the next run removes). No file of the index is ever unpickled.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from backend import __version__
from backend.geometry.sampling import seed_from_bytes
from backend.library.loading import UnreadableModel, load_model
from backend.library.partnet import load_partnet
from backend.library.scanning import PARTNET, LibraryEntry, scan_library
from backend.library.source import IndexOptions, Source, build_source

FORMAT = "rfit-library-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SOURCES_DIR = "sources"
LOCK = ".lock"

Progress = Callable[[int, int, str], None]
"""``progress(done, total, current_path)``, called after each model."""


class LibraryIndexError(RuntimeError):
    """An index that cannot be used or written; the message says why."""


@dataclass
class SourceRecord:
    """A manifest row: one indexed model."""

    path: str
    kind: str
    sha256: str
    size: int
    mtime_ns: int
    arrays: str
    n_parts: int
    n_joints: int
    n_pieces: int
    piece_kind: str
    symmetry_axis: int
    bounds: list[list[float]]
    options: str

    @classmethod
    def from_json(cls, data: dict) -> SourceRecord:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


@dataclass
class SkippedRecord:
    """A manifest row: a model that could not be indexed, and why."""

    path: str
    reason: str
    size: int = -1
    mtime_ns: int = -1
    options: str = ""


@dataclass
class IndexReport:
    """What one indexing run did."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    skipped: list[SkippedRecord] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"{len(self.added)} added, {len(self.updated)} updated, {len(self.unchanged)} unchanged, "
            f"{len(self.removed)} removed, {len(self.skipped)} skipped in {self.seconds:.1f} s"
        )


class LibraryIndex:
    """A loaded index: its manifest rows and lazy access to source arrays."""

    def __init__(self, folder: Path, manifest: dict):
        self.folder = folder
        self.manifest = manifest
        self.library_root = Path(manifest["library_root"])
        self.options = IndexOptions.from_json(manifest["options"])
        self.sources = [SourceRecord.from_json(s) for s in manifest["sources"]]
        self.skipped = [SkippedRecord(**s) for s in manifest["skipped"]]

    def __len__(self) -> int:
        return len(self.sources)

    def load_source(self, i: int) -> Source:
        """Arrays of source ``i`` (manifest order)."""
        return Source.load(self.folder / self.sources[i].arrays)

    def source_file(self, i: int) -> Path:
        """The model's path in the library; never outside the library root."""
        path = (self.library_root / self.sources[i].path).resolve()
        if not path.is_relative_to(self.library_root.resolve()):
            raise LibraryIndexError(f"source path '{self.sources[i].path}' escapes the library folder")
        return path

    def info(self) -> dict:
        """Plain summary for ``python -m backend info``."""
        return {
            "index": str(self.folder),
            "library_root": str(self.library_root),
            "format_version": self.manifest["format_version"],
            "options": self.manifest["options"],
            "updated": self.manifest.get("updated"),
            "sources": [
                {
                    "path": s.path,
                    "n_parts": s.n_parts,
                    "n_joints": s.n_joints,
                    "n_pieces": s.n_pieces,
                    "symmetric": s.symmetry_axis >= 0,
                }
                for s in self.sources
            ],
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
        }


def read_manifest(folder: Path) -> dict | None:
    """The manifest of an index folder, ``None`` if there is none yet.

    Raises:
        LibraryIndexError: unreadable, of another format, or of a newer version.
    """
    path = folder / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise LibraryIndexError(f"{path} is not a readable index manifest: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise LibraryIndexError(f"{path} is not a library index manifest")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise LibraryIndexError(
            f"{path} has format version {manifest['format_version']}; this backend reads up to {FORMAT_VERSION}"
        )
    return manifest


def load_index(folder: str | os.PathLike) -> LibraryIndex:
    """Open an index written by ``build_index``.

    Raises:
        LibraryIndexError: no index there, or an unusable one.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        raise LibraryIndexError(f"no library index in {folder} (run: python -m backend index LIBRARY --out {folder})")
    return LibraryIndex(folder, manifest)


def _write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so readers see the old or the new file, never half."""
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    """Hold the index's lock file, so two runs never write one index."""
    handle = open(folder / LOCK, "a+")
    try:
        try:
            if os.name == "nt":
                import msvcrt

                msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            raise LibraryIndexError(f"another indexing run is writing {folder}") from error
        yield
    finally:
        handle.close()


def _load(entry: LibraryEntry, root: Path, options: IndexOptions):
    where = entry.absolute(root)
    if entry.kind == PARTNET:
        return load_partnet(where, root, options.up_axis, options.max_faces)
    return load_model(where, root, options.up_axis, options.max_faces)


def index_entry(entry: LibraryEntry, root: Path, sources_dir: Path, options: IndexOptions, sha256: str) -> dict:
    """Build one model's source and write its arrays (runs in a worker).

    Returns:
        The manifest row as a dict, or ``{"path", "reason"}`` when skipped.
    """
    try:
        source = source_from_entry(entry, root, options, sha256)
    except UnreadableModel as error:
        return {"path": entry.path, "reason": str(error)}
    except MemoryError:
        return {"path": entry.path, "reason": "out of memory while reading the model"}
    except Exception as error:  # a corrupt file must never stop the whole run
        return {"path": entry.path, "reason": f"unexpected error: {type(error).__name__}: {error}"}
    name = f"{sha256[:20]}-{options.fingerprint()}.npz"
    target = sources_dir / name
    if not target.exists():
        tmp = sources_dir / f".{name}.{os.getpid()}.tmp"
        source.save(tmp)
        os.replace(tmp, target)
    return SourceRecord(
        path=entry.path,
        kind=entry.kind,
        sha256=sha256,
        size=entry.size,
        mtime_ns=entry.mtime_ns,
        arrays=f"{SOURCES_DIR}/{name}",
        n_parts=source.n_parts,
        n_joints=source.n_joints,
        n_pieces=len(source.piece_names),
        piece_kind=source.piece_kind,
        symmetry_axis=source.symmetry_axis,
        bounds=source.bounds.tolist(),
        options=options.fingerprint(),
    ).__dict__


def source_from_entry(entry: LibraryEntry, root: Path, options: IndexOptions, sha256: str) -> Source:
    """Load and build the source of one library entry; samples are seeded by content."""
    return build_source(_load(entry, root, options), options, seed=seed_from_bytes(sha256))


def _index_entry_star(args: tuple) -> dict:
    return index_entry(*args)


def build_index(
    library: str | os.PathLike,
    index: str | os.PathLike,
    options: IndexOptions | None = None,
    jobs: int = 1,
    progress: Progress | None = None,
) -> IndexReport:
    """Create or update the index of a library folder.

    Only new or changed models are processed (same size and modification
    time, or same content, means unchanged); models that disappeared are
    dropped; a model that cannot be read is listed with the reason and the
    run goes on. Changing ``options`` rebuilds every source.

    Args:
        library: the folder of models, scanned recursively.
        index: the index folder (created if needed).
        options: indexing options; by default those of the existing index.
        jobs: worker processes (1 runs in this process).
        progress: optional callback after each processed model.

    Raises:
        NotADirectoryError: no such library folder.
        LibraryIndexError: the index belongs to another library, or is locked.
    """
    started = time.perf_counter()
    root = Path(library).resolve()
    folder = Path(index)
    folder.mkdir(parents=True, exist_ok=True)
    sources_dir = folder / SOURCES_DIR
    sources_dir.mkdir(exist_ok=True)
    report = IndexReport()

    with _exclusive(folder):
        previous = read_manifest(folder)
        if previous is not None and Path(previous["library_root"]).resolve() != root:
            raise LibraryIndexError(
                f"{folder} indexes {previous['library_root']}, not {root}; choose another --out folder"
            )
        if options is None:
            options = IndexOptions.from_json(previous["options"]) if previous else IndexOptions()
        fingerprint = options.fingerprint()
        old_sources = {s["path"]: s for s in (previous or {}).get("sources", [])}
        old_skipped = {s["path"]: s for s in (previous or {}).get("skipped", [])}

        entries, scan_skipped = scan_library(root)
        rows: dict[str, dict] = {}
        skipped: dict[str, dict] = {p: {"path": p, "reason": r} for p, r in scan_skipped}
        todo: list[tuple[LibraryEntry, str]] = []
        for entry in entries:
            old = old_sources.get(entry.path)
            same_stat = old is not None and old["size"] == entry.size and old["mtime_ns"] == entry.mtime_ns
            if same_stat and old["options"] == fingerprint and (folder / old["arrays"]).exists():
                rows[entry.path] = old
                report.unchanged.append(entry.path)
                continue
            was_skipped = old_skipped.get(entry.path)
            if (
                was_skipped
                and was_skipped.get("size") == entry.size
                and was_skipped.get("mtime_ns") == entry.mtime_ns
                and was_skipped.get("options") == fingerprint
            ):
                skipped[entry.path] = was_skipped
                continue
            try:
                sha = entry.content_hash(root)
            except OSError as error:
                skipped[entry.path] = {"path": entry.path, "reason": f"cannot read: {error}"}
                continue
            if (
                old is not None
                and old["sha256"] == sha
                and old["options"] == fingerprint
                and (folder / old["arrays"]).exists()
            ):
                rows[entry.path] = {**old, "size": entry.size, "mtime_ns": entry.mtime_ns}
                report.unchanged.append(entry.path)
                continue
            todo.append((entry, sha))

        args = [(entry, root, sources_dir, options, sha) for entry, sha in todo]
        if jobs > 1 and len(args) > 1:
            with ProcessPoolExecutor(max_workers=jobs) as pool:
                results = pool.map(_index_entry_star, args, chunksize=max(1, len(args) // (8 * jobs)))
                _collect(results, todo, old_sources, rows, skipped, report, fingerprint, progress)
        else:
            _collect(map(_index_entry_star, args), todo, old_sources, rows, skipped, report, fingerprint, progress)

        report.removed = sorted(set(old_sources) - {e.path for e in entries})
        report.skipped = [SkippedRecord(**s) for s in sorted(skipped.values(), key=lambda s: s["path"])]
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_by": f"backend {__version__}",
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "library_root": str(root),
            "options": options.to_json(),
            "sources": [rows[p] for p in sorted(rows)],
            "skipped": [s.__dict__ for s in report.skipped],
        }
        _write_atomic(folder / MANIFEST, json.dumps(manifest, indent=1))
        _remove_unreferenced(sources_dir, {Path(r["arrays"]).name for r in rows.values()})
    report.seconds = time.perf_counter() - started
    return report


def _collect(results, todo, old_sources, rows, skipped, report, fingerprint, progress) -> None:
    entries_by_path = {entry.path: entry for entry, _ in todo}
    for done, result in enumerate(results, start=1):
        path = result["path"]
        if "reason" in result:
            entry = entries_by_path[path]
            skipped[path] = {**result, "size": entry.size, "mtime_ns": entry.mtime_ns, "options": fingerprint}
        else:
            rows[path] = result
            (report.updated if path in old_sources else report.added).append(path)
        if progress is not None:
            progress(done, len(todo), path)


def _remove_unreferenced(sources_dir: Path, keep: set[str]) -> None:
    for path in sources_dir.iterdir():
        if path.name not in keep:
            path.unlink(missing_ok=True)
