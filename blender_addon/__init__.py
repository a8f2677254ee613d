"""Retrieve & Fit: Blender add-on.

Registers the sidebar panel and operators that drive the backend worker.
This module only registers; the work lives in the modules beside it and in
the backend process (the add-on never imports torch).
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

_classes: tuple = ()


def register() -> None:
    import bpy

    for cls in _classes:
        bpy.utils.register_class(cls)


def unregister() -> None:
    import bpy

    for cls in reversed(_classes):
        bpy.utils.unregister_class(cls)
