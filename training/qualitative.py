"""The qualitative figure of docs/results.md, in the spirit of the paper's Figure 4:
input, retrieved source, deformed source (for a baseline and for ours), ground truth.

Meshes are the library's own: each part of the retrieved source is moved
and scaled into its predicted box (the same per-part map the add-on uses),
and everything is drawn in the target's normalised frame.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from backend.library import LibraryIndex
from backend.render import Camera, project, shade

CAMERA = Camera(azimuth=35, elevation=20)
PALETTE = np.array(
    [
        [0.27, 0.47, 0.67],
        [0.93, 0.4, 0.47],
        [0.13, 0.53, 0.2],
        [0.8, 0.73, 0.27],
        [0.4, 0.8, 0.93],
        [0.67, 0.2, 0.47],
        [0.6, 0.6, 0.6],
        [0.85, 0.55, 0.2],
    ]
)


def boxed_mesh(index: LibraryIndex, row: int, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source ``row``'s parts, each mapped from its own box onto ``boxes``.

    Args:
        boxes: (K, 6) centre and half-size per part, in any frame (that frame is the result's).
    Returns:
        vertices (V, 3), faces (F, 3), face colours (F, 3) by part.
    """
    from backend.export import part_meshes

    source = index.load_source(row)
    vertices, faces, colours, offset = [], [], [], 0
    for part, mesh in enumerate(part_meshes(index, row)):
        own = source.boxes[part]
        scale = boxes[part, 3:] / np.maximum(own[3:], 1e-9)
        vertices.append(boxes[part, :3] + (np.asarray(mesh.vertices) - own[:3]) * scale)
        faces.append(np.asarray(mesh.faces) + offset)
        colours.append(np.tile(PALETTE[part % len(PALETTE)], (len(mesh.faces), 1)))
        offset += len(mesh.vertices)
    return np.concatenate(vertices), np.concatenate(faces), np.concatenate(colours)


def normalised_boxes(index: LibraryIndex, row: int) -> np.ndarray:
    """(K, 6) the source's own boxes in its normalised frame (centre of the
    parts' bounds, unit diagonal), i.e. the source as retrieved, undeformed."""
    source = index.load_source(row)
    lo, hi = source.bounds
    centre, scale = (lo + hi) / 2, float(np.linalg.norm(hi - lo))
    return np.concatenate([(source.boxes[:, :3] - centre) / scale, source.boxes[:, 3:] / scale], axis=1)


def render_mesh(vertices: np.ndarray, faces: np.ndarray, colours: np.ndarray, size: int = 160) -> np.ndarray:
    return shade(vertices, faces, colours, CAMERA, size=size)


def render_points(points: np.ndarray, size: int = 160) -> np.ndarray:
    """(size, size, 3) float image of a point cloud as dots, seen like the meshes."""
    centre = (points.min(0) + points.max(0)) / 2
    radius = float(np.linalg.norm(points - centre, axis=1).max())
    rotation, eye, focal = CAMERA.view(centre, radius)
    pixels, depth = project(points, rotation, eye, focal, size)
    image = np.ones((size, size, 3))
    order = np.argsort(-depth)  # far first, near dots drawn over them
    shade_by_depth = np.interp(depth[order], [depth.min(), depth.max()], [0.15, 0.6])
    for (x, y), tone in zip(pixels[order].astype(int), shade_by_depth):
        image[max(y - 1, 0) : y + 1, max(x - 1, 0) : x + 1] = tone
    return image


def write_figure(path: Path, rows: list[dict], size: int = 160) -> Path:
    """One row per example: a list of (title, image) panels.

    Args:
        rows: each ``{"label": str, "panels": [(title, (H, W, 3) float or uint8 image), ...]}``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(len(r["panels"]) for r in rows)
    fig, axes = plt.subplots(len(rows), columns, figsize=(1.9 * columns, 2.05 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(columns):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(row["panels"]):
                title, image = row["panels"][c]
                ax.imshow(image)
                ax.set_title(title, fontsize=7)
        axes[r, 0].text(
            -0.08, 0.5, row["label"], transform=axes[r, 0].transAxes, rotation=90, va="center", ha="right", fontsize=8
        )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
