"""Live "keep connected": re-attach joints while the user drags parts.

A depsgraph handler, throttled, that runs the same solve as the "Keep
Connected" operator on fits whose parts just moved. It changes only the
parts the user did not touch, inside the user's own transform step, so
undo still takes back the drag and its consequences together.
"""

from __future__ import annotations

import time

import bpy

from . import api

THROTTLE_SECONDS = 0.15
_state = {"last": 0.0, "busy": False}


def moved_fits(depsgraph) -> list:
    parents = []
    for update in depsgraph.updates:
        if update.is_updated_transform and isinstance(update.id, bpy.types.Object):
            obj = update.id.original
            if "rfit_part" in obj and obj.parent is not None and obj.parent not in parents:
                parents.append(obj.parent)
    return parents


def on_depsgraph_update(scene, depsgraph) -> None:
    settings = getattr(scene, "rfit", None)
    if settings is None or not settings.live or _state["busy"]:
        return
    now = time.monotonic()
    if now - _state["last"] < THROTTLE_SECONDS:
        return
    parents = moved_fits(depsgraph)
    if not parents:
        return
    _state["busy"], _state["last"] = True, now
    try:
        for parent in parents:
            api.enforce_connectivity(bpy.context, parent, keep_symmetry=settings.keep_symmetry)
    except api.RfitError as error:  # live mode never interrupts the user
        settings.status = f"live: {error}"
    finally:
        _state["busy"] = False


def enable(enabled: bool) -> None:
    handlers = bpy.app.handlers.depsgraph_update_post
    if enabled and on_depsgraph_update not in handlers:
        handlers.append(on_depsgraph_update)
    elif not enabled and on_depsgraph_update in handlers:
        handlers.remove(on_depsgraph_update)
