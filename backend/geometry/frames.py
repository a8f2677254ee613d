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
