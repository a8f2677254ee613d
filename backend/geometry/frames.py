"""Frame conventions shared by the backend, the exporters and the add-on.

The project works Z-up (Blender's convention, metres); glTF files are Y-up.
A fit turned by ``yaw`` about Z places a part at ``pivot + R(yaw) (centre - pivot)``.
"""

from __future__ import annotations

import numpy as np

# glTF is Y-up: this 4x4 maps Z-up coordinates to Y-up ones (its transpose maps back).
Z_UP_TO_Y_UP = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1.0]])


def rotation_z(angle: float) -> np.ndarray:
    """(3, 3) rotation by ``angle`` radians about +Z (counter-clockwise seen from above)."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def view_record(direction, estimated: bool, fov_deg: float | None = None) -> dict:
    """``FitResult.view``: where a target was seen from. ``direction`` (3,) points from the object towards the
    camera or scanner in the candidates' world frame (Z up); also its azimuth ``atan2(y, x)`` and elevation in
    degrees, the camera's vertical field of view (images; None for scans) and whether it was estimated."""
    unit = np.asarray(direction, dtype=np.float64) / np.linalg.norm(direction)
    return {
        "direction": unit.tolist(),
        "azimuth_deg": float(np.degrees(np.arctan2(unit[1], unit[0]))),
        "elevation_deg": float(np.degrees(np.arcsin(np.clip(unit[2], -1.0, 1.0)))),
        "fov_deg": None if fov_deg is None else float(fov_deg),
        "estimated": bool(estimated),
    }


def fit_root(pivot, yaw: float) -> np.ndarray:
    """(4, 4) the fit's own frame in the world (Z up, metres): origin at ``pivot`` (3,), turned by ``yaw`` radians
    about Z. A part lies in the world at ``fit_root @ part_nodes[k]``."""
    root = np.eye(4)
    root[:3, :3] = rotation_z(float(yaw))
    root[:3, 3] = np.asarray(pivot, dtype=np.float64)
    return root


def part_nodes(source_boxes, fitted_boxes, pivot, yaw: float) -> np.ndarray:
    """(K, 4, 4) each part's node in its fit: maps the part's points, taken relative to the centre of its source
    box (Z up, metres), into the fit's frame (``fit_root``). The box is scaled per axis by fitted / source
    half-size and moved to its fitted centre; so a node's translation and scale ARE the fitted box, as the .glb
    and the add-on's objects carry it.

    Args:
        source_boxes: (K, 6) ``[centre, half_size]`` in the source file's frame.
        fitted_boxes: (K, 6) fitted boxes: centres in the world frame, half-sizes along the axes turned by ``yaw``.
        pivot: (3,) the fit's pivot (world frame); yaw: its heading, radians about Z.
    """
    source_boxes = np.asarray(source_boxes, dtype=np.float64)
    fitted_boxes = np.asarray(fitted_boxes, dtype=np.float64)
    nodes = np.zeros((len(source_boxes), 4, 4))
    half = source_boxes[:, 3:]
    scale = np.where(half > 1e-9, fitted_boxes[:, 3:] / np.maximum(half, 1e-9), 1.0)
    nodes[:, [0, 1, 2], [0, 1, 2]] = scale
    nodes[:, :3, 3] = (fitted_boxes[:, :3] - np.asarray(pivot, dtype=np.float64)) @ rotation_z(float(yaw))
    nodes[:, 3, 3] = 1.0
    return nodes


def carry_parts(points, labels, source_boxes, transforms: np.ndarray) -> np.ndarray:
    """(N, 3) points (N, 3) of a source's file frame moved as their parts' boxes were: part ``labels[i]``'s
    transform (K, 4, 4), e.g. ``part_nodes`` or ``fit_root @ part_nodes``, applied to the point relative to its
    source box centre."""
    labels = np.asarray(labels, dtype=np.int64)
    local = np.asarray(points, dtype=np.float64) - np.asarray(source_boxes, dtype=np.float64)[labels, :3]
    transforms = np.asarray(transforms, dtype=np.float64)[labels]
    return np.einsum("nij,nj->ni", transforms[:, :3, :3], local) + transforms[:, :3, 3]
