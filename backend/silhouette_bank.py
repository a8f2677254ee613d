"""The library's silhouettes on disk, without torch: what the indexer stores for image targets.

Every source's first ``MAX_POINTS`` normalised surface samples (the frame of
``backend.model.sources.stack_sources``: centred on the box, diagonal 1) are
projected from every view of the grid by the perspective camera of
``backend.silhouettes.project``, box-aligned, splatted into ``RESOLUTION`` x
``RESOLUTION`` cells, closed 3 x 3 and bit-packed (``backend.silhouettes.pack``),
9 kB a source. This is numpy so that indexing (``backend.library.build_index``)
never imports torch (1.3 s, more than 100 meshes' worth of silhouettes); a test
checks it against the torch silhouettes cell for cell.

The bank file, ``silhouettes-<key>.npz`` in the index folder: ``bits`` (S, V, R*R/8)
uint8, ``digests`` (S,) the SHA-256 of each row's samples, ``arrays`` (S,) the
source file each row was made from (content-derived names: the indexer reuses a
row whose source file is unchanged without reading it), ``settings``, ``kind`` and
``name``. The key hashes the digests and the settings, so the fitter finds the
file from its own samples; a file is deleted only if it is a bank this module wrote
under that very name.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

RESOLUTION = 32
PAD = 1
FOV = 35.0  # degrees: a typical product shot (a 50 mm lens on full frame is 27 degrees vertically)
ELEVATIONS = (10.0, 25.0, 40.0)
AZIMUTHS = tuple(float(a) for a in range(-180, 180, 15))
MAX_POINTS = 1024
CACHE_VERSION = 2
BANK_KIND = "rfit silhouette bank"

Progress = Callable[[int, int, str], None]


def settings_key(
    elevations: Sequence[float] = ELEVATIONS,
    azimuths: Sequence[float] = AZIMUTHS,
    resolution: int = RESOLUTION,
    max_points: int = MAX_POINTS,
) -> str:
    """Everything a bank's bits depend on besides the samples."""
    return repr((CACHE_VERSION, tuple(elevations), tuple(azimuths), resolution, max_points, PAD, FOV))


def grid_angles(elevations: Sequence[float] = ELEVATIONS, azimuths: Sequence[float] = AZIMUTHS) -> np.ndarray:
    """(V, 2) float64 azimuth, elevation (degrees) of view ``v = e * len(azimuths) + a``."""
    el, az = np.meshgrid(np.asarray(elevations, np.float64), np.asarray(azimuths, np.float64), indexing="ij")
    return np.stack([az.reshape(-1), el.reshape(-1)], axis=1)


def view_axes(angles: np.ndarray) -> np.ndarray:
    """(V, 3, 3) float64 screen right, screen up and viewing direction of views ``angles`` (V, 2) in degrees."""
    az, el = np.radians(angles[:, 0]), np.radians(angles[:, 1])
    zero = np.zeros_like(az)
    right = np.stack([np.cos(az), np.sin(az), zero], axis=-1)
    up = np.stack([-np.sin(az) * np.sin(el), np.cos(az) * np.sin(el), np.cos(el)], axis=-1)
    forward = np.stack([-np.sin(az) * np.cos(el), np.cos(az) * np.cos(el), -np.sin(el)], axis=-1)
    return np.stack([right, up, forward], axis=-2)


def _closed(cells: np.ndarray) -> np.ndarray:
    """(B, R, R) bool: the 3 x 3 closing of ``cells`` (dilation within the grid, erosion with the outside set)."""

    def dilate(m: np.ndarray) -> np.ndarray:
        out = m.copy()
        out[:, :, 1:] |= m[:, :, :-1]
        out[:, :, :-1] |= m[:, :, 1:]
        wide = out.copy()
        out[:, 1:] |= wide[:, :-1]
        out[:, :-1] |= wide[:, 1:]
        return out

    return ~dilate(~dilate(cells))


