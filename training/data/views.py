"""Targets as a user would give them: rendered images and scanned point clouds."""

from __future__ import annotations

import numpy as np

from backend.geometry.sampling import sample_surface
from backend.render import Camera, shade, visible_points
from training.data.furniture import Furniture

# Albedo palettes (linear-ish RGB in [0, 1]): woods, paints, metals, fabrics.
PALETTE = np.array(
    [
        [0.55, 0.36, 0.20],
        [0.72, 0.53, 0.33],
        [0.36, 0.22, 0.13],
        [0.85, 0.75, 0.58],
        [0.90, 0.90, 0.88],
        [0.15, 0.15, 0.16],
        [0.55, 0.57, 0.60],
        [0.20, 0.33, 0.55],
        [0.60, 0.18, 0.16],
        [0.30, 0.45, 0.30],
        [0.80, 0.62, 0.20],
        [0.45, 0.40, 0.50],
    ]
)


def mesh_arrays(shape: Furniture) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All parts as one mesh: vertices (V, 3), faces (F, 3), part index of each face (F,)."""
    vertices, faces, labels, offset = [], [], [], 0
    for k, mesh in enumerate(shape.parts.values()):
        vertices.append(mesh.vertices)
        faces.append(mesh.faces + offset)
        labels.append(np.full(len(mesh.faces), k))
        offset += len(mesh.vertices)
    return np.concatenate(vertices), np.concatenate(faces), np.concatenate(labels)


def part_colors(shape: Furniture, rng: np.random.Generator) -> np.ndarray:
    """(n_parts, 3) albedo: one or two materials per shape, slight per-part variation."""
    main, accent = PALETTE[rng.choice(len(PALETTE), 2, replace=False)]
    colors = []
    for name in shape.parts:
        soft = name.startswith(("seat", "back")) and rng.random() < 0.5
        base = accent if soft or name.startswith(("handle", "caster", "star", "column", "mechanism")) else main
        colors.append(np.clip(base * rng.uniform(0.92, 1.08), 0, 1))
    return np.array(colors)


def random_camera(rng: np.random.Generator) -> Camera:
    """An elevated viewpoint around the front, as product photos are taken."""
    return Camera(azimuth=rng.uniform(-60.0, 60.0), elevation=rng.uniform(10.0, 40.0), fov=rng.uniform(28.0, 45.0))


def render_image(
    shape: Furniture,
    rng: np.random.Generator,
    size: int = 128,
    camera: Camera | None = None,
    random_background: bool = False,
) -> np.ndarray:
    """(size, size, 3) uint8 RGB view of the shape, row 0 at the top."""
    vertices, faces, labels = mesh_arrays(shape)
    colors = part_colors(shape, rng)[labels]
    background = rng.uniform(0.5, 1.0, 3) if random_background else (1.0, 1.0, 1.0)
    return shade(
        vertices, faces, colors, camera or random_camera(rng), size=size, background=background, cull_back=True
    )


def full_cloud(shape: Furniture, count: int, rng: np.random.Generator, noise: float = 0.0) -> np.ndarray:
    """(count, 3) float32 area-uniform surface samples, optional Gaussian noise (metres)."""
    vertices, faces, _ = mesh_arrays(shape)
    points, _ = sample_surface(vertices, faces, count, rng)
    if noise > 0:
        points = points + rng.normal(0.0, noise, points.shape)
    return points.astype(np.float32)


def partial_cloud(
    shape: Furniture, count: int, rng: np.random.Generator, camera: Camera | None = None, noise: float = 0.0
) -> np.ndarray:
    """(count, 3) float32 samples of only what one viewpoint sees, like a single scan."""
    vertices, faces, _ = mesh_arrays(shape)
    camera = camera or random_camera(rng)
    points, point_faces = sample_surface(vertices, faces, count * 4, rng)
    seen = points[visible_points(vertices, faces, points, point_faces, camera)]
    if len(seen) == 0:
        raise ValueError("nothing is visible from this camera")
    seen = seen[rng.choice(len(seen), count, replace=len(seen) < count)]
    if noise > 0:
        seen = seen + rng.normal(0.0, noise, seen.shape)
    return seen.astype(np.float32)
