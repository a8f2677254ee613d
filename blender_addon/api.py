"""The add-on's scriptable API: what the operators do, callable from scripts.

Every function here is synchronous (the worker's answer is awaited); the
operators' modal paths submit the same requests and poll instead, so the UI
never blocks. Functions raise ``RfitError`` with a message for the user and
leave the scene untouched when they fail.
"""

from __future__ import annotations

import json
import os

import numpy as np

from . import build, targets
from .client import BackendClient, BackendUnavailable

_client: BackendClient | None = None


class RfitError(RuntimeError):
    """A user-facing failure: shown in the UI, nothing in the scene changed."""


def preferences(context):
    addon = context.preferences.addons.get(__package__)
    return addon.preferences if addon is not None else None


def client(context) -> BackendClient:
    """The running worker, started on first use with the configured Python."""
    global _client
    if _client is not None and not _client.alive:
        backend_info.clear()
    if _client is None or not _client.alive:
        prefs = preferences(context)
        python = getattr(prefs, "backend_python", "") if prefs is not None else ""
        try:
            _client = BackendClient(python or None)
            hello = _client.wait(_client.submit("hello"), timeout=120)
        except (BackendUnavailable, TimeoutError) as error:
            raise RfitError(str(error)) from error
        backend_info.clear()
        if hello.type == "result":
            backend_info.update(hello.header)
    return _client


def shutdown() -> None:
    global _client
    if _client is not None:
        _client.shutdown()
        _client = None


def default_index(directory: str) -> str:
    return os.path.join(os.path.abspath(directory), ".rfit-index")


def _call(context, kind: str, arrays=None, **fields):
    try:
        answer = client(context).wait(client(context).submit(kind, arrays, **fields))
    except (BackendUnavailable, TimeoutError) as error:
        raise RfitError(str(error)) from error
    if answer.type == "error":
        raise RfitError(answer["message"])
    return answer


def index_library(context, directory: str, index: str = "") -> dict:
    """Index (or update the index of) a folder of models; returns the summary."""
    if not directory or not os.path.isdir(directory):
        raise RfitError(f"library folder not found: {directory or '(none chosen)'}")
    answer = _call(
        context, "index_library", library=os.path.abspath(directory), index=index or default_index(directory)
    )
    return answer.header


def fit_request(context, obj=None, image_path: str = "") -> tuple[dict, dict, dict]:
    """Arrays and description of the target: the active object or an image file."""
    if image_path:
        image = targets.load_image(image_path)
        return {"image": targets.image_pixels(image)}, {"image": image_path}, {}
    points = targets.points_from_object(obj, context.evaluated_depsgraph_get())
    return {"points": points.astype(np.float32)}, {"object": obj.name}, {}


def retrieve_and_fit(
    context,
    index: str,
    obj=None,
    image_path: str = "",
    top_k: int = 5,
    refine: bool = False,
    yaw_search: int = 1,
    checkpoint: str = "",
):
    """Fit the target and build the best candidate; returns the parent empty."""
    if not index or not os.path.exists(os.path.join(index, "manifest.json")):
        raise RfitError(f"no library index at {index or '(none chosen)'}: index a library first")
    try:
        arrays, target, _ = fit_request(context, obj, image_path)
    except targets.TargetError as error:
        raise RfitError(str(error)) from error
    options = {"top_k": int(top_k), "refine": bool(refine), "yaw_search": int(yaw_search)}
    answer = _call(
        context,
        "fit",
        arrays,
        index=index,
        checkpoint=checkpoint or None,
        options=options,
        meshes_for=[0],
        thumbnails=THUMBNAIL_SIZE,
    )
    return build_answer(
        context, answer, {"index": index, "checkpoint": checkpoint, "target": target, "options": options}
    )


THUMBNAIL_SIZE = 96
backend_info: dict = {}


def check_backend(context) -> dict:
    """Start the worker if needed and ask what it runs on."""
    answer = _call(context, "hello")
    backend_info.clear()
    backend_info.update(answer.header)
    return dict(backend_info)


def store_thumbnails(answer) -> dict[int, str]:
    """Image datablocks of the candidates' thumbnails, by rank."""
    import bpy

    names = {}
    for key, pixels in answer.arrays.items():
        if not key.startswith("thumbnail"):
            continue
        rank = int(key[len("thumbnail") :])
        name = f"rfit thumbnail {rank}"
        height, width = pixels.shape[:2]
        image = bpy.data.images.get(name) or bpy.data.images.new(name, width, height)
        if tuple(image.size) != (width, height):
            image.scale(width, height)
        rgba = np.concatenate(
            [pixels[::-1].astype(np.float32) / 255.0, np.ones((height, width, 1), np.float32)], axis=2
        )
        image.pixels.foreach_set(rgba.reshape(-1))
        image.update()
        names[rank] = name
    return names


def build_answer(context, answer, info: dict):
    """Build the best candidate of a fit answer and select it."""
    candidates = answer["candidates"]
    if not candidates:
        raise RfitError("the library has no source to fit")
    for rank, name in store_thumbnails(answer).items():
        candidates[rank]["thumbnail"] = name
    parent = build.build_fit(context, candidates[0], answer.arrays, "c0_", info)
    parent[build.PROP_PREFIX + "candidates"] = json.dumps(candidates)
    _select(context, parent)
    return parent


def _select(context, obj) -> None:
    for other in context.selected_objects:
        other.select_set(False)
    obj.select_set(True)
    context.view_layer.objects.active = obj


def fit_parent(obj):
    """The parent empty of a fit from any of its objects, or None."""
    while obj is not None and not obj.get(build.PROP_PREFIX + "result"):
        obj = obj.parent
    return obj


