"""Retrieve-and-fit backend: library indexing, retrieval and part-wise deformation.

This package never imports ``bpy``; the Blender add-on talks to it through a
small protocol module, ``backend.protocol``.
"""

from pathlib import Path

__version__ = "0.1.0"

# The bundled model; a light constant so the CLI need not import torch to name it.
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "default.pt"
