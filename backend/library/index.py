"""The library index on disk: build, update incrementally, load.

Layout of an index folder::

    manifest.json          format version, library root, options, sources, skipped files
    sources/<hash>.npz     one per source (see ``backend.library.source.Source``), with the
                           model's thumbnail drawn at index time (``THUMBNAIL_SIZE`` pixels)
    .lock                  held by the run writing the index (its pid inside)

The index folder belongs to the project: ``build_index`` refuses a folder
that exists and is not an index, the library folder itself, and a folder
inside the library that holds models. The manifest is the single point of
truth. A run writes the ``.npz`` of every new or changed model first, under a
name derived from the model's content and the options, then replaces
``manifest.json`` with one atomic ``os.replace`` (every few dozen models, so
a killed run resumes); only at the end are the files that the previous
manifest named and the new one does not removed. Nothing is ever deleted by
pattern, and no file of the index is ever unpickled. Every source file's
SHA-256 is in the manifest: a damaged one is rebuilt by the next run.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import socket
import sys
import tempfile
import threading
import time
import zipfile
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from backend import __version__, silhouette_bank
from backend.geometry.sampling import seed_from_bytes
from backend.library.loading import MESH_EXTENSIONS, UnreadableModel, load_model
from backend.library.partnet import is_partnet_folder, load_partnet
from backend.library.scanning import PARTNET, LibraryEntry, scan_library
from backend.library.source import IndexOptions, Source, build_source

FORMAT = "rfit-library-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SOURCES_DIR = "sources"
LOCK = ".lock"
LOCK_GUARD = ".lock-guard"
THUMBNAIL_SIZE = 96  # pixels of the picture stored with every source (the add-on's candidate list)
COMMIT_EVERY = 32  # models between manifest commits
COMMIT_SECONDS = 20.0  # ... or seconds, whichever comes first
CRASH_REASON = "the indexing process died while reading this model (killed, e.g. out of memory, or crashed)"

Progress = Callable[[int, int, str], None]
"""``progress(done, total, current_path)``, called after each model; raising inside it stops the run."""


class LibraryIndexError(RuntimeError):
    """An index that cannot be used or written; the message says why."""


@dataclass
class SourceRecord:
    """A manifest row: one indexed model.

    ``arrays_sha256`` is the SHA-256 of the ``.npz`` (empty in manifests
    written before it was recorded)."""

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
    arrays_sha256: str = ""
    thumbnail: int = 0  # pixels of the thumbnail stored in the arrays (0: none, an index from before them)

    @classmethod
    def from_json(cls, data: dict) -> SourceRecord:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


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
    repaired: list[str] = field(default_factory=list)
    relocated_from: str | None = None
    seconds: float = 0.0
    silhouettes: str = ""  # why the silhouette bank could not be stored ("": stored)

    def summary(self) -> str:
        text = (
            f"{len(self.added)} added, {len(self.updated)} updated, {len(self.unchanged)} unchanged, "
            f"{len(self.removed)} removed, {len(self.skipped)} skipped in {self.seconds:.1f} s"
        )
        if self.repaired:
            text += f"; {len(self.repaired)} damaged source files rebuilt"
        if self.relocated_from:
            text += f"; library moved from {self.relocated_from}"
        if self.silhouettes:
            text += f"; silhouettes for image fits not stored ({self.silhouettes}): the first image fit makes them"
        return text

    def to_json(self) -> dict:
        return {**self.__dict__, "skipped": [s.__dict__ for s in self.skipped]}


def _index_command(library: str | os.PathLike, folder: Path, rebuild: bool = False) -> str:
    return f"python -m backend index {library} --out {folder}" + (" --rebuild" if rebuild else "")


class LibraryIndex:
    """A loaded index: its manifest rows and lazy access to source arrays."""

    def __init__(self, folder: Path, manifest: dict):
        self.folder = folder
        self.manifest = manifest
        try:
            self.library_root = Path(manifest["library_root"])
            self.options = IndexOptions.from_json(manifest["options"])
            self.sources = [SourceRecord.from_json(s) for s in manifest["sources"]]
            self.skipped = [SkippedRecord(**s) for s in manifest["skipped"]]
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise LibraryIndexError(
                f"{folder / MANIFEST} is damaged ({type(error).__name__}: {error}); delete the folder or run: "
                + _index_command("LIBRARY", folder, rebuild=True)
            ) from error

    def __len__(self) -> int:
        return len(self.sources)

    def repair_hint(self) -> str:
        return f"run: {_index_command(self.library_root, self.folder)}"

    def load_source(self, i: int) -> Source:
        """Arrays of source ``i`` (manifest order).

        Raises:
            LibraryIndexError: the file is missing or damaged (the message says to re-index).
        """
        record = self.sources[i]
        path = self.folder / record.arrays
        try:
            return Source.load(path)
        except FileNotFoundError as error:
            raise LibraryIndexError(f"{path} (source '{record.path}') is missing; {self.repair_hint()}") from error
        except ValueError as error:
            raise LibraryIndexError(
                f"{path} (source '{record.path}') is damaged ({error}); {self.repair_hint()}"
            ) from error

    def thumbnail(self, i: int, size: int) -> np.ndarray | None:
        """Source ``i``'s thumbnail drawn at index time, if it has one of ``size`` pixels (else None)."""
        if self.sources[i].thumbnail != size:
            return None
        path = self.folder / self.sources[i].arrays
        try:
            with np.load(path, allow_pickle=False) as data:
                picture = data["thumbnail"]
        except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile, zlib.error):
            return None  # the fit still draws one; the next indexing run repairs the file
        ok = picture.dtype == np.uint8 and picture.shape == (size, size, 3)
        return picture if ok else None

    def check_library(self) -> Path:
        """The library folder, resolved.

        Raises:
            LibraryIndexError: it is gone (the message says how to re-point the index).
        """
        root = self.library_root.resolve()
        if not root.is_dir():
            raise LibraryIndexError(
                f"the library folder {self.library_root} of index {self.folder} is gone; if it moved, re-point the "
                f"index: {_index_command('NEW_LIBRARY_FOLDER', self.folder)}"
            )
        return root

    def source_file(self, i: int) -> Path:
        """The model's path in the library; never outside the library root.

        Raises:
            LibraryIndexError: the library folder or the file is gone, or the path escapes.
        """
        root = self.check_library()
        path = (self.library_root / self.sources[i].path).resolve()
        if not path.is_relative_to(root):
            raise LibraryIndexError(f"source path '{self.sources[i].path}' escapes the library folder")
        if not path.exists():
            raise LibraryIndexError(f"{path} is no longer in the library; {self.repair_hint()}")
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
        LibraryIndexError: unreadable, of another format, or of a newer version
            (the message says how to start over).
    """
    path = folder / MANIFEST
    if not path.exists():
        return None
    start_over = f"delete the folder or run: {_index_command('LIBRARY', folder, rebuild=True)}"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise LibraryIndexError(f"{path} is not a readable index manifest ({error}); {start_over}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise LibraryIndexError(f"{path} is not a library index manifest; {start_over}")
    version = manifest.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise LibraryIndexError(f"{path} has format version {version!r}; this backend reads up to {FORMAT_VERSION}")
    shapes = {"library_root": str, "options": dict, "sources": list, "skipped": list}
    wrong = [key for key, kind in shapes.items() if not isinstance(manifest.get(key), kind)]
    rows = manifest.get("sources") if isinstance(manifest.get("sources"), list) else []
    if wrong or not all(isinstance(r, dict) and isinstance(r.get("arrays"), str) for r in rows):
        raise LibraryIndexError(f"{path} is damaged ({', '.join(wrong) or 'sources'} malformed); {start_over}")
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


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- the lock --------------------------------------------------------------------------------


def _process_start(pid: int) -> str:
    """Start time of a process (Linux), to tell a reused pid from the lock's owner; '' if unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _holder_alive(holder: dict) -> bool:
    """Whether the process named in a lock file still runs (True when it cannot be told)."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    started = holder.get("started", "")
    return not started or _process_start(pid) in ("", started)


def _read_holder(path: Path) -> dict:
    try:
        holder = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


@contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    """Hold the index's lock, so two runs never write one index.

    The lock is an advisory lock on ``.lock`` (released by the kernel when its
    holder dies) with the holder's pid written inside. If the lock is busy but
    that pid is gone, the lock is held by leftovers of a dead run (processes
    that inherited it): the lock file is replaced, under a second short-lived
    lock so that two runs never both do so.
    """
    if os.name == "nt":  # pragma: no cover - no pid bookkeeping on Windows
        import msvcrt

        handle = open(folder / LOCK, "a+")
        try:
            try:
                msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
            except OSError as error:
                raise LibraryIndexError(f"another indexing run is writing {folder}") from error
            yield
        finally:
            handle.close()
        return

    import fcntl

    path = folder / LOCK
    with open(folder / LOCK_GUARD, "a") as guard:
        fcntl.flock(guard.fileno(), fcntl.LOCK_EX)
        for _ in range(2):
            handle = open(path, "a+")
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as error:
                handle.close()
                holder = _read_holder(path)
                if _holder_alive(holder):
                    who = f" (pid {holder['pid']})" if "pid" in holder else ""
                    raise LibraryIndexError(f"another indexing run{who} is writing {folder}") from error
                path.unlink(missing_ok=True)  # held by leftovers of a dead run: take a fresh lock file
        else:
            raise LibraryIndexError(f"cannot take the lock {path}")
        handle.seek(0)
        handle.truncate()
        pid = os.getpid()
        handle.write(json.dumps({"pid": pid, "host": socket.gethostname(), "started": _process_start(pid)}))
        handle.flush()
    _held_locks.add(handle.fileno())
    try:
        yield
    finally:
        _held_locks.discard(handle.fileno())
        handle.close()


# -- one model -------------------------------------------------------------------------------


def load_library_model(path: Path, kind: str, root: Path, options: IndexOptions):
    """Read one library model (a mesh file, or a PartNet folder when ``kind`` says so) as the indexer reads it."""
    if kind == PARTNET:
        return load_partnet(path, root, options.up_axis, options.max_faces)
    return load_model(path, root, options.up_axis, options.max_faces)


def _load(entry: LibraryEntry, root: Path, options: IndexOptions):
    return load_library_model(entry.absolute(root), entry.kind, root, options)


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
    except RecursionError:
        return {"path": entry.path, "reason": "the file is nested too deeply to read"}
    except Exception as error:  # a corrupt file must never stop the whole run
        return {"path": entry.path, "reason": f"unexpected error: {type(error).__name__}: {error}"}
    name = f"{sha256[:20]}-{options.fingerprint()}.npz"
    target = sources_dir / name
    tmp = sources_dir / f".{name}.{os.getpid()}.tmp"
    try:
        source.save(tmp)
        digest = file_sha256(tmp)
        os.replace(tmp, target)  # always rewritten: an existing file of that name may be the damaged one
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
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
        arrays_sha256=digest,
        thumbnail=0 if source.thumbnail is None else int(source.thumbnail.shape[0]),
    ).__dict__


def source_from_entry(entry: LibraryEntry, root: Path, options: IndexOptions, sha256: str) -> Source:
    """Load and build the source of one library entry (samples seeded by content), with its thumbnail."""
    model = _load(entry, root, options)
    source = build_source(model, options, seed=seed_from_bytes(sha256))
    try:
        source.thumbnail = model_thumbnail(model, entry.absolute(root), root)
    except Exception:  # a picture must never cost the model its place in the library: the worker draws it per fit
        source.thumbnail = None
    return source


def model_thumbnail(model, path: Path, root: Path, size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """(size, size, 3) uint8 picture of a loaded model in its file's colours (``backend.render.thumbnail``),
    drawn once at index time so that no fit renders one."""
    from backend.library.materials import node_colours
    from backend.render import DEFAULT_ALBEDO, thumbnail

    colours = node_colours(path, root) if path.is_file() else {}
    vertices, faces, face_colours, offset = [], [], [], 0
    for piece in model.pieces:
        colour = colours.get(model.nodes[piece.node])
        vertices.append(piece.vertices)
        faces.append(piece.faces + offset)
        face_colours.append(np.tile(DEFAULT_ALBEDO if colour is None else colour[:3], (len(piece.faces), 1)))
        offset += len(piece.vertices)
    return thumbnail(np.concatenate(vertices), np.concatenate(faces), np.concatenate(face_colours), size)


def _index_entry_star(args: tuple) -> dict:
    return index_entry(*args)


# -- worker processes ------------------------------------------------------------------------


_held_locks: set[int] = set()  # descriptors of the index locks this process holds


def _die_with(parent: int, inherited_locks: tuple[int, ...] = ()) -> None:
    """Pool initializer: end this worker when the indexing process is gone (even SIGKILLed),
    and let go of the lock descriptors a forked worker inherits (only the parent holds the lock)."""
    for fd in inherited_locks:
        try:
            os.close(fd)
        except OSError:
            pass
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass

    def watch() -> None:  # elsewhere, and for a parent that died before prctl
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=watch, name="rfit-parent-watch", daemon=True).start()


def _pool(width: int) -> ProcessPoolExecutor:
    """Worker processes: forked (fast) only while this process runs no other Python thread, since
    a fork copies locks other threads hold (the worker's stdin reader) and deadlocks; else spawned."""
    fork = sys.platform.startswith("linux") and threading.active_count() == 1
    return ProcessPoolExecutor(
        max_workers=width,
        mp_context=multiprocessing.get_context("fork" if fork else "spawn"),
        initializer=_die_with,
        initargs=(os.getpid(), tuple(_held_locks) if fork else ()),
    )


def _run_in_pool(args: list[tuple], jobs: int, on_result: Callable[[int, dict], None]) -> None:
    """Run ``index_entry`` over ``args`` in ``jobs`` processes, calling ``on_result(i, row)``.

    A worker that dies (the OOM killer, a crash in a C library) breaks the
    pool: the models it may have been reading are then retried one at a time
    in a pool of their own, so the one that kills its process is recorded as
    skipped and the run goes on.
    """
    queue = deque(range(len(args)))
    suspects: deque[int] = deque()
    while queue or suspects:
        alone = bool(suspects)
        source = suspects if alone else queue
        window = 1 if alone else jobs  # what a breakage can leave undecided
        inflight: dict = {}
        with _pool(1 if alone else jobs) as pool:
            try:
                while source or inflight:
                    while source and len(inflight) < window:
                        i = source.popleft()
                        inflight[pool.submit(_index_entry_star, args[i])] = i
                    done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                    for future in done:
                        result = future.result()  # raises BrokenProcessPool while still counted in flight
                        on_result(inflight.pop(future), result)
            except BrokenProcessPool:
                undecided = sorted(inflight.values())
                if len(undecided) == 1:  # it was the only one being read: no doubt
                    on_result(undecided[0], {"path": args[undecided[0]][0].path, "reason": CRASH_REASON})
                else:
                    suspects.extend(undecided)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise


# -- the folder ------------------------------------------------------------------------------


def _holds_models(folder: Path) -> bool:
    for here, dirs, files in os.walk(folder):
        if is_partnet_folder(Path(here)) or any(Path(f).suffix.lower() in MESH_EXTENSIONS for f in files):
            return True
        dirs[:] = [d for d in dirs if not d.startswith(".")]
    return False


def _is_own_leftover(name: str) -> bool:
    """Files a first run writes before its first manifest: a run killed then leaves only these."""
    return name in (LOCK, LOCK_GUARD) or (name.startswith(f".{MANIFEST}.") and name.endswith(".tmp"))


def check_index_folder(folder: Path, root: Path) -> None:
    """Refuse an index folder that is not the project's own to write.

    Raises:
        LibraryIndexError: ``folder`` is a file, the library itself, inside the
            library among models, holds the library, or is a folder of the
            user's that is not an index.
    """
    where = folder.resolve()
    if where.exists() and not where.is_dir():
        raise LibraryIndexError(f"--out {folder} is a file, not a folder")
    if where == root:
        raise LibraryIndexError(
            f"--out {folder} is the library folder itself; choose a folder of its own for the index"
        )
    if root.is_relative_to(where):
        raise LibraryIndexError(f"--out {folder} holds the library folder {root}; choose a folder of its own")
    if where.is_relative_to(root) and where.exists() and _holds_models(where):
        raise LibraryIndexError(
            f"--out {folder} is a folder of models inside the library; choose a folder of its own for the index"
        )
    if where.is_dir() and not (where / MANIFEST).exists():
        foreign = sorted(p.name for p in where.iterdir() if not _is_own_leftover(p.name))
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise LibraryIndexError(
                f"--out {folder} exists and is not a library index (it holds {shown}); "
                "choose a new or empty folder for the index"
            )


def _manifest(root: Path, options: IndexOptions, rows: dict[str, dict], skipped: dict[str, dict]) -> str:
    return json.dumps(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_by": f"backend {__version__}",
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "library_root": str(root),
            "options": options.to_json(),
            "sources": [rows[p] for p in sorted(rows)],
            "skipped": [skipped[p] for p in sorted(skipped)],
        },
        indent=1,
    )


