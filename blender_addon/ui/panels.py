import bpy

from .. import api


class RFIT_UL_candidates(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index):
        row = layout.row()
        image = bpy.data.images.get(item.thumbnail) if item.thumbnail else None
        if image is not None:
            image.preview_ensure()
            row.label(text="", icon_value=image.preview.icon_id)
        row.label(text=f"{item.rank + 1}. {item.source.rsplit('/', 1)[-1]}")
        if item.chamfer >= 0:
            row.label(text=f"{item.chamfer:.3f}")
        row.operator("rfit.use_candidate", text="", icon="FILE_REFRESH").rank = item.rank


class RFIT_PT_main(bpy.types.Panel):
    bl_label = "Retrieve & Fit"
    bl_idname = "RFIT_PT_main"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Retrieve & Fit"

    def draw(self, context):
        s = context.scene.rfit
        layout = self.layout
        row = layout.row()
        info = api.backend_info
        if info:
            row.label(
                text=f"Backend: {info.get('gpu', info.get('device', '?'))}, torch {info.get('torch', '?')}",
                icon="CHECKMARK",
            )
        else:
            row.label(text="Backend: not started", icon="QUESTION")
        row.operator("rfit.check_backend", text="", icon="FILE_REFRESH")
        box = layout.box()
        box.label(text="Library", icon="ASSET_MANAGER")
        box.prop(s, "library_directory", text="")
        box.operator("rfit.index_library", icon="FILE_REFRESH")
        box = layout.box()
        box.label(text="Target", icon="OUTLINER_OB_POINTCLOUD")
        obj = context.active_object
        box.label(text=f"Active: {obj.name}" if obj is not None else "Select a scan, or pick an image")
        box.prop(s, "image_path", text="")
        col = box.column(align=True)
        col.prop(s, "top_k")
        col.prop(s, "yaw_search", text="Turns")
        box.prop(s, "refine")
        box.operator("rfit.retrieve_and_fit", icon="MOD_MESHDEFORM")
        if s.busy or s.status:
            layout.prop(s, "progress", text=s.status or "working…", slider=True)
        if len(s.candidates):
            layout.label(text="Candidates (chamfer x1e-2)")
            layout.template_list("RFIT_UL_candidates", "", s, "candidates", s, "candidate_index", rows=3)
            active = s.candidates[s.candidate_index] if s.candidate_index < len(s.candidates) else None
            image = bpy.data.images.get(active.thumbnail) if active is not None and active.thumbnail else None
            if image is not None:
                image.preview_ensure()
                layout.template_icon(icon_value=image.preview.icon_id, scale=6.0)
        parent = api.fit_parent(obj)
        if parent is not None:
            box = layout.box()
            box.label(text="Edit the fit", icon="MODIFIER")
            box.label(text="Move or scale parts (no rotations)")
            row = box.row()
            row.prop(s, "keep_symmetry")
            row.prop(s, "live", text="Live")
            box.operator("rfit.enforce_connectivity", icon="LINKED").keep_symmetry = s.keep_symmetry
            box.operator("rfit.refit", icon="FILE_REFRESH")
            row = box.row(align=True)
            row.operator("rfit.reset_parts", text="Reset Part").all_parts = False
            row.operator("rfit.reset_parts", text="Reset All").all_parts = True
            box.operator("rfit.apply_fit", icon="CHECKMARK")


classes = (RFIT_UL_candidates, RFIT_PT_main)
