"""Axis-aligned part boxes and the per-part deformation they define.

A source with K parts is described by K axis-aligned boxes, each a centre
``c_k`` and a half-size ``s_k`` (metres). Stacked, they form the ``(K, 6)``
parameter array ``[cx, cy, cz, sx, sy, sz]`` whose flattening is the 6K vector
the connectivity constraints act on.

Deforming part k from box (c_k, s_k) to box (c'_k, s'_k) maps every vertex as

    v' = c'_k + (v - c_k) * s'_k / s_k

which is exactly a Blender object transform with the origin at the box centre:
location ``c'_k`` and scale ``s'_k / s_k``.
"""

from __future__ import annotations

import numpy as np

PARAMS_PER_PART = 6


def boxes_from_points(points: np.ndarray, labels: np.ndarray, n_parts: int) -> np.ndarray:
    """Tight axis-aligned box of each labelled point set.

    Args:
        points: (N, 3) positions in metres.
        labels: (N,) part index of every point, in ``[0, n_parts)``.
        n_parts: K.

    Returns:
        (K, 6) float64 ``[centre, half_size]`` per part. A part with no point
        gets a zero box at the origin.
    """
    points = np.asarray(points, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    lo = np.zeros((n_parts, 3))
    hi = np.zeros((n_parts, 3))
    if len(points):
        # Sorted segments + reduceat: much faster than ufunc.at on large inputs.
        order = np.argsort(labels, kind="stable")
        sorted_labels = labels[order]
        present, starts = np.unique(sorted_labels, return_index=True)
        lo[present] = np.minimum.reduceat(points[order], starts, axis=0)
        hi[present] = np.maximum.reduceat(points[order], starts, axis=0)
    return np.concatenate([(lo + hi) / 2.0, (hi - lo) / 2.0], axis=1)


def safe_half_sizes(half_sizes: np.ndarray, min_half_size: float) -> np.ndarray:
    """Half-sizes with every entry raised to at least ``min_half_size``.

    Flat parts (a plank modelled as a single quad) have a zero half-size along
    one axis; dividing by it would be undefined, so that axis is treated as
    having a tiny thickness instead.
    """
    return np.maximum(np.asarray(half_sizes, dtype=np.float64), min_half_size)


def deform_points(
    points: np.ndarray,
    labels: np.ndarray,
    boxes: np.ndarray,
    new_boxes: np.ndarray,
    min_half_size: float = 1e-6,
) -> np.ndarray:
    """Apply the per-part box deformation to labelled points.

    Args:
        points: (N, 3) positions of the undeformed source.
        labels: (N,) part index of every point.
        boxes: (K, 6) original boxes.
        new_boxes: (K, 6) deformed boxes.
        min_half_size: floor used for original half-sizes (see ``safe_half_sizes``).

    Returns:
        (N, 3) deformed positions.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    new_boxes = np.asarray(new_boxes, dtype=np.float64)
    ratio = new_boxes[:, 3:] / safe_half_sizes(boxes[:, 3:], min_half_size)
    labels = np.asarray(labels, dtype=np.int64)
    return new_boxes[labels, :3] + (np.asarray(points, dtype=np.float64) - boxes[labels, :3]) * ratio[labels]


def union_box(boxes: np.ndarray) -> np.ndarray:
    """(6,) smallest axis-aligned box ``[centre, half_size]`` containing every box of a (K, 6) array."""
    boxes = np.asarray(boxes, dtype=np.float64)
    lo = (boxes[:, :3] - boxes[:, 3:]).min(axis=0)
    hi = (boxes[:, :3] + boxes[:, 3:]).max(axis=0)
    return np.concatenate([(lo + hi) / 2.0, (hi - lo) / 2.0])