def _arrays_intact(folder: Path, row: dict) -> bool:
    """Whether the source file a row names exists and is the one written (by checksum, or by loading it)."""
    path = folder / row["arrays"]
    try:
        if row.get("arrays_sha256"):
            return file_sha256(path) == row["arrays_sha256"]
        Source.load(path)
    except (OSError, ValueError):
        return False
    row["arrays_sha256"] = file_sha256(path)  # recorded from now on
    return True


def build_index(
    library: str | os.PathLike,
    index: str | os.PathLike,
    options: IndexOptions | None = None,
    jobs: int = 1,
    progress: Progress | None = None,
    rebuild: bool = False,
    relocate: bool = False,
) -> IndexReport:
    """Create or update the index of a library folder.

    Only new or changed models are processed (same size and modification
    time, or same content, means unchanged, once the source file's checksum
    is verified); models that disappeared are dropped; a model that cannot be
    read, or kills the process reading it, is listed with the reason and the
    run goes on. Changing ``options`` rebuilds every source. Progress is
    committed every ``COMMIT_EVERY`` models, so an interrupted run resumes.

    Args:
        library: the folder of models, scanned recursively.
        index: the index folder (created if needed; must be new, empty or an index).
        options: indexing options; by default those of the existing index.
        jobs: worker processes (1 runs in this process).
        progress: optional callback after each processed model.
        rebuild: start over: ignore (even an unreadable) previous manifest and rebuild every source.
        relocate: the library moved: re-point an index of another folder at ``library``. An index
            whose library folder no longer exists is re-pointed without asking.

    Raises:
        NotADirectoryError: no such library folder.
        LibraryIndexError: the folder is not the project's own, the index belongs to another library,
            is locked, damaged (without ``rebuild``), or the library holds no model files.
    """
    started = time.perf_counter()
    root = Path(library).resolve()
    folder = Path(index)
    entries, scan_skipped = scan_library(root)  # first: no folder is created for a missing library
    check_index_folder(folder, root)
    if not entries and not scan_skipped:
        raise LibraryIndexError(
            f"no model files found in {root} (looked for {' '.join(MESH_EXTENSIONS)} and PartNet folders); "
            + ("the index is unchanged" if (folder / MANIFEST).exists() else "nothing indexed")
        )
    folder.mkdir(parents=True, exist_ok=True)
    report = IndexReport()

    with _exclusive(folder):
        try:
            previous = read_manifest(folder)
        except LibraryIndexError:
            if not rebuild:
                raise
            previous = None  # unreadable: its files are unknown, so they are left alone
        if previous is not None and Path(previous["library_root"]).resolve() != root:
            old_root = Path(previous["library_root"])
            if not (relocate or rebuild or not old_root.exists()):
                raise LibraryIndexError(
                    f"{folder} indexes {old_root}, not {root}; choose another --out folder "
                    "(or pass --relocate if the library moved there)"
                )
            report.relocated_from = str(old_root)
        if options is None:
            try:
                options = IndexOptions.from_json(previous["options"]) if previous else IndexOptions()
            except (ValueError, TypeError) as error:
                raise LibraryIndexError(
                    f"{folder / MANIFEST} holds invalid options ({error}); give valid ones or run "
                    + _index_command(root, folder, rebuild=True)
                ) from error
        if previous is None:  # marks the folder as an index from the first moment
            _write_atomic(folder / MANIFEST, _manifest(root, options, {}, {}))
        sources_dir = folder / SOURCES_DIR
        sources_dir.mkdir(exist_ok=True)
        fingerprint = options.fingerprint()
        old_sources = {} if rebuild else {s["path"]: s for s in (previous or {}).get("sources", [])}
        old_skipped = {} if rebuild else {s["path"]: s for s in (previous or {}).get("skipped", [])}
        written_before = {s["arrays"] for s in (previous or {}).get("sources", [])}

        rows: dict[str, dict] = {}
        skipped: dict[str, dict] = {p: {"path": p, "reason": r} for p, r in scan_skipped}
        todo: list[tuple[LibraryEntry, str]] = []
        for entry in entries:
            old = old_sources.get(entry.path)
            # rows from before thumbnails are rebuilt once, so every source gets its picture
            reusable = old is not None and old.get("options") == fingerprint and old.get("thumbnail") == THUMBNAIL_SIZE
            if reusable and old["size"] == entry.size and old["mtime_ns"] == entry.mtime_ns:
                if _arrays_intact(folder, old):
                    rows[entry.path] = old
                    report.unchanged.append(entry.path)
                    continue
                report.repaired.append(entry.path)
                reusable = False
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
            if reusable and old["sha256"] == sha and entry.path not in report.repaired and _arrays_intact(folder, old):
                rows[entry.path] = {**old, "size": entry.size, "mtime_ns": entry.mtime_ns}
                report.unchanged.append(entry.path)
                continue
            todo.append((entry, sha))

        commit = _Committer(folder, root, options, old_sources, rows, skipped)
        done = 0

        def on_result(i: int, result: dict) -> None:
            nonlocal done
            entry = todo[i][0]
            path = result["path"]
            if "reason" in result:
                skipped[path] = {**result, "size": entry.size, "mtime_ns": entry.mtime_ns, "options": fingerprint}
            else:
                rows[path] = result
                (report.updated if path in old_sources else report.added).append(path)
            done += 1
            commit.maybe()
            if progress is not None:
                progress(done, len(todo), path)

        args = [(entry, root, sources_dir, options, sha) for entry, sha in todo]
        if jobs > 1 and len(args) > 1:
            _run_in_pool(args, jobs, on_result)
        else:
            for i, item in enumerate(args):
                on_result(i, _index_entry_star(item))

        report.removed = sorted(set(old_sources) - {e.path for e in entries})
        report.skipped = [SkippedRecord(**skipped[p]) for p in sorted(skipped)]
        report.added.sort()
        report.updated.sort()
        _write_atomic(folder / MANIFEST, _manifest(root, options, rows, skipped))
        # Only files a manifest of this index named (so the project wrote them) are ever removed.
        keep = {r["arrays"] for r in rows.values()}
        for name in sorted((written_before | commit.written) - keep):
            target = (folder / name).resolve()
            if target.parent == (folder / SOURCES_DIR).resolve():
                target.unlink(missing_ok=True)
        report.silhouettes = _store_silhouettes(folder, [rows[p]["arrays"] for p in sorted(rows)], progress)
    report.seconds = time.perf_counter() - started
    return report


