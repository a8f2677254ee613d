"""Writing generated shapes as ordinary model files (one node per part)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh

from backend.geometry.frames import Z_UP_TO_Y_UP
from training.data.furniture import Furniture

# Blender's glTF exporter: Z-up world (x, y, z) -> glTF Y-up (x, z, -y).


def to_scene(shape: Furniture, colours: np.ndarray | None = None) -> trimesh.Scene:
    """A glTF-frame scene with one node per part, named after the part, each
    with a plain PBR material of the given (n_parts, 3) colours."""
    scene = trimesh.Scene()
    for k, (name, mesh) in enumerate(shape.parts.items()):
        node_mesh = mesh.copy()
        node_mesh.apply_transform(Z_UP_TO_Y_UP)
        if colours is not None:
            rgba = np.r_[np.round(np.asarray(colours[k]) * 255), 255].astype(np.uint8)
            material = trimesh.visual.material.PBRMaterial(
                name=f"{name}", baseColorFactor=rgba, roughnessFactor=0.8, metallicFactor=0.0
            )
            node_mesh.visual = trimesh.visual.TextureVisuals(material=material)
        scene.add_geometry(node_mesh, node_name=name, geom_name=name)
    return scene


def write_glb(shape: Furniture, path: Path, colours: np.ndarray | None = None) -> Path:
    """Export ``shape`` to a .glb; the same shape always gives the same bytes.
    ``colours`` defaults to a palette seeded by the shape's vertex coordinates, so the
    same geometry always gets the same colours."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if colours is None:
        from training.data.views import part_colors

        seed = int(sum(float(np.abs(m.vertices).sum()) for m in shape.parts.values()) * 1e6) % 2**32
        colours = part_colors(shape, np.random.default_rng(seed))
    data = to_scene(shape, colours).export(file_type="glb")
    path.write_bytes(data)
    return path
