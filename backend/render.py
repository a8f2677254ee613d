"""A small, exact triangle rasteriser in numpy (no GPU, no download).

Used to render training images of generated shapes, to find what a single
viewpoint sees (partial scans), and for candidate thumbnails. Triangles are
rasterised against pixel centres, all triangles at once: every triangle
proposes the pixels of its screen bounding box, the barycentric test keeps
those inside, and a sort on (pixel, depth) resolves visibility.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Camera:
    """A perspective camera orbiting a shape (Blender's frame: Z up, front -Y).

    Attributes:
        azimuth: degrees about +Z; 0 looks at the front (camera on -Y),
            positive turns the camera towards +X (the shape's left side).
        elevation: degrees above the horizon.
        fov: vertical field of view, degrees.
        margin: >1 leaves room around the shape's bounding sphere.
    """

    azimuth: float = 30.0
    elevation: float = 20.0
    fov: float = 35.0
    margin: float = 1.05

    def view(self, centre: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray, float]:
        """World-to-camera rotation (3, 3), camera position (3,), focal length
        in units of half the image height."""
        az, el = np.radians(self.azimuth), np.radians(self.elevation)
        direction = np.array([np.sin(az) * np.cos(el), -np.cos(az) * np.cos(el), np.sin(el)])
        focal = 1.0 / np.tan(np.radians(self.fov) / 2.0)
        distance = self.margin * radius * np.sqrt(1.0 + focal**2)
        eye = np.asarray(centre, float) + direction * distance
        forward = -direction
        right = np.cross(forward, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        up = np.cross(right, forward)
        return np.stack([right, up, forward]), eye, focal


@dataclass
class Raster:
    """Per-pixel buffers of a render (row 0 is the top of the image).

    Attributes:
        depth: (H, W) distance along the view axis, ``inf`` where empty.
        face: (H, W) index of the visible triangle, -1 where empty.
    """

    depth: np.ndarray
    face: np.ndarray


def project(
    points: np.ndarray, rotation: np.ndarray, eye: np.ndarray, focal: float, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (N, 2) as (column, row) and view depth (N,)."""
    cam = (np.asarray(points, float) - eye) @ rotation.T
    depth = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        x = focal * cam[:, 0] / depth
        y = focal * cam[:, 1] / depth
    half = size / 2.0
    return np.stack([half + x * half, half - y * half], axis=1), depth


def rasterize(
    vertices: np.ndarray,
    faces: np.ndarray,
    camera: Camera,
    size: int,
    centre=None,
    radius=None,
    cull_back: bool = False,
) -> Raster:
    """Visible triangle and depth at every pixel centre.

    Args:
        vertices: (V, 3) world positions.
        faces: (F, 3) triangle indices.
        camera: the viewpoint; framed on ``centre``/``radius`` (default: the
            bounding sphere of ``vertices``).
        size: image height and width in pixels.
        cull_back: skip triangles facing away (only for closed, outward-wound
            meshes: it halves the work).
    """
    vertices = np.asarray(vertices, float)
    faces = np.asarray(faces, np.int64)
    if centre is None or radius is None:
        lo, hi = vertices.min(axis=0), vertices.max(axis=0)
        centre, radius = (lo + hi) / 2.0, max(np.linalg.norm(hi - lo) / 2.0, 1e-9)
    rotation, eye, focal = camera.view(centre, radius)
    screen, depth = project(vertices, rotation, eye, focal, size)
    tri = screen[faces]  # (F, 3, 2)
    tri_depth = depth[faces]
    keep = np.all(tri_depth > 1e-9, axis=1)
    if cull_back:
        edge1, edge2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
        keep &= edge1[:, 0] * edge2[:, 1] - edge1[:, 1] * edge2[:, 0] < 0  # counter-clockwise on screen (y down)
    lo = np.clip(np.floor(tri.min(axis=1) - 0.5).astype(np.int64) + 1, 0, size)
    hi = np.clip(np.floor(tri.max(axis=1) - 0.5).astype(np.int64) + 1, 0, size)
    spans = np.where(keep[:, None], hi - lo, 0)
    spans = np.maximum(spans, 0)
    counts = spans[:, 0] * spans[:, 1]
    out = Raster(np.full((size, size), np.inf), np.full((size, size), -1, np.int64))
    total = int(counts.sum())
    if total == 0:
        return out
    face_id = np.repeat(np.arange(len(faces)), counts)
    local = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    width = spans[face_id, 0]
    px = lo[face_id, 0] + local % np.maximum(width, 1)
    py = lo[face_id, 1] + local // np.maximum(width, 1)
    centre_x, centre_y = px + 0.5, py + 0.5
    a, b, c = tri[face_id, 0], tri[face_id, 1], tri[face_id, 2]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    w0 = (b[:, 0] - centre_x) * (c[:, 1] - centre_y) - (b[:, 1] - centre_y) * (c[:, 0] - centre_x)
    w1 = (c[:, 0] - centre_x) * (a[:, 1] - centre_y) - (c[:, 1] - centre_y) * (a[:, 0] - centre_x)
    w2 = area - w0 - w1
    with np.errstate(divide="ignore", invalid="ignore"):
        w0, w1, w2 = w0 / area, w1 / area, w2 / area
    inside = (w0 >= 0) & (w1 >= 0) & (w2 >= 0) & (np.abs(area) > 1e-12)
    d = tri_depth[face_id]
    # Perspective-correct depth: interpolate 1/z.
    with np.errstate(divide="ignore"):
        z = 1.0 / (w0 / d[:, 0] + w1 / d[:, 1] + w2 / d[:, 2])
    pixel = (py * size + px)[inside]
    z, face_id = z[inside], face_id[inside]
    order = np.lexsort((z, pixel))
    pixel, z, face_id = pixel[order], z[order], face_id[order]
    first = np.r_[True, pixel[1:] != pixel[:-1]]
    out.depth.reshape(-1)[pixel[first]] = z[first]
    out.face.reshape(-1)[pixel[first]] = face_id[first]
    return out


def face_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(F, 3) unit normals (zero for degenerate triangles)."""
    tri = np.asarray(vertices, float)[np.asarray(faces, np.int64)]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    length = np.linalg.norm(n, axis=1, keepdims=True)
    return np.divide(n, length, out=np.zeros_like(n), where=length > 0)


def shade(
    vertices: np.ndarray,
    faces: np.ndarray,
    face_colors: np.ndarray,
    camera: Camera,
    size: int = 128,
    background=(1.0, 1.0, 1.0),
    supersample: int = 2,
    cull_back: bool = False,
) -> np.ndarray:
    """Render a shaded RGB image.

    Lambertian shading from a key light above the camera's left plus a
    fill and an ambient term; faces are lit on whichever side faces the
    camera. Rendered at ``supersample`` times the size and averaged down.

    Args:
        face_colors: (F, 3) albedo in [0, 1].
        background: RGB in [0, 1].

    Returns:
        (size, size, 3) uint8, row 0 at the top.
    """
    big = size * supersample
    raster = rasterize(vertices, faces, camera, big, cull_back=cull_back)
    rotation, _, _ = camera.view(np.zeros(3), 1.0)
    normals = face_normals(vertices, faces)
    forward = rotation[2]
    facing = np.where((normals @ forward)[:, None] > 0, -normals, normals)
    key = -forward + 0.8 * rotation[1] - 0.6 * rotation[0]
    fill = -forward + 0.3 * rotation[0]
    key, fill = key / np.linalg.norm(key), fill / np.linalg.norm(fill)
    light = 0.25 + 0.65 * np.clip(facing @ key, 0, None) + 0.2 * np.clip(facing @ fill, 0, None)
    colors = np.clip(np.asarray(face_colors, float) * light[:, None], 0.0, 1.0)
    image = np.empty((big, big, 3))
    image[:] = np.asarray(background, float)
    hit = raster.face >= 0
    image[hit] = colors[raster.face[hit]]
    image = image.reshape(size, supersample, size, supersample, 3).mean(axis=(1, 3))
    return np.round(image * 255.0).astype(np.uint8)


def visible_points(
    vertices: np.ndarray,
    faces: np.ndarray,
    points: np.ndarray,
    point_faces: np.ndarray,
    camera: Camera,
    size: int = 256,
) -> np.ndarray:
    """(N,) mask of surface points seen from ``camera`` (a single-view scan).

    A point is visible when the triangle it lies on is the one rasterised at
    its pixel, or its depth is within half a percent of the visible depth there.
    """
    raster = rasterize(vertices, faces, camera, size)
    lo, hi = np.asarray(vertices).min(axis=0), np.asarray(vertices).max(axis=0)
    rotation, eye, focal = camera.view((lo + hi) / 2.0, max(np.linalg.norm(hi - lo) / 2.0, 1e-9))
    screen, depth = project(points, rotation, eye, focal, size)
    px = np.clip(screen[:, 0].astype(np.int64), 0, size - 1)
    py = np.clip(screen[:, 1].astype(np.int64), 0, size - 1)
    seen_face = raster.face[py, px]
    seen_depth = raster.depth[py, px]
    return (seen_face == point_faces) | (depth <= seen_depth * 1.005)


THUMBNAIL_CAMERA = Camera(azimuth=35, elevation=20)  # seen from the front left, a little above
THUMBNAIL_BACKGROUND = (0.16, 0.16, 0.16)  # Blender's dark panel grey
DEFAULT_ALBEDO = (0.7, 0.7, 0.72)  # faces of files without colours


def thumbnail(vertices: np.ndarray, faces: np.ndarray, face_colors: np.ndarray, size: int = 96) -> np.ndarray:
    """(size, size, 3) uint8 picture of a model for the add-on's candidate list (one look everywhere).

    Args:
        vertices: (V, 3) positions (Z up; any unit, the camera frames the bounding sphere).
        faces: (F, 3) triangle indices.
        face_colors: (F, 3) albedo in [0, 1].
    """
    return shade(
        vertices, faces, face_colors, THUMBNAIL_CAMERA, size=size, background=THUMBNAIL_BACKGROUND, supersample=1
    )
