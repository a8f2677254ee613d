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
