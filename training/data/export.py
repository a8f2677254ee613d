"""Writing generated shapes as ordinary model files (one node per part)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh

from training.data.furniture import Furniture

# Blender's glTF exporter: Z-up world (x, y, z) -> glTF Y-up (x, z, -y).
Z_UP_TO_Y_UP = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1.0]])


def to_scene(shape: Furniture) -> trimesh.Scene:
    """A glTF-frame scene with one node per part, named after the part."""
    scene = trimesh.Scene()
    for name, mesh in shape.parts.items():
        node_mesh = mesh.copy()
        node_mesh.apply_transform(Z_UP_TO_Y_UP)
        scene.add_geometry(node_mesh, node_name=name, geom_name=name)
    return scene


def write_glb(shape: Furniture, path: Path) -> Path:
    """Export ``shape`` to a .glb; the same shape always gives the same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = to_scene(shape).export(file_type="glb")
    path.write_bytes(data)
    return path
