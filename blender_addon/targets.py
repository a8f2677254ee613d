"""Reading what the user gives as a target: an object's points or an image's pixels."""

from __future__ import annotations

import numpy as np

from .protocol import sample_surface

MAX_POINTS = 20000


class TargetError(ValueError):
    """The selection or image cannot be used as a target; the message says why."""


def _world(points: np.ndarray, matrix) -> np.ndarray:
    m = np.array(matrix, dtype=np.float64)
    return points @ m[:3, :3].T + m[:3, 3]


def _positions(elements, empty_message: str) -> np.ndarray:
    """(N, 3) float64 ``co`` of mesh vertices or point cloud points."""
    if len(elements) == 0:
        raise TargetError(empty_message)
    co = np.empty(len(elements) * 3, np.float32)
    elements.foreach_get("co", co)
    return co.reshape(-1, 3).astype(np.float64)


def points_from_object(obj, depsgraph, max_points: int = MAX_POINTS) -> np.ndarray:
    """(N, 3) world-space points of a mesh (its loose vertices, or samples of
    its surface when it has faces) or of a point cloud object, modifiers applied."""
    if obj is None:
        raise TargetError("select an object (a scan as a mesh or point cloud) or pick a reference image")
    evaluated = obj.evaluated_get(depsgraph)
    if obj.type == "POINTCLOUD":
        points = _positions(evaluated.data.points, f"the point cloud '{obj.name}' is empty")
    elif obj.type == "MESH":
        mesh = evaluated.to_mesh()
        try:
            vertices = _positions(mesh.vertices, f"the mesh '{obj.name}' has no vertices")
            mesh.calc_loop_triangles()
            n_tri = len(mesh.loop_triangles)
            if n_tri == 0:
                points = vertices
            else:
                tri = np.empty(n_tri * 3, np.int32)
                mesh.loop_triangles.foreach_get("vertices", tri)
                try:
                    points, _ = sample_surface(vertices, tri.reshape(-1, 3), max_points, np.random.default_rng(0))
                except ValueError:
                    raise TargetError(f"the mesh '{obj.name}' has no surface area") from None
        finally:
            evaluated.to_mesh_clear()
    else:
        raise TargetError(f"'{obj.name}' is a {obj.type.lower()}: use a mesh or a point cloud object")
    if len(points) > max_points:
        points = points[np.random.default_rng(0).choice(len(points), max_points, replace=False)]
    return _world(points, obj.matrix_world)


def image_pixels(image) -> np.ndarray:
    """(H, W, 4) float32 RGBA in [0, 1], row 0 at the top, sRGB like a PNG file."""
    width, height = image.size
    if width == 0 or height == 0:
        raise TargetError(f"the image '{image.name}' has no pixels (missing file?)")
    pixels = np.empty(width * height * 4, np.float32)
    image.pixels.foreach_get(pixels)
    pixels = pixels.reshape(height, width, 4)[::-1]  # Blender stores the bottom row first
    if image.is_float:  # float images hold linear values; the model saw sRGB
        rgb = np.clip(pixels[..., :3], 0, 1)
        pixels[..., :3] = np.where(rgb <= 0.0031308, 12.92 * rgb, 1.055 * np.power(rgb, 1 / 2.4) - 0.055)
    return np.ascontiguousarray(pixels)


def load_image(path: str):
    """The image datablock for a file, loaded once."""
    import bpy

    try:
        return bpy.data.images.load(path, check_existing=True)
    except RuntimeError as error:
        raise TargetError(f"cannot read the image {path}: {error}") from error
