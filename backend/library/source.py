"""The deformable source: parts, boxes, joints, symmetry and samples.

``build_source`` turns a loaded file (its pieces) into a ``Source``; the
index stores one per library file as an ``.npz`` of plain arrays (no
pickle), so it loads with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
import zlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from backend.geometry.boxes import boxes_from_points
from backend.geometry.connectivity import (
    Contacts,
    find_contacts,
    joint_constraint_matrix,
    null_space_basis,
)
from backend.geometry.sampling import sample_surface, triangle_areas
from backend.geometry.symmetry import detect_symmetry
from backend.library.loading import UP_AXES, LoadedModel, UnreadableModel
from backend.library.segmentation import group_pieces


@dataclass(frozen=True)
class IndexOptions:
    """How library files become sources. Every length is relative to the
    shape's bounding-box diagonal, so results do not depend on units.

    Attributes:
        max_parts: cap on parts per source.
        min_part_fraction: pieces smaller than this (box diagonal) are merged.
        contact_tolerance: surfaces closer than this are connected.
        n_samples: surface samples stored per source.
        contact_samples: denser samples used for contacts and symmetry.
        up_axis: ``"auto"``, ``"Y"`` or ``"Z"`` (see ``backend.library.loading``).
        max_faces: files with more faces are skipped.
    """

    max_parts: int = 16
    min_part_fraction: float = 0.04
    contact_tolerance: float = 0.01
    n_samples: int = 2048
    contact_samples: int = 16384
    up_axis: str = "auto"
    max_faces: int = 2_000_000

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be {rule}, got {getattr(self, name)!r}" for name, rule, ok in _option_rules(self) if not ok
        ]
        if problems:
            raise ValueError("invalid index options: " + "; ".join(problems))

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> IndexOptions:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def fingerprint(self) -> str:
        """Short hash: a source built with other options must be rebuilt."""
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:12]


def _is_int(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return (
        isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool) and np.isfinite(value)
    )


# (option, rule as a user reads it, the test); the CLI checks its flags against the same bounds.
OPTION_BOUNDS = {
    "max_parts": (1, 64),
    "min_part_fraction": (0.0, 0.5),
    "contact_tolerance": (1e-4, 0.2),
    "n_samples": (256, 65536),
    "contact_samples": (1024, 1 << 20),
    "max_faces": (1, 50_000_000),
}


def _option_rules(options: IndexOptions):
    for name, (lo, hi) in OPTION_BOUNDS.items():
        value = getattr(options, name)
        integral = isinstance(IndexOptions.__dataclass_fields__[name].default, int)
        ok = (_is_int(value) if integral else _is_real(value)) and lo <= value <= hi
        yield name, f"{'an integer' if integral else 'a number'} from {lo} to {hi}", ok
    yield "up_axis", f"one of {UP_AXES}", options.up_axis in UP_AXES


OPTIONAL = ("thumbnail",)  # arrays a source file may lack (written by older versions)


@dataclass
class Source:
    """A part-structured, deformable source shape (Z up, metres).

    Attributes:
        boxes: (K, 6) float64 part boxes ``[centre, half_size]``.
        points: (N, 3) float32 area-uniform surface samples.
        point_labels: (N,) int16 part of each sample.
        joint_pairs: (J, 2) int32 connected parts, ``a < b``.
        joint_points: (J, 3) float64 joint positions.
        null_basis: (6K, D) float64 orthonormal basis of connectivity-preserving
            deformations of the stacked box parameters.
        min_half_size: floor for half-sizes (metres), for flat parts.
        symmetry_axis: reflection plane normal axis, or -1.
        symmetry_offset: plane position along that axis (metres).
        part_mirror: (K,) int32 mirror part of each part across the plane, or -1.
        face_part: (F,) int16 part of every face of the file, nodes in order.
        node_names: names of the file's mesh nodes, in the order of ``face_part``.
        piece_names: names of the original pieces (kept for display).
        piece_part: (P,) int16 part of each piece.
        piece_kind: ``"nodes"``, ``"components"`` or ``"partnet"``.
        thumbnail: (S, S, 3) uint8 picture of the model drawn at index time
            (``backend.render.thumbnail``), or None (sources made before thumbnails).
    """

    boxes: np.ndarray
    points: np.ndarray
    point_labels: np.ndarray
    joint_pairs: np.ndarray
    joint_points: np.ndarray
    null_basis: np.ndarray
    min_half_size: float
    symmetry_axis: int
    symmetry_offset: float
    part_mirror: np.ndarray
    face_part: np.ndarray
    node_names: list[str]
    piece_names: list[str]
    piece_part: np.ndarray
    piece_kind: str
    thumbnail: np.ndarray | None = None

    @property
    def n_parts(self) -> int:
        return len(self.boxes)

    @property
    def n_joints(self) -> int:
        return len(self.joint_pairs)

    @property
    def bounds(self) -> np.ndarray:
        """(2, 3) min and max corner of the union of part boxes."""
        lo = (self.boxes[:, :3] - self.boxes[:, 3:]).min(axis=0)
        hi = (self.boxes[:, :3] + self.boxes[:, 3:]).max(axis=0)
        return np.stack([lo, hi])

    def save(self, path: Path) -> None:
        arrays = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in ("node_names", "piece_names"):
            arrays[key] = np.array(arrays[key], dtype=np.str_)
        arrays["piece_kind"] = np.array(self.piece_kind, dtype=np.str_)
        if self.thumbnail is None:
            del arrays["thumbnail"]
        with open(path, "wb") as handle:
            np.savez_compressed(handle, **arrays)

    @classmethod
    def load(cls, path: Path) -> Source:
        """Read and validate a source file.

        Raises:
            ValueError: the file is damaged or not a source (every failure of
                the zip, zlib and .npy readers is turned into this).
        """
        try:
            with np.load(path, allow_pickle=False) as data:
                values = {f.name: data[f.name] for f in fields(cls) if f.name in data.files or f.name not in OPTIONAL}
            for key in ("node_names", "piece_names"):
                values[key] = [str(v) for v in values[key]]
            for key in ("min_half_size", "symmetry_offset"):
                values[key] = float(values[key])
            values["symmetry_axis"] = int(values["symmetry_axis"])
            values["piece_kind"] = str(values["piece_kind"])
        except (OSError, EOFError, KeyError, ValueError, TypeError, zipfile.BadZipFile, zlib.error) as error:
            raise ValueError(f"{type(error).__name__}: {error}") from error
        source = cls(**values)
        source.validate()
        return source

    def validate(self) -> None:
        """Raise ``ValueError`` unless the arrays have the shapes and values of a source."""
        k = len(self.boxes)
        checks = [
            (self.boxes.ndim == 2 and self.boxes.shape[1] == 6 and k >= 1, "boxes must be K x 6"),
            (bool(np.all(np.isfinite(self.boxes))), "boxes must be finite"),
            (self.points.ndim == 2 and self.points.shape[1] == 3, "points must be N x 3"),
            (self.point_labels.shape == self.points.shape[:1], "one label per point"),
            (self.null_basis.ndim == 2 and self.null_basis.shape[0] == 6 * k, "null basis must have 6K rows"),
            (self.joint_pairs.ndim == 2 and self.joint_pairs.shape[1] == 2, "joint pairs must be J x 2"),
            (self.part_mirror.shape == (k,), "one mirror entry per part"),
            (len(self.piece_names) == len(self.piece_part), "one part per piece"),
            (
                self.thumbnail is None
                or (self.thumbnail.dtype == np.uint8 and self.thumbnail.ndim == 3 and self.thumbnail.shape[2] == 3),
                "the thumbnail must be an S x S x 3 uint8 picture",
            ),
        ]
        for ok, rule in checks:
            if not ok:
                raise ValueError(f"not a valid source: {rule}")
        labels = [self.point_labels, self.piece_part, self.face_part, self.joint_pairs]
        if any(len(a) and (a.min() < 0 or a.max() >= k) for a in labels):
            raise ValueError("not a valid source: a part number is out of range")


def _merged_mesh(model: LoadedModel) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All pieces as one mesh: vertices (V, 3), faces (F, 3), and the piece
    of every vertex (V,) and face (F,)."""
    sizes = [len(p.vertices) for p in model.pieces]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    vertices = np.concatenate([p.vertices for p in model.pieces])
    faces = np.concatenate([p.faces + o for p, o in zip(model.pieces, offsets)])
    piece_ids = np.arange(len(model.pieces))
    vertex_piece = np.repeat(piece_ids, sizes)
    face_piece = np.repeat(piece_ids, [len(p.faces) for p in model.pieces])
    return vertices, faces, vertex_piece, face_piece


