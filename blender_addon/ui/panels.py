"""The sidebar: a main panel (backend, library, progress) and sub-panels for
the target, the candidates and editing, with short labels (tooltips say more)
so they fit the default sidebar width."""

import json
import textwrap

import bpy

from .. import api, build, quality


def wrapped(layout, context, text: str, icon: str = "NONE") -> None:
    """Labels holding ``text`` wrapped to the region's width (a label never wraps by itself)."""
    region = context.region
    width = (region.width if region is not None else 300) / context.preferences.view.ui_scale
    chars = max(16, int((width - (40 if icon != "NONE" else 20)) / 7.5))
    column = layout.column(align=True)
    for i, line in enumerate(textwrap.wrap(text, chars)):
        column.label(text=line, icon=icon if i == 0 else "BLANK1" if icon != "NONE" else "NONE")


def progress_bar(layout, fraction: float) -> None:
    """A read-only bar (``layout.progress`` where Blender has it, else a read-only percentage property)."""
    if hasattr(layout, "progress"):
        layout.progress(factor=fraction, type="BAR", text=f"{fraction * 100:.0f}%")
    else:
        layout.prop(bpy.context.scene.rfit, "progress", text="", slider=True)


class RFIT_UL_candidates(bpy.types.UIList):
    """One row per candidate: picture, name, rating."""

    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index):
        image = bpy.data.images.get(item.thumbnail) if item.thumbnail else None
        split = layout.split(factor=0.72)
        if image is not None:
            image.preview_ensure()
            split.label(text=name_of(item.source), icon_value=image.preview.icon_id)
        else:
            split.label(text=name_of(item.source))
        split.label(text=item.rating if item.chamfer >= 0 else "")


def name_of(source: str) -> str:
    return source.rsplit("/", 1)[-1].rsplit(".", 1)[0]


class SidebarPanel:
    """Where every panel of the add-on lives: its own tab of the 3D view's sidebar."""

    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Retrieve & Fit"


class RFIT_PT_main(SidebarPanel, bpy.types.Panel):
    bl_label = "Retrieve & Fit"
    bl_idname = "RFIT_PT_main"

    def draw(self, context):
        s = context.scene.rfit
        layout = self.layout
        text, icon = api.backend_state()
        row = layout.row()
        if icon == "ERROR":
            row.label(text="Backend failed", icon=icon)
        elif icon == "CHECKMARK":
            row.label(text=f"Backend: {api.backend_info.get('device', '?')}", icon=icon)
        else:
            row.label(text=text, icon=icon)
        row.operator("rfit.check_backend", text="", icon="FILE_REFRESH")
        if icon == "ERROR":
            wrapped(layout.box(), context, text.removeprefix("Backend failed: "))
        col = layout.column(align=True)
        col.prop(s, "library_directory", text="")
        col.operator("rfit.index_library", text="Index Library", icon="FILE_REFRESH")
        jobs = api.active_jobs()
        if jobs:
            wrapped(layout, context, jobs[-1].text or f"{jobs[-1].label}…", icon="SORTTIME")
            row = layout.row(align=True)
            progress_bar(row, jobs[-1].fraction)
            row.operator("rfit.cancel", text="", icon="CANCEL")
        elif s.status:
            wrapped(layout, context, s.status, icon="INFO")


class RFIT_PT_target(SidebarPanel, bpy.types.Panel):
    bl_label = "Target"
    bl_idname = "RFIT_PT_target"
    bl_parent_id = "RFIT_PT_main"

    def draw(self, context):
        s = context.scene.rfit
        layout = self.layout
        layout.row().prop(s, "target", expand=True)
        if s.target == "IMAGE":
            layout.prop(s, "image_path", text="")
            layout.prop(s, "match_view")
            layout.prop(s, "image_height")
        else:
            obj = context.active_object
            if obj is None or api.fit_parent(obj) is not None:
                layout.label(text="Select a scan", icon="ERROR")
            else:
                layout.label(text=obj.name, icon="OBJECT_DATA")
        col = layout.column(align=True)
        col.prop(s, "top_k")
        col.prop(s, "yaw_search")
        layout.prop(s, "refine")
        layout.operator("rfit.retrieve_and_fit", text="Retrieve and Fit", icon="MOD_MESHDEFORM")


