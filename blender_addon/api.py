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
    if _client is None or not _client.alive:
        prefs = preferences(context)
        python = getattr(prefs, "backend_python", "") if prefs is not None else ""
        try:
            _client = BackendClient(python or None)
        except BackendUnavailable as error:
            raise RfitError(str(error)) from error
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
    answer = _call(context, "index_library", library=os.path.abspath(directory), index=index or default_index(directory))
    return answer.header


def fit_request(context, obj=None, image_path: str = "") -> tuple[dict, dict, dict]:
    """Arrays and description of the target: the active object or an image file."""
    if image_path:
        image = targets.load_image(image_path)
        return {"image": targets.image_pixels(image)}, {"image": image_path}, {}
    points = targets.points_from_object(obj, context.evaluated_depsgraph_get())
    return {"points": points.astype(np.float32)}, {"object": obj.name}, {}


def retrieve_and_fit(context, index: str, obj=None, image_path: str = "", top_k: int = 5, refine: bool = False, yaw_search: int = 1, checkpoint: str = ""):
    """Fit the target and build the best candidate; returns the parent empty."""
    if not index or not os.path.exists(os.path.join(index, "manifest.json")):
        raise RfitError(f"no library index at {index or '(none chosen)'}: index a library first")
    try:
        arrays, target, _ = fit_request(context, obj, image_path)
    except targets.TargetError as error:
        raise RfitError(str(error)) from error
    options = {"top_k": int(top_k), "refine": bool(refine), "yaw_search": int(yaw_search)}
    answer = _call(context, "fit", arrays, index=index, checkpoint=checkpoint or None, options=options, meshes_for=[0])
    return build_answer(context, answer, {"index": index, "checkpoint": checkpoint, "target": target, "options": options})


def build_answer(context, answer, info: dict):
    """Build the best candidate of a fit answer and select it."""
    candidates = answer["candidates"]
    if not candidates:
        raise RfitError("the library has no source to fit")
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
        context, "keep_connected", {"boxes": boxes}, index=info["index"], source_index=int(parent[build.PROP_PREFIX + "source_index"]),
        locked=[bool(x) for x in locked], excluded=[bool(x) for x in rotated], keep_symmetry=bool(keep_symmetry),
    )
    build.apply_boxes(parent, answer.arrays["boxes"])
    return {"locked": answer["locked"], "lock_residual": answer["lock_residual"], "rotated": [bool(x) for x in rotated]}
