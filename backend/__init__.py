"""Retrieve-and-fit backend: library indexing, retrieval and part-wise deformation.

This package never imports ``bpy``; the Blender add-on talks to it through a
small protocol module (see ``backend.protocol`` once it exists).
"""

__version__ = "0.1.0"
