"""Building a fit in the scene: a parent empty and one object per part.

Each part object's mesh is stored relative to its original box centre, so
its location and scale ARE the fitted box: location = box centre (in the
parent's frame) and scale = fitted / original half-size.
"""

from __future__ import annotations

import json

import numpy as np

from . import quality
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
        obj[PROP_PREFIX + "source"] = candidate["source"]
        obj[PROP_PREFIX + "part"] = k
        obj[PROP_PREFIX + "source_box"] = source_box.tolist()
        obj[PROP_PREFIX + "original_box"] = part["original_box"]
        obj[PROP_PREFIX + "fitted_box"] = fitted.tolist()
        obj[PROP_PREFIX + "edited"] = False
        collection.objects.link(obj)
    set_residuals(parent, candidate.get("residuals"))
    by_index = sorted(candidate["parts"], key=lambda part: part["index"])
    apply_boxes(parent, np.array([part["fitted_box"] for part in by_index], dtype=np.float64))
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


def set_residuals(parent, residuals: dict | None) -> None:
    """Keep each part's residual (``backend.residuals``: x1e-2, as the chamfer) on the part as
    ``rfit_residual`` (-1: not measured, an image fit); a part shown in residual colours is recoloured."""
    values = (residuals or {}).get("parts_x100") or []
    for obj in part_objects(parent):
        k = obj[PROP_PREFIX + "part"]
        value = values[k] if k < len(values) else None
        obj[PROP_PREFIX + "residual"] = -1.0 if value is None else float(value)
        if obj.get(PROP_PREFIX + "residual_shown"):
            show_residual(obj, True)


def part_residual(obj) -> float | None:
    value = obj.get(PROP_PREFIX + "residual", -1.0)
    return None if value < 0 else float(value)


def show_residual(obj, show: bool) -> None:
    """Colour a part by its residual (an object-linked material over its own, which stays on the mesh)
    or give it back its own colours. Undoable: it is plain data."""
    if show:
        if not obj.material_slots:  # a part without colours: a slot of its own, removed again when hidden
            obj.data.materials.append(None)
            obj[PROP_PREFIX + "residual_slot"] = True
        slot = obj.material_slots[0]
        slot.link = "OBJECT"
        slot.material = material_for(quality.residual_colour(part_residual(obj)))
    elif obj.get(PROP_PREFIX + "residual_shown"):
        for slot in obj.material_slots:
            if slot.link == "OBJECT":
                slot.material = None
                slot.link = "DATA"
        if obj.get(PROP_PREFIX + "residual_slot"):
            obj.data.materials.clear()
            del obj[PROP_PREFIX + "residual_slot"]
    obj[PROP_PREFIX + "residual_shown"] = bool(show)


def part_objects(parent) -> list:
    """The part objects of a fit, by part index."""
    parts = [c for c in parent.children if PROP_PREFIX + "part" in c]
    return sorted(parts, key=lambda o: o[PROP_PREFIX + "part"])


def _box_of(obj, pivot: np.ndarray, turn: np.ndarray) -> np.ndarray:
    """(6,) the box a part object shows now, in the fit's frame."""
    source_box = np.asarray(obj[PROP_PREFIX + "source_box"], dtype=np.float64)
    centre = pivot + turn @ np.array(obj.location, dtype=np.float64)
    half = np.where(source_box[3:] > 1e-9, source_box[3:], 0.0) * np.array(obj.scale, dtype=np.float64)
    return np.concatenate([centre, half])


def box_of(obj, parent) -> np.ndarray:
    """(6,) the box part ``obj`` of ``parent`` shows now, in the fit's frame."""
    return _box_of(obj, np.array(parent.location, dtype=np.float64), rotation_z(float(parent.rotation_euler[2])))


