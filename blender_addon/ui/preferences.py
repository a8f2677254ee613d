import bpy
from bpy.props import StringProperty


def _backend_changed(self, context) -> None:
    from .. import api

    api.restart_worker(context)  # a worker started with the old Python must not keep answering


class RFIT_Preferences(bpy.types.AddonPreferences):
    bl_idname = __package__.rsplit(".", 1)[0]

    backend_python: StringProperty(
        name="Backend Python",
        subtype="FILE_PATH",
        description="Python of a virtual environment with torch installed (RFIT_BACKEND_PYTHON overrides it)",
        update=_backend_changed,
    )
    checkpoint: StringProperty(
        name="Model checkpoint", subtype="FILE_PATH", description="Leave empty for the bundled default model"
    )

    def draw(self, context):
        from .. import api

        self.layout.prop(self, "backend_python")
        self.layout.prop(self, "checkpoint")
        text, icon = api.backend_state()
        self.layout.label(text=text, icon=icon)


classes = (RFIT_Preferences,)
