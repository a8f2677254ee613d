"""Base colours of a file's nodes, so a fitted result keeps the source's look."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh

from backend.library.loading import ConfinedResolver


def _colour(mesh: trimesh.Trimesh) -> np.ndarray | None:
    visual = mesh.visual
    value = None
    material = getattr(visual, "material", None)
    if material is not None:
        for attribute in ("baseColorFactor", "diffuse", "main_color"):
            value = getattr(material, attribute, None)
            if value is not None:
                break
    elif getattr(visual, "kind", None) in ("vertex", "face"):
        value = visual.main_color
    if value is None:
        return None
    value = np.asarray(value, dtype=np.float64).reshape(-1)[:4]
    if value.max() > 1.0:
        value = value / 255.0
    return np.pad(value, (0, 4 - len(value)), constant_values=1.0)


def node_colours(path: str | Path, root: str | Path) -> dict[str, np.ndarray]:
    """``{node name: RGBA in [0, 1]}`` for the nodes that have a material or
    colour; empty when the file has none or its materials cannot be read."""
    path = Path(path)
    kwargs: dict = {"resolver": ConfinedResolver(path, root)}
    if path.suffix.lower() == ".obj":
        kwargs.update(split_objects=True, split_groups=True, group_material=False)
    try:
        scene = trimesh.load_scene(str(path), process=False, **kwargs)
    except Exception:  # colours are a nicety: never fail a fit over them
        return {}
    colours = {}
    for node in scene.graph.nodes_geometry:
        mesh = scene.geometry.get(scene.graph[node][1])
        if isinstance(mesh, trimesh.Trimesh):
            colour = _colour(mesh)
            if colour is not None:
                colours[str(node)] = colour
    return colours
