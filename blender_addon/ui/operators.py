"""Operators: thin shells over ``api``. Each builds its job with ``api`` once;
``execute`` (scripts, tests, the redo panel) runs it and waits, ``invoke``
(the UI) sends it and polls on a timer, so Blender's UI never waits."""

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty

from .. import api, build, quality

POLL_SECONDS = 0.04  # how often a modal operator looks at the worker's messages (Esc is seen sooner)


def settings(context):
    return context.scene.rfit


def redraw(context) -> None:
    for window in context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


class BackendOperator:
    """A backend request as an operator: ``job`` builds it through ``api``,
    ``done`` reports the outcome and returns the status line."""

    _timer = None
    _job = None

    def job(self, context) -> "api.Job":
        raise NotImplementedError

    def done(self, context, outcome) -> str:
        return ""

    def _record(self, job) -> None:
        """Show in the redo panel what was used (properties named like ``job.used``'s keys)."""
        for key, value in job.used.items():
            if key in self.properties.bl_rna.properties.keys():
                setattr(self, key, value)

    def execute(self, context):
        try:
            job = self.job(context)
            self._record(job)
            outcome = api.run(context, job)
        except api.RfitError as error:
            self.report({"ERROR"}, str(error))
            return {"CANCELLED"}
        settings(context).status = self.done(context, outcome)
        return {"FINISHED"}

    def invoke(self, context, event):
        try:
            self._job = self.job(context)
            self._record(self._job)
            api.start(context, self._job)
        except api.RfitError as error:
            self.report({"ERROR"}, str(error))
            return {"CANCELLED"}
        s = settings(context)
        s.cancel_requested, s.status = False, f"{self._job.label}…"
        self._timer = context.window_manager.event_timer_add(POLL_SECONDS, window=context.window)
        context.window_manager.modal_handler_add(self)
        redraw(context)
        return {"RUNNING_MODAL"}

    def stop(self, context, status: str) -> None:
        s = settings(context)
        s.cancel_requested, s.status = False, status
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)
            self._timer = None
        redraw(context)

    def modal(self, context, event):
        s = settings(context)
        if (event.type == "ESC" and event.value == "PRESS") or s.cancel_requested:
            api.cancel(self._job)
            self.stop(context, "cancelled")
            self.report({"INFO"}, f"{self._job.label}: cancelled, nothing changed")
            return {"CANCELLED"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        api.pump()
        late = api.overdue(self._job)
        if late:
            api.restart(context, late)
        if not self._job.over:
            text = self._job.text or ("starting the backend" if api.backend_state()[1] == "SORTTIME" else "waiting")
            if text != s.status:
                s.status = text
                redraw(context)
            return {"RUNNING_MODAL"}
        try:
            status = self.done(context, api.finish(context, self._job))
        except api.RfitError as error:
            self.stop(context, "cancelled" if str(error) == "cancelled" else "failed")
            self.report({"ERROR"}, str(error))
            return {"CANCELLED"}
        self.stop(context, status)
        return {"FINISHED"}


class RFIT_OT_cancel(bpy.types.Operator):
    """Stop the backend's current work; nothing in the scene changes"""

    bl_idname = "rfit.cancel"
    bl_label = "Cancel"

    def execute(self, context):
        settings(context).cancel_requested = True
        return {"FINISHED"}


class RFIT_OT_check_backend(BackendOperator, bpy.types.Operator):
    """Start the backend if needed and show what it runs on"""

    bl_idname = "rfit.check_backend"
    bl_label = "Check Backend"

    def job(self, context):
        return api.hello_job(context)

    def done(self, context, info):
        text = f"backend {info['backend']} on {info.get('gpu', info['device'])}, torch {info['torch']}"
        self.report({"INFO"}, text)
        return text


class RFIT_OT_index_library(BackendOperator, bpy.types.Operator):
    """Index a folder of models: split each into parts, find joints and symmetry"""

    bl_idname = "rfit.index_library"
    bl_label = "Index Library"

    directory: StringProperty(name="Library", subtype="DIR_PATH")
    index: StringProperty(name="Index", subtype="DIR_PATH")

    def job(self, context):
        return api.index_job(context, self.directory, self.index)

    def done(self, context, summary):
        self.report({"INFO"}, summary["summary"])
        return summary["summary"]


FIT_SETTINGS = ("target", "object_name", "image_path", "top_k", "refine", "yaw_search", "match_view", "image_height")


class RFIT_OT_retrieve_and_fit(BackendOperator, bpy.types.Operator):
    """Retrieve models from your library for the target and fit them part by part"""

    bl_idname = "rfit.retrieve_and_fit"
    bl_label = "Retrieve and Fit"
    bl_options = {"REGISTER", "UNDO"}

    # Unset properties take the panel's settings; after a run they show what was used (redo panel).
    target: EnumProperty(
        name="Target",
        items=(
            ("PANEL", "As in the panel", "The panel's choice (an image file when Image is given)"),
            ("OBJECT", "Object", "A scan: a mesh or point cloud object"),
            ("IMAGE", "Image", "A reference image file"),
        ),
        default="PANEL",
        options={"SKIP_SAVE"},
    )
    object_name: StringProperty(name="Object", description="Default: the active object", options={"SKIP_SAVE"})
    image_path: StringProperty(name="Image", subtype="FILE_PATH", options={"SKIP_SAVE"})
    top_k: IntProperty(name="Candidates", min=1, max=50, default=5, options={"SKIP_SAVE"})
    refine: BoolProperty(name="Refine", default=True, options={"SKIP_SAVE"})
    yaw_search: IntProperty(name="Turns", min=1, max=16, default=1, options={"SKIP_SAVE"})
    match_view: BoolProperty(
        name="Match View",
        default=False,
        description="Image fits: seen by the viewport as in the image",
        options={"SKIP_SAVE"},
    )
    image_height: FloatProperty(
        name="Height",
        min=0.0,
        unit="LENGTH",
        description="Image fits: the model's height (0: the library model's own size)",
        options={"SKIP_SAVE"},
    )

    def job(self, context):
        given = {name: getattr(self, name) for name in FIT_SETTINGS if self.properties.is_property_set(name)}
        name = given.pop("object_name", "")
        obj = context.scene.objects.get(name) if name else None
        if name and obj is None:
            raise api.RfitError(f"there is no object '{name}' in the scene")
        return api.fit_job(context, obj=obj, **given)

    def done(self, context, parent):
        best = settings(context).candidates[0] if len(settings(context).candidates) else None
        text = f"fitted {parent[build.PROP_PREFIX + 'source'].rsplit('/', 1)[-1]}"
        if best is not None and best.chamfer >= 0:
            text += f": {quality.describe(best.chamfer)}"
        if quality.no_close_match([c.chamfer if c.chamfer >= 0 else None for c in settings(context).candidates]):
            text += "; no close match in this library"
        note = parent.get(build.PROP_PREFIX + "view_note")
        if note:  # Match View was asked for and could not be done
            self.report({"WARNING"}, note)
            text += f"; {note}"
        return text


class RFIT_OT_use_candidate(BackendOperator, bpy.types.Operator):
    """Replace the fitted result by this retrieved candidate"""

    bl_idname = "rfit.use_candidate"
    bl_label = "Use Candidate"
    bl_options = {"REGISTER", "UNDO"}

    rank: IntProperty(name="Rank", min=0)

    def job(self, context):
        return api.candidate_job(context, self.rank)

    def done(self, context, parent):
        return f"using candidate {self.rank + 1}: {parent[build.PROP_PREFIX + 'source'].rsplit('/', 1)[-1]}"


class RFIT_OT_enforce_connectivity(BackendOperator, bpy.types.Operator):
    """Move the parts you did not edit so every joint is attached again (rotated parts are left out)"""

    bl_idname = "rfit.enforce_connectivity"
    bl_label = "Keep Connected"
    bl_options = {"REGISTER", "UNDO"}

    keep_symmetry: BoolProperty(
        name="Symmetry", default=True, description="Mirror your edit to the symmetric part", options={"SKIP_SAVE"}
    )

    def job(self, context):
        given = self.keep_symmetry if self.properties.is_property_set("keep_symmetry") else None
        return api.keep_connected_job(context, keep_symmetry=given)

    def done(self, context, outcome):
        if any(outcome["rotated"]):
            self.report({"WARNING"}, "rotated parts are outside the deformation model and were left as they are")
        if not outcome["feasible"]:
            self.report({"WARNING"}, outcome["message"] or "the edits cannot all keep their joints attached")
        return f"joints re-attached around {sum(outcome['locked'])} edited part(s)"


class RFIT_OT_refit(BackendOperator, bpy.types.Operator):
    """Optimise the fit against its target again, holding the parts you edited"""

    bl_idname = "rfit.refit"
    bl_label = "Refit"
    bl_options = {"REGISTER", "UNDO"}

    keep_edited: BoolProperty(name="Keep my edits", default=True, description="Hold the parts you edited")

    def job(self, context):
        return api.refit_job(context, keep_edited=self.keep_edited)

    def done(self, context, outcome):
        before = outcome.get("chamfer_before_x100")
        change = f"{before:.3f} -> " if before is not None else ""
        text = f"refitted, {sum(outcome['locked'])} part(s) held; chamfer {change}{outcome['chamfer_x100']:.3f} x1e-2"
        self.report({"INFO"}, text)
        return text


class RFIT_OT_reset_parts(bpy.types.Operator):
    """Put the selected parts (or all parts of the fit) back to the predicted boxes"""

    bl_idname = "rfit.reset_parts"
    bl_label = "Reset Parts"
    bl_options = {"REGISTER", "UNDO"}

    all_parts: BoolProperty(name="All parts", default=False)

    def execute(self, context):
        parts = None
        if self.all_parts:
            parent = api.fit_parent(context.active_object)
            if parent is None:
                self.report({"ERROR"}, "select a fitted result first")
                return {"CANCELLED"}
            parts = build.part_objects(parent)
        count = api.reset_parts(context, parts)
        if count == 0:
            self.report({"WARNING"}, "select the part objects to reset")
            return {"CANCELLED"}
        return {"FINISHED"}


class RFIT_OT_show_residuals(BackendOperator, bpy.types.Operator):
    """Measure each part as it is now against the target and colour it: green close, red poor"""

    bl_idname = "rfit.show_residuals"
    bl_label = "Show Residuals"
    bl_options = {"REGISTER", "UNDO"}

    def job(self, context):
        return api.residuals_job(context)

    def done(self, context, outcome):
        return f"worst part {outcome['worst_part']}: {quality.describe(outcome['worst_x100'])}"


class RFIT_OT_hide_residuals(bpy.types.Operator):
    """Give the parts back the model's own colours"""

    bl_idname = "rfit.hide_residuals"
    bl_label = "Hide Residuals"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        try:
            api.show_residuals(context, False)
        except api.RfitError as error:
            self.report({"ERROR"}, str(error))
            return {"CANCELLED"}
        return {"FINISHED"}


class RFIT_OT_match_view(bpy.types.Operator):
    """Turn the image fit so this viewport sees it from the side the image shows (it stays upright)"""

    bl_idname = "rfit.match_view"
    bl_label = "Match View"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        try:
            outcome = api.turn_to_view(context)
        except api.RfitError as error:
            self.report({"ERROR"}, str(error))
            return {"CANCELLED"}
        text = f"turned {outcome['turn_deg']:.0f} degrees to match the view"
        image, view = outcome["image_elevation_deg"], outcome["view_elevation_deg"]
        if image is not None and abs(image - view) > 10:
            text += f" (the image looks from {image:.0f} degrees up, the viewport from {view:.0f})"
        settings(context).status = text
        self.report({"INFO"}, text)
        return {"FINISHED"}


class RFIT_OT_apply_fit(bpy.types.Operator):
    """Bake the fit into plain meshes and remove the add-on's properties"""

    bl_idname = "rfit.apply_fit"
    bl_label = "Apply"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        try:
            count = api.apply_fit(context)
        except api.RfitError as error:
            self.report({"ERROR"}, str(error))
            return {"CANCELLED"}
        self.report({"INFO"}, f"baked {count} parts")
        return {"FINISHED"}


classes = (
    RFIT_OT_cancel,
    RFIT_OT_check_backend,
    RFIT_OT_index_library,
    RFIT_OT_retrieve_and_fit,
    RFIT_OT_use_candidate,
    RFIT_OT_enforce_connectivity,
    RFIT_OT_refit,
    RFIT_OT_reset_parts,
    RFIT_OT_show_residuals,
    RFIT_OT_hide_residuals,
    RFIT_OT_match_view,
    RFIT_OT_apply_fit,
)
