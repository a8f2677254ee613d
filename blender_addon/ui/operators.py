"""Operators: a synchronous ``execute`` (scripts, tests) and a modal
``invoke`` that polls the worker on a timer so Blender's UI never waits."""

import functools
import json

import bpy
from bpy.props import BoolProperty, IntProperty, StringProperty

from .. import api, targets


def settings(context):
    return context.scene.rfit


def index_path(context) -> str:
    s = settings(context)
    if s.index_directory:
        return bpy.path.abspath(s.index_directory)
    return api.default_index(bpy.path.abspath(s.library_directory)) if s.library_directory else ""


def checkpoint(context) -> str:
    prefs = api.preferences(context)
    return bpy.path.abspath(prefs.checkpoint) if prefs is not None and prefs.checkpoint else ""


def reports_errors(execute):
    """Turn an ``api.RfitError`` raised by an operator's ``execute`` into a
    report in the UI and a cancelled operator (nothing in the scene changed)."""

    @functools.wraps(execute)
    def wrapper(self, context):
        try:
            return execute(self, context)
        except api.RfitError as error:
            self.report({"ERROR"}, str(error))
            return {"CANCELLED"}

    return wrapper


class BackendModal:
    """Modal plumbing: submit a request, poll on a timer, finish or fail."""

    _timer = None
    _request = None

    def start(self, context, kind, arrays=None, **fields):
        s = settings(context)
        try:
            client = api.client(context)
            self._request = client.submit(kind, arrays, **fields)
        except api.RfitError as error:
            self.report({"ERROR"}, str(error))
            return {"CANCELLED"}
        s.busy, s.progress, s.status = True, 0.0, "working…"
        self._timer = context.window_manager.event_timer_add(0.1, window=context.window)
        context.window_manager.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def stop(self, context, status=""):
        s = settings(context)
        s.busy, s.status = False, status
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)
            self._timer = None
        for area in context.screen.areas if context.screen else []:
            area.tag_redraw()

    def modal(self, context, event):
        if event.type == "ESC":
            api.client(context).submit("cancel", target=self._request)
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        for message in api.client(context).poll():
            if message.id not in (self._request, -1):
                continue
            if message.type == "progress":
                total = max(1, message["total"])
                settings(context).progress = message["done"] / total
                settings(context).status = message.get("text", "")[-60:]
            elif message.type == "error":
                self.stop(context, "cancelled" if message.get("cancelled") else "failed")
                self.report({"ERROR"}, message["message"])
                return {"CANCELLED"}
            elif message.type == "result":
                try:
                    status = self.finish(context, message)
                except api.RfitError as error:
                    self.stop(context, "failed")
                    self.report({"ERROR"}, str(error))
                    return {"CANCELLED"}
                self.stop(context, status)
                return {"FINISHED"}
        return {"RUNNING_MODAL"}


class RFIT_OT_index_library(BackendModal, bpy.types.Operator):
    """Index a folder of models: split each into parts, find joints and symmetry"""

    bl_idname = "rfit.index_library"
    bl_label = "Index Library"

    directory: StringProperty(name="Library", subtype="DIR_PATH")
    index: StringProperty(name="Index", subtype="DIR_PATH")

    def paths(self, context):
        directory = bpy.path.abspath(self.directory or settings(context).library_directory)
        return directory, (
            bpy.path.abspath(self.index)
            if self.index
            else (index_path(context) if not self.directory else api.default_index(directory))
        )

    @reports_errors
    def execute(self, context):
        directory, index = self.paths(context)
        summary = api.index_library(context, directory, index)
        settings(context).library_directory, settings(context).index_directory = directory, index
        self.report({"INFO"}, summary["summary"])
        return {"FINISHED"}

    def invoke(self, context, event):
        directory, index = self.paths(context)
        if not directory:
            self.report({"ERROR"}, "choose a library folder first")
            return {"CANCELLED"}
        self._paths = (directory, index)
        return self.start(context, "index_library", library=directory, index=index)

    def finish(self, context, message):
        settings(context).library_directory, settings(context).index_directory = self._paths
        self.report({"INFO"}, message["summary"])
        return message["summary"]


