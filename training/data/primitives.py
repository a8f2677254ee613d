"""Mesh primitives for procedural furniture (Z up, metres).

Every primitive is a closed convex mesh built as the convex hull of a few
points, which keeps them light (tens to a hundred triangles) and makes
"parts that touch" exact: a leg whose top face is at the seat's bottom
height touches the seat.
"""

from __future__ import annotations

import numpy as np
import trimesh


def _hull(points: np.ndarray) -> trimesh.Trimesh:
    mesh = trimesh.convex.convex_hull(np.asarray(points, dtype=np.float64))
    mesh.fix_normals()
    return mesh


def box(lo, hi, bevel: float = 0.0) -> trimesh.Trimesh:
    """Axis-aligned box from corner ``lo`` to ``hi``; ``bevel`` chamfers its
    edges by that distance (clamped to a third of the smallest side)."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    size = hi - lo
    bevel = float(min(max(bevel, 0.0), size.min() / 3.0))
    corners = np.array(np.meshgrid([0, 1], [0, 1], [0, 1], indexing="ij")).reshape(3, -1).T
    if bevel <= 1e-6:
        return _hull(lo + corners * size)
    points = []
    for axis in range(3):
        inset = np.full(3, bevel)
        inset[axis] = 0.0
        points.append(lo + inset + corners * (size - 2 * inset))
    return _hull(np.concatenate(points))


def cushion(lo, hi, roundness: float, rings: int = 4) -> trimesh.Trimesh:
    """A soft, rounded slab: a box whose edges are rounded with ``roundness``
    (a fraction of the smallest side) using ``rings`` steps per quarter."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    size = hi - lo
    radius = float(np.clip(roundness, 0.0, 0.5) * size.min())
    if radius <= 1e-6:
        return box(lo, hi)
    angles = np.linspace(0.0, np.pi / 2.0, rings + 1)
    u, v = np.meshgrid(angles, angles, indexing="ij")
    octant = np.stack([np.cos(u) * np.cos(v), np.sin(u) * np.cos(v), np.sin(v)], axis=-1).reshape(-1, 3)
    points = []
    for signs in np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1], indexing="ij")).reshape(3, -1).T:
        centre = (lo + hi) / 2.0 + signs * (size / 2.0 - radius)
        points.append(centre + signs * octant * radius)
    return _hull(np.concatenate(points))


def cylinder(
    centre_xy, z0: float, z1: float, radius: float, top_radius: float | None = None, sections: int = 20
) -> trimesh.Trimesh:
    """Vertical cylinder (or frustum when ``top_radius`` differs) from z0 to z1."""
    top_radius = radius if top_radius is None else top_radius
    angle = np.linspace(0.0, 2.0 * np.pi, sections, endpoint=False)
    ring = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    cx, cy = centre_xy
    bottom = np.c_[cx + radius * ring[:, 0], cy + radius * ring[:, 1], np.full(sections, z0)]
    top = np.c_[cx + top_radius * ring[:, 0], cy + top_radius * ring[:, 1], np.full(sections, z1)]
    return _hull(np.concatenate([bottom, top]))


def tapered_leg(centre_xy, z0: float, z1: float, bottom_half: float, top_half: float) -> trimesh.Trimesh:
    """Square leg, ``top_half`` wide at z1 narrowing to ``bottom_half`` at z0."""
    cx, cy = centre_xy
    square = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float)
    bottom = np.c_[cx + bottom_half * square[:, 0], cy + bottom_half * square[:, 1], np.full(4, z0)]
    top = np.c_[cx + top_half * square[:, 0], cy + top_half * square[:, 1], np.full(4, z1)]
    return _hull(np.concatenate([bottom, top]))


def bar(start, end, half_width: float) -> trimesh.Trimesh:
    """A square-section bar between two points (spokes, slanted runners)."""
    start, end = np.asarray(start, float), np.asarray(end, float)
    axis = end - start
    axis /= np.linalg.norm(axis)
    helper = np.array([0.0, 0.0, 1.0]) if abs(axis[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    side = np.cross(axis, helper)
    side /= np.linalg.norm(side)
    up = np.cross(side, axis)
    offsets = [half_width * (a * side + b * up) for a in (-1, 1) for b in (-1, 1)]
    return _hull(np.array([p + o for p in (start, end) for o in offsets]))