def bank_bits(
    points: np.ndarray,
    elevations: Sequence[float] = ELEVATIONS,
    azimuths: Sequence[float] = AZIMUTHS,
    resolution: int = RESOLUTION,
    chunk: int = 4,
) -> np.ndarray:
    """(S, V, R*R/8) uint8 packed silhouettes of ``points`` (S, N, 3) float32, normalised frame, from every view.

    Row-major cells, eight to a byte, the first cell in the highest bit (``backend.silhouettes.pack``).
    """
    points = np.ascontiguousarray(points, np.float32)
    axes = view_axes(grid_angles(elevations, azimuths)).astype(np.float32)  # (V, 3, 3)
    v = len(axes)
    flat_axes = axes.reshape(v * 3, 3).T  # (3, V*3)
    distance = np.float32(1.05 * 0.5 / np.sin(np.radians(FOV) / 2))
    inner = resolution - 2 * PAD
    out = np.zeros((len(points), v, resolution * resolution // 8), np.uint8)
    for start in range(0, len(points), chunk):
        block = points[start : start + chunk]
        b, n, _ = block.shape
        cam = (flat_axes.T @ block.transpose(0, 2, 1)).reshape(b * v, 3, n)  # per view: right, up, forward
        depth = cam[:, 2] + distance
        x, y = cam[:, 0] / depth, cam[:, 1] / depth  # (B, N) screen coordinates, x right, y up
        lo_x, hi_x, lo_y, hi_y = x.min(axis=1), x.max(axis=1), y.min(axis=1), y.max(axis=1)
        extent_x, extent_y = hi_x - lo_x, hi_y - lo_y
        scale = np.float32(inner) / np.maximum(np.maximum(extent_x, extent_y), np.float32(1e-9))
        offset_x = np.float32(PAD) + (np.float32(inner) - extent_x * scale) / np.float32(2)
        offset_y = np.float32(PAD) + (np.float32(inner) - extent_y * scale) / np.float32(2)
        column = (offset_x - lo_x * scale)[:, None] + x * scale[:, None]
        row = (offset_y - (-hi_y) * scale)[:, None] + y * (-scale)[:, None]
        column = np.clip(np.floor(column), PAD, resolution - PAD - 1).astype(np.int64)
        row = np.clip(np.floor(row), PAD, resolution - PAD - 1).astype(np.int64)
        index = column + resolution * row + (np.arange(b * v) * resolution * resolution)[:, None]
        masks = np.zeros(b * v * resolution * resolution, bool)
        masks[index.reshape(-1)] = True
        closed = _closed(masks.reshape(b * v, resolution, resolution))
        out[start : start + b] = np.packbits(closed.reshape(b, v, -1), axis=-1)
    return out


def point_digests(points: np.ndarray, max_points: int = MAX_POINTS) -> np.ndarray:
    """(S,) str: SHA-256 of each source's first ``max_points`` samples (S, N, 3) float32, normalised frame."""
    block = np.ascontiguousarray(np.asarray(points, np.float32)[:, :max_points])
    return np.array([hashlib.sha256(row.tobytes()).hexdigest() for row in block], dtype=np.str_)


def bank_name(digests: np.ndarray, settings: str) -> str:
    """The file name of the bank of these rows (``digests`` (S,), in order) made with ``settings``."""
    key = hashlib.sha256(settings.encode())
    for digest in digests:
        key.update(str(digest).encode())
    return f"silhouettes-{key.hexdigest()[:16]}.npz"


def is_bank_file(path: Path) -> bool:
    """Whether ``path`` is a bank this module wrote under that very name (a renamed copy is the user's)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return str(data["kind"]) == BANK_KIND and str(data["name"]) == path.name
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error):
        return False


def read_bank(path: Path, settings: str, keys: Sequence[str] = ("bits", "digests", "arrays")) -> dict | None:
    """The arrays ``keys`` of a bank file made with ``settings``; None if it is missing, damaged or other."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["kind"]) != BANK_KIND or str(data["settings"]) != settings:
                return None
            out = {k: data[k] for k in keys}
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error):
        return None
    rows = {len(v) for v in out.values()}
    return out if len(rows) <= 1 else None


def write_bank(folder: Path, bits: np.ndarray, digests: np.ndarray, arrays: np.ndarray, settings: str) -> Path:
    """Write a bank atomically under its ``bank_name`` and drop the other banks this module wrote there."""
    name = bank_name(digests, settings)
    path = folder / name
    folder.mkdir(parents=True, exist_ok=True)
    handle_no, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")  # own name: two writers
    tmp = Path(tmp_name)
    try:
        with os.fdopen(handle_no, "wb") as handle:
            np.savez(
                handle,
                bits=bits,
                digests=np.asarray(digests, np.str_),
                arrays=np.asarray(arrays, np.str_),
                settings=settings,
                kind=BANK_KIND,
                name=name,
            )
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    for stale in folder.glob("silhouettes-*.npz"):
        if stale != path and is_bank_file(stale):  # the project deletes only files it wrote
            stale.unlink(missing_ok=True)
    return path


def previous_rows(folder: Path, settings: str) -> dict[str, tuple[np.ndarray, str, str]]:
    """Rows of every bank in ``folder`` made with ``settings``: digest -> (bits (V, B), digest, source file),
    and the same rows under their source file's name."""
    rows: dict[str, tuple[np.ndarray, str, str]] = {}
    for path in sorted(folder.glob("silhouettes-*.npz")):
        bank = read_bank(path, settings) if is_bank_file(path) else None
        if bank is None:
            continue
        for bits, digest, array in zip(bank["bits"], bank["digests"], bank["arrays"]):
            rows[str(digest)] = rows[f"file:{array}"] = (bits, str(digest), str(array))
    return rows


def update_bank(
    folder: str | os.PathLike,
    arrays: Sequence[str],
    load_points: Callable[[int], np.ndarray],
    progress: Progress | None = None,
    chunk: int = 64,
) -> Path:
    """Bring the bank of the sources stored as ``arrays`` (S,) (file names in the index, in index order) up to
    date in ``folder``: rows of unchanged source files are kept without reading them, only the others are read
    (``load_points(i)``: (N, 3) float32 normalised samples of source ``i``) and projected. Returns the file."""
    folder = Path(folder)
    settings = settings_key()
    old = previous_rows(folder, settings)
    names = [str(a) for a in arrays]
    rows: list[tuple[np.ndarray, str, str] | None] = [old.get(f"file:{name}") for name in names]
    if all(r is not None for r in rows) and names:
        digests = np.array([r[1] for r in rows], np.str_)
        path = folder / bank_name(digests, settings)
        if path.exists() and [r[2] for r in rows] == names and is_bank_file(path):
            return path  # nothing changed
    missing = [i for i, r in enumerate(rows) if r is None]
    for start in range(0, len(missing), chunk):
        if progress is not None:
            progress(start, len(missing), f"silhouettes of {start} of {len(missing)} new sources")
        part = missing[start : start + chunk]
        points = np.stack([np.asarray(load_points(i), np.float32)[:MAX_POINTS] for i in part])
        digests = point_digests(points)
        for i, bits, digest in zip(part, bank_bits(points), digests):
            rows[i] = old.get(str(digest), (bits, str(digest), names[i]))[:2] + (names[i],)
    if progress is not None and missing:  # a run's progress ends complete
        progress(len(missing), len(missing), f"silhouettes of {len(missing)} new sources")
    bits = np.stack([r[0] for r in rows]) if rows else np.zeros((0, len(ELEVATIONS) * len(AZIMUTHS), 128), np.uint8)
    return write_bank(folder, bits, np.array([r[1] for r in rows], np.str_), np.array(names, np.str_), settings)
