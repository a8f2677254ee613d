import bpy
from bpy.props import StringProperty


class RFIT_Preferences(bpy.types.AddonPreferences):
    bl_idname = __package__.rsplit(".", 1)[0]

    backend_python: StringProperty(
        name="Backend Python",
        subtype="FILE_PATH",
        description="Python of a virtual environment with torch installed (RFIT_BACKEND_PYTHON overrides it)",
    )
    checkpoint: StringProperty(
        name="Model checkpoint", subtype="FILE_PATH", description="Leave empty for the bundled default model"
    )

    def draw(self, context):
        self.layout.prop(self, "backend_python")
        self.layout.prop(self, "checkpoint")


classes = (RFIT_Preferences,)
