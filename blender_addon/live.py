"""Watching the user's edits, and live "keep connected".

A depsgraph handler notes which parts the user transformed (the edited
flag, ``build.note_edits``) and, in live mode, re-attaches the joints around
them with the same Keep Connected job as the button. In the UI the solve
runs in the worker while the user keeps dragging: at most one request is in
flight, and when it returns only the latest state is sent (coalescing). In
a ``bpy`` module process timers never fire, so there it solves at once.
"""

from __future__ import annotations

import bpy
import numpy as np

from . import api, build

POLL_SECONDS = 0.03
_state: dict = {"busy": False, "job": None, "dirty": set(), "seen": {}}


def moved_fits(depsgraph) -> list:
    parents = []
    for update in depsgraph.updates:
        if update.is_updated_transform and isinstance(update.id, bpy.types.Object):
            obj = update.id.original
            if build.PROP_PREFIX + "part" in obj and obj.parent is not None and obj.parent not in parents:
                parents.append(obj.parent)
    return parents


def _remember(parent) -> None:
    """The boxes as the add-on left them: a later update showing the same is our own write, not a drag."""
    _state["seen"][parent.name] = build.current_boxes(parent)[0]


def on_depsgraph_update(scene, depsgraph) -> None:
    if _state["busy"]:
        return
    parents = [p for p in moved_fits(depsgraph) if p.get(build.PROP_PREFIX + "result")]
    if not parents:
        return
    for parent in parents:
        build.note_edits(parent)
    settings = getattr(scene, "rfit", None)
    if settings is None or not settings.live:
        return
    for parent in parents:
        seen = _state["seen"].get(parent.name)
        boxes = build.current_boxes(parent)[0]
        if seen is None or seen.shape != boxes.shape or not np.allclose(seen, boxes, rtol=0.0, atol=1e-7):
            _state["dirty"].add(parent.name)
    if not _state["dirty"]:
        return
    if bpy.app.background:
        _solve_now(bpy.context)
    elif not bpy.app.timers.is_registered(_tick):
        bpy.app.timers.register(_tick, first_interval=0.0)


def _solve_now(context) -> None:
    _state["busy"] = True
    try:
        while _state["dirty"]:
            parent = bpy.data.objects.get(_state["dirty"].pop())
            if parent is not None:
                api.run(context, api.keep_connected_job(context, parent, live=True))
                _remember(parent)
    except api.RfitError as error:  # live mode never interrupts the user
        context.scene.rfit.status = f"live: {error}"
    finally:
        _state["busy"] = False


def _tick():
    """Timer: collect the answer in flight, then send the latest state of a moved fit."""
    context = bpy.context
    api.pump()
    job, name = _state["job"] or (None, "")
    if job is not None:
        if not job.over:
            return POLL_SECONDS
        _state["job"] = None
        try:
            api.finish(context, job)
            _remember(bpy.data.objects[name])
        except (api.RfitError, KeyError) as error:
            context.scene.rfit.status = f"live: {error}"
    while _state["dirty"]:
        name = _state["dirty"].pop()
        parent = bpy.data.objects.get(name)
        if parent is None or not context.scene.rfit.live:
            continue
        try:
            _state["job"] = (api.start(context, api.keep_connected_job(context, parent, live=True)), name)
        except api.RfitError as error:
            context.scene.rfit.status = f"live: {error}"
            continue
        return POLL_SECONDS
    return None


def watch(enabled: bool) -> None:
    """Note the user's edits (always, while the add-on is enabled)."""
    handlers = bpy.app.handlers.depsgraph_update_post
    if enabled and on_depsgraph_update not in handlers:
        handlers.append(on_depsgraph_update)
    elif not enabled:
        if on_depsgraph_update in handlers:
            handlers.remove(on_depsgraph_update)
        if bpy.app.timers.is_registered(_tick):
            bpy.app.timers.unregister(_tick)


def enable(enabled: bool) -> None:
    """Live mode on or off (the handler itself stays: it also notes edits)."""
    _state["dirty"].clear()
    if enabled:  # what the fits show now is the starting point, not a drag
        for parent in (o for o in bpy.data.objects if o.get(build.PROP_PREFIX + "result")):
            _remember(parent)