def _bank_samples(folder: Path, arrays: str) -> np.ndarray:
    """(N, 3) float32 samples of a source file in its normalised frame, computed as
    ``backend.model.sources.stack_sources`` does (a test checks the fitter finds the bank written from them)."""
    with np.load(folder / arrays, allow_pickle=False) as data:
        points, boxes = data["points"], data["boxes"]
    lo = (boxes[:, :3] - boxes[:, 3:]).min(axis=0)
    hi = (boxes[:, :3] + boxes[:, 3:]).max(axis=0)
    centre, scale = (lo + hi) / 2, float(np.linalg.norm(hi - lo))
    return ((points[: silhouette_bank.MAX_POINTS] - centre) / scale).astype(np.float32)


def _store_silhouettes(folder: Path, arrays: list[str], progress: Progress | None = None) -> str:
    """Bring the index's silhouette bank (``backend.silhouette_bank``, what image fits rank by) up to date:
    only new or changed sources are projected, with ``progress`` told every chunk. A failure (or a cancel raised
    from ``progress``) never fails indexing: it is returned as text and the first image fit builds the bank."""
    try:
        silhouette_bank.update_bank(folder, arrays, lambda i: _bank_samples(folder, arrays[i]), progress)
    except Exception as error:  # noqa: BLE001 - any failure here only costs the first image fit time
        return f"{type(error).__name__}: {error}"
    return ""


class _Committer:
    """Writes the manifest every few models: the finished ones plus every previous row
    whose file is still there, so a killed run leaves a usable index and resumes."""

    def __init__(self, folder, root, options, old_sources, rows, skipped):
        self.folder, self.root, self.options = folder, root, options
        self.old_sources, self.rows, self.skipped = old_sources, rows, skipped
        self.pending = 0
        self.last = time.monotonic()
        self.written: set[str] = set()

    def maybe(self) -> None:
        self.pending += 1
        if self.pending < COMMIT_EVERY and time.monotonic() - self.last < COMMIT_SECONDS:
            return
        merged = {p: r for p, r in self.old_sources.items() if p not in self.skipped}
        merged.update(self.rows)
        self.written |= {r["arrays"] for r in merged.values()}
        _write_atomic(self.folder / MANIFEST, _manifest(self.root, self.options, merged, self.skipped))
        self.pending, self.last = 0, time.monotonic()