def fit_bounds(parent) -> tuple[np.ndarray, np.ndarray]:
    """The fit's bounding box in its own (turned) frame: its centre in the world (3,) and its size (3,)."""
    boxes, _ = current_boxes(parent)
    pivot = np.array(parent.location, dtype=np.float64)
    turn = rotation_z(float(parent.rotation_euler[2]))
    local = (boxes[:, :3] - pivot) @ turn  # the centres in the fit's frame (rows times the rotation: unturned)
    lo, hi = (local - boxes[:, 3:]).min(axis=0), (local + boxes[:, 3:]).max(axis=0)
    return pivot + turn @ ((lo + hi) / 2), hi - lo


def current_boxes(parent) -> tuple[np.ndarray, np.ndarray]:
    """(K, 6) boxes the part objects show now, in the fit's frame as the
    backend reports them, and (K,) whether a part carries a rotation (which
    the deformation model cannot express)."""
    pivot = np.array(parent.location, dtype=np.float64)
    turn = rotation_z(float(parent.rotation_euler[2]))
    parts = part_objects(parent)
    boxes = np.array([_box_of(obj, pivot, turn) for obj in parts]).reshape(-1, 6)
    rotated = np.array([any(abs(a) > 1e-6 for a in obj.rotation_euler) for obj in parts], dtype=bool)
    return boxes, rotated


def note_edits(parent) -> np.ndarray:
    """(K,) which parts the user edited, kept on each part as ``rfit_edited``.

    A part counts as edited once its transform differs from the last box the
    add-on itself wrote (``rfit_applied_box``) or it carries a rotation; the
    flag stays until Reset or Apply, whatever Keep Connected, Refit or Live
    mode write afterwards."""
    boxes, rotated = current_boxes(parent)
    flags = []
    for obj, box, turned in zip(part_objects(parent), boxes, rotated):
        applied = np.asarray(obj[PROP_PREFIX + "applied_box"], dtype=np.float64)
        moved = bool(np.any(np.abs(box - applied) > 1e-6 * max(1.0, float(np.abs(applied).max()))))
        edited = bool(obj.get(PROP_PREFIX + "edited", False)) or moved or bool(turned)
        if edited != bool(obj.get(PROP_PREFIX + "edited", False)):
            obj[PROP_PREFIX + "edited"] = edited
        flags.append(edited)
    return np.array(flags, dtype=bool)


def applied_boxes(parent) -> np.ndarray:
    """(K, 6) the boxes the add-on itself last wrote (fit frame): the state before the user's edits."""
    return np.array([obj[PROP_PREFIX + "applied_box"] for obj in part_objects(parent)], dtype=np.float64)


def apply_boxes(parent, boxes: np.ndarray, only: np.ndarray | None = None, edited: bool | None = None) -> None:
    """Set the part objects' transforms to ``boxes`` (fit frame), for the
    parts in ``only`` (default all). ``rfit_applied_box`` records what was
    written, read back, so ``note_edits`` sees later changes by the user; the
    edited flag changes only when ``edited`` is given (Reset)."""
    pivot = np.array(parent.location, dtype=np.float64)
    turn = rotation_z(float(parent.rotation_euler[2]))
    unturn = turn.T
    for k, (obj, box) in enumerate(zip(part_objects(parent), boxes)):
        if only is not None and not only[k]:
            continue
        source_box = np.asarray(obj[PROP_PREFIX + "source_box"], dtype=np.float64)
        obj.location = unturn @ (np.asarray(box[:3], dtype=np.float64) - pivot)
        obj.scale = _safe_ratio(np.asarray(box[3:], dtype=np.float64), source_box[3:])
        obj[PROP_PREFIX + "applied_box"] = [float(v) for v in _box_of(obj, pivot, turn)]
        if edited is not None:
            obj[PROP_PREFIX + "edited"] = edited


def remove_fit(parent) -> None:
    import bpy

    for obj in part_objects(parent):
        mesh = obj.data
        bpy.data.objects.remove(obj)
        if mesh is not None and mesh.users == 0:
            bpy.data.meshes.remove(mesh)
    bpy.data.objects.remove(parent)
