"""Retrieve & Fit: Blender add-on.

Registers the sidebar panel and operators that drive the backend worker.
This module only registers; the work lives in ``api`` (scriptable), the UI
in ``ui/`` and the backend process (the add-on never imports torch).
"""

bl_info = {
    "name": "Retrieve & Fit",
    "author": "rfit developers",
    "version": (0, 1, 0),
    "blender": (3, 4, 0),
    "location": "3D Viewport > Sidebar > Retrieve & Fit",
    "description": "Retrieve a model from your library and deform it part by part to match a scan or an image",
    "category": "Object",
}


def _modules():
    from .ui import operators, panels, preferences, props

    return (props, preferences, operators, panels)


NUMPY_MISSING = (
    "Retrieve & Fit needs numpy in Blender's Python, and this Blender has none. Official Blender builds "
    "include it; for Debian's or Ubuntu's blender package run: sudo apt install python3-numpy "
    "(then restart Blender and enable the add-on again)"
)


def register() -> None:
    import bpy

    try:
        import numpy  # noqa: F401
    except ImportError:
        raise ImportError(NUMPY_MISSING) from None
    for module in _modules():
        for cls in module.classes:
            bpy.utils.register_class(cls)
        if hasattr(module, "register"):
            module.register()


def unregister() -> None:
    import bpy

    from . import api

    api.shutdown()
    for module in reversed(_modules()):
        if hasattr(module, "unregister"):
            module.unregister()
        for cls in reversed(module.classes):
            bpy.utils.unregister_class(cls)