def use_candidate(context, rank: int, parent=None):
    """Replace the active fit by its candidate ``rank``; returns the new parent."""
    parent = parent or fit_parent(context.active_object)
    if parent is None:
        raise RfitError("select a fitted result first")
    candidates = json.loads(parent[build.PROP_PREFIX + "candidates"])
    if not 0 <= rank < len(candidates):
        raise RfitError(f"there are {len(candidates)} candidates; rank {rank} does not exist")
    info = json.loads(parent[build.PROP_PREFIX + "info"])
    answer = _call(context, "part_meshes", index=info["index"], source_index=candidates[rank]["source_index"])
    new = build.build_fit(context, candidates[rank], answer.arrays, "", info)
    new[build.PROP_PREFIX + "candidates"] = json.dumps(candidates)
    build.remove_fit(parent)
    _select(context, new)
    return new


def enforce_connectivity(context, parent=None, keep_symmetry: bool = False, locked=None) -> dict:
    """Move the parts the user did not edit so every joint is attached again.

    Edited parts (those whose transform changed since the add-on last set
    it, or ``locked`` by index) stay where they are; rotated parts are left out of the solve.
    """
    parent = parent or fit_parent(context.active_object)
    if parent is None:
        raise RfitError("select a fitted result first")
    info = json.loads(parent[build.PROP_PREFIX + "info"])
    boxes, rotated = build.current_boxes(parent)
    if locked is None:
        fitted = np.array([o[build.PROP_PREFIX + "applied_box"] for o in build.part_objects(parent)])
        locked = np.any(np.abs(boxes - fitted) > 1e-6 * max(1.0, float(np.abs(fitted).max())), axis=1)
    answer = _call(
        context,
        "keep_connected",
        {"boxes": boxes},
        index=info["index"],
        source_index=int(parent[build.PROP_PREFIX + "source_index"]),
        locked=[bool(x) for x in locked],
        excluded=[bool(x) for x in rotated],
        keep_symmetry=bool(keep_symmetry),
    )
    build.apply_boxes(parent, answer.arrays["boxes"])
    return {"locked": answer["locked"], "lock_residual": answer["lock_residual"], "rotated": [bool(x) for x in rotated]}


def refit(context, parent=None, keep_edited: bool = True, refine_steps: int = 300) -> dict:
    """Rerun the deformation optimisation against the fit's target, with the
    parts the user edited held where they are (``keep_edited``)."""
    parent = parent or fit_parent(context.active_object)
    if parent is None:
        raise RfitError("select a fitted result first")
    info = json.loads(parent[build.PROP_PREFIX + "info"])
    target = info.get("target", {})
    if "object" not in target:
        raise RfitError("refitting needs a point cloud target; this fit was made from an image")
    obj = context.scene.objects.get(target["object"])
    if obj is None:
        raise RfitError(f"the target object '{target['object']}' is no longer in the scene")
    try:
        points = targets.points_from_object(obj, context.evaluated_depsgraph_get())
    except targets.TargetError as error:
        raise RfitError(str(error)) from error
    boxes, rotated = build.current_boxes(parent)
    applied = np.array([o[build.PROP_PREFIX + "applied_box"] for o in build.part_objects(parent)])
    edited = np.any(np.abs(boxes - applied) > 1e-6 * max(1.0, float(np.abs(applied).max())), axis=1) | rotated
    locked = edited if keep_edited else np.zeros(len(boxes), bool)
    answer = _call(
        context,
        "refit",
        {"points": points.astype(np.float32), "boxes": boxes},
        index=info["index"],
        checkpoint=info.get("checkpoint") or None,
        source_index=int(parent[build.PROP_PREFIX + "source_index"]),
        locked=[bool(x) for x in locked],
        yaw=float(parent.rotation_euler[2]),
        options={"refine_steps": int(refine_steps)},
    )
    fitted = np.array([p["fitted_box"] for p in answer["candidates"][0]["parts"]])
    build.apply_boxes(parent, fitted)
    return {"locked": [bool(x) for x in locked], "chamfer_x100": answer["candidates"][0]["measured_chamfer_x100"]}


def reset_parts(context, parts=None) -> int:
    """Put parts (default: the selected part objects) back to the predicted boxes."""
    parts = parts if parts is not None else [o for o in context.selected_objects if build.PROP_PREFIX + "part" in o]
    for obj in parts:
        parent = obj.parent
        box = np.asarray(obj[build.PROP_PREFIX + "fitted_box"], dtype=np.float64)
        obj.rotation_euler = (0.0, 0.0, 0.0)
        index = build.part_objects(parent).index(obj)
        boxes, _ = build.current_boxes(parent)
        boxes[index] = box
        build.apply_boxes(parent, boxes)
    return len(parts)


def apply_fit(context, parent=None) -> int:
    """Bake every part's scale into its mesh and drop the add-on's properties:
    plain objects from here on. Returns the number of parts baked."""
    parent = parent or fit_parent(context.active_object)
    if parent is None:
        raise RfitError("select a fitted result first")
    parts = build.part_objects(parent)
    for obj in parts:
        scale = np.array(obj.scale, dtype=np.float64)
        co = np.empty(len(obj.data.vertices) * 3, np.float32)
        obj.data.vertices.foreach_get("co", co)
        obj.data.vertices.foreach_set("co", (co.reshape(-1, 3) * scale).astype(np.float32).reshape(-1))
        obj.data.update()
        obj.scale = (1.0, 1.0, 1.0)
    for obj in [parent, *parts]:
        for key in [k for k in obj.keys() if k.startswith(build.PROP_PREFIX)]:
            del obj[key]
    return len(parts)
