"""Uniform surface sampling of triangle meshes."""

from __future__ import annotations

import hashlib

import numpy as np


def triangle_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(F,) areas of the triangles ``vertices[faces]`` (square metres)."""
    tri = np.asarray(vertices, dtype=np.float64)[np.asarray(faces, dtype=np.int64)]
    return 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)


def sample_surface(
    vertices: np.ndarray,
    faces: np.ndarray,
    count: int,
    rng: np.random.Generator,
    face_weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sample points uniformly by area on a triangle mesh.

    Faces are drawn with probability proportional to area (times
    ``face_weights`` when given); inside a face the point is
    ``(1 - sqrt(r1)) a + sqrt(r1) (1 - r2) b + sqrt(r1) r2 c``, which is uniform
    over the triangle (plain barycentric sampling of (r1, r2) piles points up
    near one corner).

    Args:
        vertices: (V, 3).
        faces: (F, 3) integer indices.
        count: number of points N.
        rng: the generator, so callers control determinism.
        face_weights: optional (F,) non-negative multipliers of the area.

    Returns:
        points (N, 3) float64 and the (N,) index of the face each came from.

    Raises:
        ValueError: if the mesh has no area to sample.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    weights = triangle_areas(vertices, faces)
    if face_weights is not None:
        weights = weights * np.asarray(face_weights, dtype=np.float64)
    total = weights.sum()
    if not np.isfinite(total) or total <= 0.0:
        raise ValueError("mesh has no surface area to sample")
    cumulative = np.cumsum(weights)
    face_index = np.searchsorted(cumulative, rng.random(count) * cumulative[-1], side="right")
    face_index = np.minimum(face_index, len(faces) - 1)
    r1 = np.sqrt(rng.random(count))[:, None]
    r2 = rng.random(count)[:, None]
    tri = vertices[faces[face_index]]
    points = (1.0 - r1) * tri[:, 0] + r1 * (1.0 - r2) * tri[:, 1] + r1 * r2 * tri[:, 2]
    return points, face_index


def seed_from_bytes(data: bytes | str) -> int:
    """A 64-bit seed derived from content, so a file always gets the same samples."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "little")
