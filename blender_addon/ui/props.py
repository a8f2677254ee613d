import bpy
from bpy.props import BoolProperty, CollectionProperty, FloatProperty, IntProperty, StringProperty


def _live_changed(self, context) -> None:
    from .. import live

    live.enable(self.live)


class RFIT_Candidate(bpy.types.PropertyGroup):
    rank: IntProperty()
    source: StringProperty()
    chamfer: FloatProperty(description="Chamfer distance to the target after deformation (x1e-2)")
    thumbnail: StringProperty(description="Image datablock of the candidate's picture")


class RFIT_SceneSettings(bpy.types.PropertyGroup):
    library_directory: StringProperty(
        name="Library", subtype="DIR_PATH", description="Folder of your models (.obj .glb .gltf .ply .stl .off)"
    )
    index_directory: StringProperty(
        name="Index",
        subtype="DIR_PATH",
        description="Where the library's index is kept (default: .rfit-index inside the library)",
    )
    image_path: StringProperty(
        name="Reference image", subtype="FILE_PATH", description="Fit to this image instead of the active object"
    )
    top_k: IntProperty(name="Candidates", default=5, min=1, max=50)
    refine: BoolProperty(
        name="Refine",
        default=True,
        description="Optimise the deformation on the target after the network's prediction (point targets)",
    )
    yaw_search: IntProperty(
        name="Yaw search",
        default=1,
        min=1,
        max=16,
        description="Also try the target turned by this many angles about Z (for scans facing an unknown way)",
    )
    keep_symmetry: BoolProperty(name="Keep symmetry", default=True)
    live: BoolProperty(
        name="Live",
        default=False,
        description="Keep parts connected while you move or scale them",
        update=_live_changed,
    )
    status: StringProperty(default="")
    progress: FloatProperty(default=0.0, min=0.0, max=1.0, subtype="FACTOR")
    busy: BoolProperty(default=False)
    candidates: CollectionProperty(type=RFIT_Candidate)
    candidate_index: IntProperty(default=0)


classes = (RFIT_Candidate, RFIT_SceneSettings)


def register() -> None:
    bpy.types.Scene.rfit = bpy.props.PointerProperty(type=RFIT_SceneSettings)


def unregister() -> None:
    from .. import live

    live.enable(False)
    del bpy.types.Scene.rfit
