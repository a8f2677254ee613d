"""Bilateral (reflection) symmetry of a part-structured shape.

Part deformations are axis-aligned, so only reflection planes normal to a
coordinate axis can be preserved by them; those are the candidates. The
plane passes through the centre of the shape's bounding box, which a
symmetric shape's box always straddles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

NO_AXIS = -1


@dataclass(frozen=True)
class Symmetry:
    """A reflection plane ``x[axis] = offset`` and how parts map across it.

    Attributes:
        axis: 0, 1 or 2, or ``NO_AXIS`` when the shape is not symmetric.
        offset: plane position along ``axis`` (metres).
        error: 95th percentile of the distance from reflected samples to the
            shape, divided by the bounding-box diagonal (0 for a perfect
            mirror image). A percentile rather than the mean, so that a chair
            with one arm is not called symmetric because the arm is small.
        part_mirror: (K,) index of each part's mirror image (itself for a
            part cut by the plane), or -1 where no part matches.
    """

    axis: int
    offset: float
    error: float
    part_mirror: np.ndarray

    @property
    def found(self) -> bool:
        return self.axis != NO_AXIS


def reflect(points: np.ndarray, axis: int, offset: float) -> np.ndarray:
    """Mirror (N, 3) points across the plane ``x[axis] = offset``."""
    out = np.array(points, dtype=np.float64, copy=True)
    out[:, axis] = 2.0 * offset - out[:, axis]
    return out


def mirror_parts(boxes: np.ndarray, axis: int, offset: float, tolerance: float) -> np.ndarray:
    """(K,) for each box, the box that matches its reflection, or -1.

    Args:
        boxes: (K, 6) part boxes.
        axis, offset: the reflection plane.
        tolerance: largest allowed mismatch of centre and half-size (metres).
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    reflected = boxes.copy()
    reflected[:, axis] = 2.0 * offset - reflected[:, axis]
    mismatch = np.abs(reflected[:, None, :] - boxes[None, :, :]).max(axis=2)
    best = mismatch.argmin(axis=1)
    return np.where(mismatch[np.arange(len(boxes)), best] <= tolerance, best, -1)


def detect_symmetry(
    points: np.ndarray,
    boxes: np.ndarray,
    threshold: float = 0.025,
    part_tolerance: float = 0.02,
    probes: np.ndarray | None = None,
) -> Symmetry:
    """Find the best axis-aligned reflection plane of a sampled shape.

    Args:
        points: (N, 3) surface samples of the whole shape, dense enough that
            their spacing is well under ``threshold`` times the diagonal.
        boxes: (K, 6) part boxes, to pair parts across the plane.
        probes: (M, 3) points that are reflected and looked up in ``points``
            (default: ``points`` themselves); a few thousand suffice.
        threshold: largest accepted ``error`` (fraction of the diagonal).
        part_tolerance: part matching tolerance as a fraction of the diagonal.

    Returns:
        The plane with the smallest error under ``threshold``, or one with
        ``axis == NO_AXIS``.
    """
    points = np.asarray(points, dtype=np.float64)
    lo, hi = points.min(axis=0), points.max(axis=0)
    diagonal = float(np.linalg.norm(hi - lo))
    none = Symmetry(NO_AXIS, 0.0, float("inf"), np.full(len(boxes), -1, np.int64))
    if diagonal <= 0.0:
        return none
    tree = cKDTree(points)
    best = none
    for axis in range(3):
        offset = float((lo[axis] + hi[axis]) / 2.0)
        dist, _ = tree.query(reflect(points if probes is None else probes, axis, offset), k=1)
        error = float(np.quantile(dist, 0.95) / diagonal)
        if error <= threshold and error < best.error:
            mirror = mirror_parts(boxes, axis, offset, part_tolerance * diagonal)
            best = Symmetry(axis, offset, error, mirror.astype(np.int64))
    return best