class RFIT_PT_candidates(SidebarPanel, bpy.types.Panel):
    bl_label = "Candidates"
    bl_idname = "RFIT_PT_candidates"
    bl_parent_id = "RFIT_PT_main"

    @classmethod
    def poll(cls, context):
        return len(context.scene.rfit.candidates) > 0

    def draw(self, context):
        s = context.scene.rfit
        layout = self.layout
        if quality.no_close_match([c.chamfer if c.chamfer >= 0 else None for c in s.candidates]):
            wrapped(layout, context, "No close match in this library", icon="ERROR")
        layout.template_list("RFIT_UL_candidates", "", s, "candidates", s, "candidate_index", rows=3, maxrows=3)
        if not s.candidate_index < len(s.candidates):
            return
        active = s.candidates[s.candidate_index]
        image = bpy.data.images.get(active.thumbnail) if active.thumbnail else None
        if image is not None:
            image.preview_ensure()
            layout.template_icon(icon_value=image.preview.icon_id, scale=4.0)
        chamfer = active.chamfer if active.chamfer >= 0 else None
        wrapped(layout, context, f"Match: {quality.describe(chamfer)}")
        if chamfer is not None:
            layout.label(text=f"Chamfer {chamfer:.3f} x1e-2")
        parent = api.fit_parent(context.active_object)
        shown = parent is not None and parent.get(build.PROP_PREFIX + "rank") == active.rank
        row = layout.row()
        row.enabled = parent is not None and not shown
        row.operator(
            "rfit.use_candidate", text="Shown" if shown else "Use This One", icon="FILE_REFRESH"
        ).rank = active.rank


def residual_view(layout, context, parts) -> None:
    """The residual toggle and, while it is on, the worst part (where the fit is poorest)."""
    s = context.scene.rfit
    residuals = [(build.part_residual(o), o) for o in parts]
    measured = [(r, o.name) for r, o in residuals if r is not None]
    row = layout.row(align=True)
    row.enabled = bool(measured)  # image fits have no target points to measure against
    shown = s.show_residuals and any(o.get(build.PROP_PREFIX + "residual_shown") for o in parts)
    row.operator("rfit.show_residuals", text="Residuals" if not shown else "Measure", icon="MOD_MASK", depress=shown)
    if shown:
        row.operator("rfit.hide_residuals", text="", icon="X")
        worst, name = max(measured)
        wrapped(layout, context, f"Worst: {name.rsplit(' ', 1)[-1]}, {quality.describe(worst)}")


class RFIT_PT_edit(SidebarPanel, bpy.types.Panel):
    bl_label = "Edit the Fit"
    bl_idname = "RFIT_PT_edit"
    bl_parent_id = "RFIT_PT_main"

    @classmethod
    def poll(cls, context):
        return api.fit_parent(context.active_object) is not None

    def draw(self, context):
        s = context.scene.rfit
        layout = self.layout
        parent = api.fit_parent(context.active_object)
        parts = build.part_objects(parent)
        edited = sum(1 for o in parts if o.get(build.PROP_PREFIX + "edited"))
        layout.label(text=f"{edited} of {len(parts)} parts edited", icon="MODIFIER")
        col = layout.column(align=True)
        op = col.operator("rfit.enforce_connectivity", text="Keep Connected", icon="LINKED")
        op.keep_symmetry = s.keep_symmetry
        col.operator("rfit.refit", text="Refit", icon="FILE_REFRESH")
        row = layout.row(align=True)
        row.prop(s, "keep_symmetry", toggle=True)
        row.prop(s, "live", toggle=True)
        residual_view(layout, context, parts)
        if "image" in json.loads(parent.get(build.PROP_PREFIX + "info", "{}")).get("target", {}):
            layout.operator("rfit.match_view", text="Match View", icon="VIEW_CAMERA")
        row = layout.row(align=True)
        row.operator("rfit.reset_parts", text="Reset Part").all_parts = False
        row.operator("rfit.reset_parts", text="Reset All").all_parts = True
        layout.operator("rfit.apply_fit", text="Apply", icon="CHECKMARK")


classes = (RFIT_UL_candidates, RFIT_PT_main, RFIT_PT_target, RFIT_PT_edit, RFIT_PT_candidates)