def build_source(model: LoadedModel, options: IndexOptions, seed: int) -> Source:
    """Segment a loaded file into parts and compute everything a source needs.

    Args:
        model: pieces of the file, in the Z-up world frame.
        options: indexing options.
        seed: sampling seed (derived from the file's content by the index,
            so the same file always gives the same samples).

    Raises:
        UnreadableModel: empty, zero-area or degenerate geometry.
    """
    if not model.pieces:
        raise UnreadableModel("no triangle faces")
    all_vertices, all_faces, vertex_piece, face_piece = _merged_mesh(model)
    if len(all_vertices) == 0 or len(all_faces) == 0:
        raise UnreadableModel("no triangle faces")
    extent = all_vertices.max(axis=0) - all_vertices.min(axis=0)
    diagonal = float(np.linalg.norm(extent))
    area = sum(float(triangle_areas(p.vertices, p.faces).sum()) for p in model.pieces)
    if diagonal <= 0.0 or area <= 1e-12 * max(diagonal, 1e-12) ** 2:
        raise UnreadableModel("zero surface area (degenerate geometry)")

    rng = np.random.default_rng(seed)
    # Contacts and symmetry need points denser than the stored samples; the
    # vertices are exact surface points and keep even a tiny screw visible.
    samples, sample_face = sample_surface(all_vertices, all_faces, options.contact_samples, rng)
    dense = np.concatenate([all_vertices, samples])
    dense_piece = np.concatenate([vertex_piece, face_piece[sample_face]])
    tolerance = options.contact_tolerance * diagonal
    # Twice the mean sample spacing: a surface point is farther than that
    # from every sample with probability exp(-4 pi), about 3e-6.
    spacing = 2.0 * np.sqrt(area / options.contact_samples)
    piece_contacts = find_contacts(
        dense,
        dense_piece,
        len(model.pieces),
        tolerance,
        triangles=all_vertices[all_faces],
        triangle_labels=face_piece,
        spacing=spacing,
    )

    piece_boxes = boxes_from_points(all_vertices, vertex_piece, len(model.pieces))
    piece_part = group_pieces(piece_boxes, piece_contacts, diagonal, options.max_parts, options.min_part_fraction)
    n_parts = int(piece_part.max()) + 1
    contacts: Contacts = piece_contacts.relabel(piece_part)

    boxes = boxes_from_points(all_vertices, piece_part[vertex_piece], n_parts)
    min_half_size = 1e-4 * diagonal
    if n_parts == 1 and np.sum(boxes[0, 3:] <= min_half_size) >= 1:
        raise UnreadableModel("a single flat part: nothing to deform")

    constraint = joint_constraint_matrix(boxes, contacts.pairs, contacts.joint_points, min_half_size)
    basis = null_space_basis(constraint, 6 * n_parts)

    points, point_face = sample_surface(all_vertices, all_faces, options.n_samples, rng)

    symmetry = detect_symmetry(dense, boxes, part_tolerance=2.0 * options.contact_tolerance, probes=points[:1024])

    face_part = np.zeros(int(model.node_face_counts.sum()), dtype=np.int16)
    node_offsets = np.concatenate([[0], np.cumsum(model.node_face_counts)])
    for piece, part in zip(model.pieces, piece_part):
        face_part[node_offsets[piece.node] + piece.node_faces] = part

    return Source(
        boxes=boxes,
        points=points.astype(np.float32),
        point_labels=piece_part[face_piece[point_face]].astype(np.int16),
        joint_pairs=contacts.pairs.astype(np.int32),
        joint_points=contacts.joint_points,
        null_basis=basis,
        min_half_size=min_half_size,
        symmetry_axis=symmetry.axis,
        symmetry_offset=symmetry.offset,
        part_mirror=symmetry.part_mirror.astype(np.int32),
        face_part=face_part,
        node_names=list(model.nodes),
        piece_names=[p.name for p in model.pieces],
        piece_part=piece_part.astype(np.int16),
        piece_kind=model.piece_kind,
    )