class RFIT_OT_retrieve_and_fit(BackendModal, bpy.types.Operator):
    """Retrieve models from the library for the active object (or the reference image) and fit them part by part"""

    bl_idname = "rfit.retrieve_and_fit"
    bl_label = "Retrieve and Fit"
    bl_options = {"REGISTER", "UNDO"}

    image_path: StringProperty(name="Image", subtype="FILE_PATH")
    top_k: IntProperty(name="Candidates", default=0, min=0, description="0: the panel's setting")
    refine: BoolProperty(name="Refine", default=True)
    yaw_search: IntProperty(name="Yaw search", default=0, min=0, description="0: the panel's setting")

    def fit_options(self, context):
        s = settings(context)
        return {
            "top_k": self.top_k or s.top_k,
            "refine": self.refine and s.refine,
            "yaw_search": self.yaw_search or s.yaw_search,
        }

    @reports_errors
    def execute(self, context):
        image = bpy.path.abspath(self.image_path) if self.image_path else ""
        parent = api.retrieve_and_fit(
            context,
            index_path(context),
            obj=None if image else context.active_object,
            image_path=image,
            checkpoint=checkpoint(context),
            **self.fit_options(context),
        )
        self.after_fit(context, parent)
        return {"FINISHED"}

    def invoke(self, context, event):
        image = (
            bpy.path.abspath(self.image_path or settings(context).image_path)
            if (self.image_path or settings(context).image_path)
            else ""
        )
        index = index_path(context)
        try:
            if not index:
                raise api.RfitError("choose and index a library first")
            arrays, target, _ = api.fit_request(context, None if image else context.active_object, image)
        except (api.RfitError, targets.TargetError) as error:
            self.report({"ERROR"}, str(error))
            return {"CANCELLED"}
        options = self.fit_options(context)
        self._info = {"index": index, "checkpoint": checkpoint(context), "target": target, "options": options}
        return self.start(
            context,
            "fit",
            arrays,
            index=index,
            checkpoint=checkpoint(context) or None,
            options=options,
            meshes_for=[0],
            thumbnails=api.THUMBNAIL_SIZE,
        )

    def finish(self, context, message):
        parent = api.build_answer(context, message, self._info)
        self.after_fit(context, parent)
        return f"fitted {parent['rfit_source']}"

    def after_fit(self, context, parent):
        s = settings(context)
        s.candidates.clear()
        for c in json.loads(parent["rfit_candidates"]):
            item = s.candidates.add()
            item.rank, item.source, item.thumbnail = c["rank"], c["source"], c.get("thumbnail", "")
            item.chamfer = c["measured_chamfer_x100"] if c["measured_chamfer_x100"] is not None else -1.0
        s.candidate_index = 0


class RFIT_OT_use_candidate(bpy.types.Operator):
    """Replace the fitted result by another retrieved candidate"""

    bl_idname = "rfit.use_candidate"
    bl_label = "Use Candidate"
    bl_options = {"REGISTER", "UNDO"}

    rank: IntProperty(name="Rank", min=0)

    @reports_errors
    def execute(self, context):
        api.use_candidate(context, self.rank)
        settings(context).candidate_index = self.rank
        return {"FINISHED"}


class RFIT_OT_enforce_connectivity(bpy.types.Operator):
    """Move the parts you did not edit so every joint is attached again (rotated parts are left out)"""

    bl_idname = "rfit.enforce_connectivity"
    bl_label = "Keep Connected"
    bl_options = {"REGISTER", "UNDO"}

    keep_symmetry: BoolProperty(name="Keep symmetry", default=True)

    @reports_errors
    def execute(self, context):
        outcome = api.enforce_connectivity(context, keep_symmetry=self.keep_symmetry)
        if any(outcome["rotated"]):
            self.report({"WARNING"}, "rotated parts are outside the deformation model and were left as they are")
        if outcome["lock_residual"] > 1e-4:
            self.report({"WARNING"}, "your edits contradict each other's joints; edited parts were moved slightly")
        return {"FINISHED"}


class RFIT_OT_refit(bpy.types.Operator):
    """Optimise the fit against its target again, holding the parts you edited"""

    bl_idname = "rfit.refit"
    bl_label = "Refit Keeping My Edits"
    bl_options = {"REGISTER", "UNDO"}

    keep_edited: BoolProperty(name="Keep edited parts", default=True)

    @reports_errors
    def execute(self, context):
        outcome = api.refit(context, keep_edited=self.keep_edited)
        self.report(
            {"INFO"},
            f"refitted with {sum(outcome['locked'])} part(s) held; chamfer {outcome['chamfer_x100']:.3f} x1e-2",
        )
        return {"FINISHED"}


class RFIT_OT_reset_parts(bpy.types.Operator):
    """Put the selected parts (or all parts of the fit) back to the predicted boxes"""

    bl_idname = "rfit.reset_parts"
    bl_label = "Reset Parts"
    bl_options = {"REGISTER", "UNDO"}

    all_parts: BoolProperty(name="All parts", default=False)

    @reports_errors
    def execute(self, context):
        parts = None
        if self.all_parts:
            parent = api.fit_parent(context.active_object)
            if parent is None:
                raise api.RfitError("select a fitted result first")
            from ..build import part_objects

            parts = part_objects(parent)
        count = api.reset_parts(context, parts)
        if count == 0:
            self.report({"WARNING"}, "select the part objects to reset")
            return {"CANCELLED"}
        return {"FINISHED"}


class RFIT_OT_apply_fit(bpy.types.Operator):
    """Bake the fit into plain meshes and remove the add-on's properties"""

    bl_idname = "rfit.apply_fit"
    bl_label = "Apply"
    bl_options = {"REGISTER", "UNDO"}

    @reports_errors
    def execute(self, context):
        count = api.apply_fit(context)
        self.report({"INFO"}, f"baked {count} parts")
        return {"FINISHED"}


class RFIT_OT_check_backend(bpy.types.Operator):
    """Start the backend if needed and show what it runs on"""

    bl_idname = "rfit.check_backend"
    bl_label = "Check Backend"

    @reports_errors
    def execute(self, context):
        info = api.check_backend(context)
        self.report({"INFO"}, f"backend {info['backend']} on {info.get('gpu', info['device'])}, torch {info['torch']}")
        return {"FINISHED"}


classes = (
    RFIT_OT_check_backend,
    RFIT_OT_index_library,
    RFIT_OT_retrieve_and_fit,
    RFIT_OT_use_candidate,
    RFIT_OT_enforce_connectivity,
    RFIT_OT_refit,
    RFIT_OT_reset_parts,
    RFIT_OT_apply_fit,
)
