"""Building a fit in the scene: a parent empty and one object per part.

Each part object's mesh is stored relative to its original box centre, so
its location and scale ARE the fitted box: location = box centre (in the
parent's frame) and scale = fitted / original half-size.
"""

from __future__ import annotations

import json

import numpy as np

from .protocol import rotation_z

PROP_PREFIX = "rfit_"


def _safe_ratio(fitted: np.ndarray, original: np.ndarray) -> np.ndarray:
    return np.where(original > 1e-9, fitted / np.maximum(original, 1e-9), 1.0)


def build_fit(context, candidate: dict, meshes: dict[str, np.ndarray], prefix: str, info: dict):
    """Create the parent empty and the part objects of ``candidate``.

    Args:
        candidate: one entry of the fit result's ``candidates``.
        meshes: the ``{prefix}part{k}_vertices/_faces`` arrays from the backend.
        info: what to remember on the parent (index, checkpoint, target) for
            swapping candidates and refitting.

    Returns:
        The parent empty.
    """
    import bpy

    collection = context.collection or context.scene.collection
    name = candidate["source"].rsplit("/", 1)[-1].rsplit(".", 1)[0]
    pivot = np.asarray(candidate["pivot"], dtype=np.float64)
    yaw = float(candidate["yaw"])
    parent = bpy.data.objects.new(f"Fit {name}", None)
    parent.empty_display_type = "PLAIN_AXES"
    parent.location = pivot
    parent.rotation_euler = (0.0, 0.0, yaw)
    parent[PROP_PREFIX + "result"] = True
    parent[PROP_PREFIX + "source"] = candidate["source"]
    parent[PROP_PREFIX + "source_index"] = int(candidate["source_index"])
    parent[PROP_PREFIX + "rank"] = int(candidate["rank"])
    parent[PROP_PREFIX + "info"] = json.dumps(info)
    collection.objects.link(parent)
    unturn = rotation_z(-yaw)
    for part in candidate["parts"]:
        k = part["index"]
        source_box = np.asarray(part["source_box"], dtype=np.float64)
        fitted = np.asarray(part["fitted_box"], dtype=np.float64)
        vertices = np.asarray(meshes[f"{prefix}part{k}_vertices"], dtype=np.float64) - source_box[:3]
        faces = np.asarray(meshes[f"{prefix}part{k}_faces"], dtype=np.int64)
        mesh = bpy.data.meshes.new(f"{name} part {k}")
        mesh.from_pydata(vertices.tolist(), [], faces.tolist())
        mesh.update()
        colour = meshes.get(f"{prefix}part{k}_colour")
        if colour is not None:
            mesh.materials.append(material_for(colour))
        obj = bpy.data.objects.new(f"{name} part {k:02d}", mesh)
        obj.parent = parent
        obj.location = unturn @ (fitted[:3] - pivot)
        obj.scale = _safe_ratio(fitted[3:], source_box[3:])
        obj[PROP_PREFIX + "source"] = candidate["source"]
        obj[PROP_PREFIX + "part"] = k
        obj[PROP_PREFIX + "source_box"] = source_box.tolist()
        obj[PROP_PREFIX + "original_box"] = part["original_box"]
        obj[PROP_PREFIX + "fitted_box"] = fitted.tolist()
        obj[PROP_PREFIX + "applied_box"] = fitted.tolist()
        collection.objects.link(obj)
    return parent


def material_for(colour) -> object:
    """A shared material of the source's base colour (one per distinct colour)."""
    import bpy

    rgba = [float(c) for c in colour]
    name = "rfit #" + "".join(f"{round(c * 255):02x}" for c in rgba[:3])
    material = bpy.data.materials.get(name)
    if material is None:
        material = bpy.data.materials.new(name)
        material.diffuse_color = rgba
        material.use_nodes = True
        bsdf = material.node_tree.nodes.get("Principled BSDF")
        if bsdf is not None:
            bsdf.inputs["Base Color"].default_value = rgba
    return material


def part_objects(parent) -> list:
    """The part objects of a fit, by part index."""
    parts = [c for c in parent.children if PROP_PREFIX + "part" in c]
    return sorted(parts, key=lambda o: o[PROP_PREFIX + "part"])


def current_boxes(parent) -> tuple[np.ndarray, np.ndarray]:
    """(K, 6) boxes the part objects show now, in the fit's frame as the
    backend reports them, and (K,) whether a part carries a rotation (which
    the deformation model cannot express)."""
    pivot = np.array(parent.location, dtype=np.float64)
    turn = rotation_z(float(parent.rotation_euler[2]))
    boxes, rotated = [], []
    for obj in part_objects(parent):
        source_box = np.asarray(obj[PROP_PREFIX + "source_box"], dtype=np.float64)
        centre = pivot + turn @ np.array(obj.location, dtype=np.float64)
        half = np.where(source_box[3:] > 1e-9, source_box[3:], 0.0) * np.array(obj.scale, dtype=np.float64)
        boxes.append(np.concatenate([centre, half]))
        rotated.append(any(abs(a) > 1e-6 for a in obj.rotation_euler))
    return np.array(boxes), np.array(rotated)


def apply_boxes(parent, boxes: np.ndarray) -> None:
    """Set the part objects' transforms to ``boxes`` (fit frame)."""
    pivot = np.array(parent.location, dtype=np.float64)
    unturn = rotation_z(-float(parent.rotation_euler[2]))
    for obj, box in zip(part_objects(parent), boxes):
        source_box = np.asarray(obj[PROP_PREFIX + "source_box"], dtype=np.float64)
        obj.location = unturn @ (box[:3] - pivot)
        obj.scale = _safe_ratio(box[3:], source_box[3:])
        obj[PROP_PREFIX + "applied_box"] = [float(v) for v in box]


def remove_fit(parent) -> None:
    import bpy

    for obj in part_objects(parent):
        mesh = obj.data
        bpy.data.objects.remove(obj)
        if mesh is not None and mesh.users == 0:
            bpy.data.meshes.remove(mesh)
    bpy.data.objects.remove(parent)
