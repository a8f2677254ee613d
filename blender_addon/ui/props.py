import bpy
from bpy.props import BoolProperty, CollectionProperty, EnumProperty, FloatProperty, IntProperty, StringProperty


def _live_changed(self, context) -> None:
    from .. import live

    live.enable(self.live)


def _image_chosen(self, context) -> None:
    if self.image_path:  # picking a file says what to fit; the choice stays visible and can be changed back
        self.target = "IMAGE"


def _progress(self) -> float:
    from .. import api

    jobs = api.active_jobs()
    return 100.0 * jobs[-1].fraction if jobs else 0.0


class RFIT_Candidate(bpy.types.PropertyGroup):
    rank: IntProperty()
    source: StringProperty()
    chamfer: FloatProperty(description="Chamfer distance to the target after deformation (x1e-2)")
    rating: StringProperty(description="How close the fit is: close, fair or poor")
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
    target: EnumProperty(
        name="Fit",
        description="What to fit",
        items=(
            ("OBJECT", "Object", "Fit the selected object: a scan as a mesh or point cloud"),
            ("IMAGE", "Image", "Fit a reference image file (the fit stands upright at the 3D cursor)"),
        ),
        default="OBJECT",
    )
    image_path: StringProperty(
        name="Image",
        subtype="FILE_PATH",
        description="The reference image to fit when the target is 'Image file'",
        update=_image_chosen,
    )
    match_view: BoolProperty(
        name="Match View",
        default=False,
        description="Turn an image fit so the 3D viewport sees it as the image shows it (else it faces -Y)",
    )
    image_height: FloatProperty(
        name="Height",
        default=0.0,
        min=0.0,
        soft_max=5.0,
        unit="LENGTH",
        description="Image fits: the model's height (0: the library model's own size; an image shows no scale)",
    )
    top_k: IntProperty(name="Candidates", default=5, min=1, max=50, description="How many library models to return")
    refine: BoolProperty(
        name="Refine",
        default=True,
        description="Optimise the deformation on the target after the network's prediction (point targets)",
    )
    yaw_search: IntProperty(
        name="Turns",
        default=1,
        min=1,
        max=16,
        description="Also try the target turned by this many angles about Z (for scans facing an unknown way)",
    )
    keep_symmetry: BoolProperty(
        name="Symmetry", default=True, description="Keep Connected mirrors your edit to the symmetric part"
    )
    live: BoolProperty(
        name="Live",
        default=False,
        description="Keep parts connected while you move or scale them",
        update=_live_changed,
    )
    show_residuals: BoolProperty(
        name="Residuals",
        default=False,
        description="Colour the parts by how far they are from the target (green: close, red: poor)",
    )
    status: StringProperty(default="")
    progress: FloatProperty(
        name="Progress",
        subtype="PERCENTAGE",
        min=0.0,
        max=100.0,
        precision=0,
        get=_progress,
        description="The backend's progress (read-only)",
    )
    cancel_requested: BoolProperty(default=False, options={"SKIP_SAVE"})
    candidates: CollectionProperty(type=RFIT_Candidate)
    candidate_index: IntProperty(default=0)


classes = (RFIT_Candidate, RFIT_SceneSettings)


def register() -> None:
    from .. import live

    bpy.types.Scene.rfit = bpy.props.PointerProperty(type=RFIT_SceneSettings)
    live.watch(True)


def unregister() -> None:
    from .. import live

    live.watch(False)
    live.enable(False)
    del bpy.types.Scene.rfit
