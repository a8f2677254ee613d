"""Domain-randomised training renders (issue 15 item 6): many looks of one shape, so an image encoder trained on
them learns the shape rather than one renderer's look.

Each render draws a ``Look``: the material (one grey, one colour, the palette's woods and paints, or a tint per
part), the key light's direction and strength, a fill light, the ambient term and a tone curve, the camera (azimuth,
elevation, field of view: about 24-85 mm lenses), the background (white, a light grey, any plain colour, or
transparent and composited on white as ``backend.fitting.image_tensor`` does) and where the object sits in the
frame (its larger side from 30% to all of the frame, anywhere in it, up to touching or just crossing the border).
Some renders keep the original look of ``training.data.views.render_image``, so the procedural test renders stay
in the distribution. Rasterised by ``backend.render.rasterize`` (every pixel and triangle at once); everything is
drawn from one ``numpy`` generator, so a seed gives the same images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from backend.render import Camera, face_normals, rasterize
from training.data.furniture import Furniture
from training.data.views import mesh_arrays, part_colors, render_image

MATERIALS = ("grey", "colour", "palette", "tints")
BACKGROUNDS = ("white", "light", "colour", "transparent")
ORIGINAL_SHARE = 0.2  # share of renders in training.data.views.render_image's look


@dataclass(frozen=True)
class Look:
    """One randomised render's settings.

    Attributes:
        albedo: (n_parts, 3) RGB in [0, 1].
        key: (3,) unit direction towards the key light in camera coordinates (right, up, towards the camera).
        key_strength, fill_strength, ambient: Lambertian terms (fill: a second light from a random side).
        fill: (3,) unit direction towards the fill light, camera coordinates.
        gamma: tone curve exponent on the shaded colour (1: linear).
        camera: azimuth, elevation (degrees), vertical field of view (degrees).
        background: RGB in [0, 1] (white for ``transparent``, which is composited on it).
        transparent: rendered with coverage as alpha, then composited over white.
        fill_share: the object's larger 2D side as a share of the frame.
        offset: (2,) where the object's 2D box centre lands, in half-frame units (x right, y up).
        noise: standard deviation of per-pixel Gaussian noise (a path tracer's grain), in [0, 1] units.
    """

    albedo: np.ndarray
    key: np.ndarray
    key_strength: float
    fill: np.ndarray
    fill_strength: float
    ambient: float
    gamma: float
    camera: Camera
    background: np.ndarray
    transparent: bool
    fill_share: float
    offset: np.ndarray
    noise: float


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


def random_look(shape: Furniture, rng: np.random.Generator) -> Look:
    """A ``Look`` for ``shape`` drawn from ``rng``: material, lights, camera, background and placement."""
    n_parts = len(shape.parts)
    material = MATERIALS[rng.choice(len(MATERIALS), p=[0.3, 0.2, 0.3, 0.2])]
    if material == "grey":
        albedo = np.full((n_parts, 3), rng.uniform(0.35, 0.9))
    elif material == "colour":
        albedo = np.tile(rng.uniform(0.1, 0.95, 3), (n_parts, 1))
    elif material == "palette":
        albedo = part_colors(shape, rng)
    else:
        albedo = rng.uniform(0.1, 0.95, (n_parts, 3))
    albedo = np.clip(albedo * rng.uniform(0.9, 1.1, (n_parts, 1)), 0.0, 1.0)
    key = _unit(np.array([rng.uniform(-1.0, 1.0), rng.uniform(-0.3, 1.0), rng.uniform(0.2, 1.0)]))
    fill = _unit(np.array([rng.uniform(-1.0, 1.0), rng.uniform(-0.5, 0.5), rng.uniform(0.0, 1.0)]))
    background_kind = BACKGROUNDS[rng.choice(len(BACKGROUNDS), p=[0.3, 0.2, 0.3, 0.2])]
    background = {
        "white": np.ones(3),
        "light": np.full(3, rng.uniform(0.75, 1.0)),
        "colour": rng.uniform(0.0, 1.0, 3),
        "transparent": np.ones(3),
    }[background_kind]
    # Lenses of about 24-85 mm (36 x 24 mm film): vertical fields of view of 16-53 degrees, uniform in log.
    fov = float(np.exp(rng.uniform(np.log(16.0), np.log(53.0))))
    camera = Camera(azimuth=rng.uniform(-75.0, 75.0), elevation=rng.uniform(0.0, 45.0), fov=fov)
    centred = rng.random() < 0.4
    return Look(
        albedo=albedo,
        key=key,
        key_strength=rng.uniform(0.4, 1.0),
        fill=fill,
        fill_strength=rng.uniform(0.0, 0.35),
        ambient=rng.uniform(0.1, 0.5),
        gamma=float(np.exp(rng.uniform(np.log(0.7), np.log(1.5)))),
        camera=camera,
        background=background,
        transparent=background_kind == "transparent",
        fill_share=float(np.exp(rng.uniform(np.log(0.3), 0.0))),
        offset=np.zeros(2) if centred else rng.uniform(-1.0, 1.0, 2),
        noise=rng.uniform(0.0, 0.03) if rng.random() < 0.5 else 0.0,
    )


def framing(vertices: np.ndarray, look: Look) -> tuple[np.ndarray, float, float]:
    """Centre and radius to frame ``vertices`` (V, 3) with so that their 2D box fills ``look.fill_share`` of the
    frame at ``look.offset`` (``offset`` 1 puts the box's edge up to 10% of its size past the border).

    The object is first framed on its bounding sphere (``Camera.view``); moving the framed centre by ``t`` across
    the view and dividing the radius by ``zoom`` maps a normalised image point ``x`` to ``zoom * (x - t / W)``,
    ``W`` the frame's half-width at the centre's depth. Returns (centre (3,), radius, zoom)."""
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    centre, radius = (lo + hi) / 2.0, max(float(np.linalg.norm(hi - lo)) / 2.0, 1e-9)
    rotation, eye, focal = look.camera.view(centre, radius)
    cam = (vertices - eye) @ rotation.T
    screen = focal * cam[:, :2] / cam[:, 2:3]
    box_lo, box_hi = screen.min(axis=0), screen.max(axis=0)
    half, middle = (box_hi - box_lo) / 2.0, (box_hi + box_lo) / 2.0
    zoom = look.fill_share / max(float(half.max()), 1e-9)
    room = np.maximum(1.0 - zoom * half * 0.9, 0.0)  # how far the box centre may move and stay (nearly) in frame
    target = look.offset * room
    width = float(np.linalg.norm(eye - centre)) / focal
    shift = width * (middle - target / zoom)
    return centre + rotation[0] * shift[0] + rotation[1] * shift[1], radius / zoom, zoom


def render_look(
    shape: Furniture, look: Look, size: int = 128, supersample: int = 2, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Render ``shape`` in ``look``: (size, size, 3) uint8 RGB, row 0 at the top, and the (size, size) bool
    foreground (coverage over half). ``rng`` draws the grain when ``look.noise`` > 0."""
    vertices, faces, labels = mesh_arrays(shape)
    centre, radius, _ = framing(vertices, look)
    big = size * supersample
    raster = rasterize(vertices, faces, look.camera, big, centre=centre, radius=radius, cull_back=True)
    rotation, _, _ = look.camera.view(centre, radius)
    normals = face_normals(vertices, faces) @ rotation.T  # camera coordinates; the camera looks along +z
    facing = np.where(normals[:, 2:3] > 0, -normals, normals)
    towards = facing * np.array([1.0, 1.0, -1.0])  # flip z: the looks' light directions point towards the camera
    light = (
        look.ambient
        + look.key_strength * np.clip(towards @ look.key, 0.0, None)
        + look.fill_strength * np.clip(towards @ look.fill, 0.0, None)
    )
    colors = np.clip(look.albedo[labels] * light[:, None], 0.0, 1.0) ** look.gamma
    hit = raster.face >= 0
    rgb = np.zeros((big, big, 3))
    rgb[hit] = colors[raster.face[hit]]
    rgb = rgb.reshape(size, supersample, size, supersample, 3).mean(axis=(1, 3))
    alpha = hit.reshape(size, supersample, size, supersample).mean(axis=(1, 3))[..., None]
    # Coverage-weighted colour over the background: a transparent render composited on white is the same sum.
    image = rgb + (1.0 - alpha) * look.background
    if look.noise > 0 and rng is not None:
        image = image + rng.normal(0.0, look.noise, image.shape) * alpha
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8), alpha[..., 0] > 0.5


def randomised_render(shape: Furniture, rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """(size, size, 3) uint8 RGB: ``render_image``'s own look for ``ORIGINAL_SHARE`` of the draws, else a
    ``random_look``."""
    if rng.random() < ORIGINAL_SHARE:
        return render_image(shape, rng, size=size, random_background=rng.random() < 0.5)
    return render_look(shape, random_look(shape, rng), size, rng=rng)[0]


def view_renderer(
    shapes: list[Furniture], size: int, seed: int
) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """``(rows (B,), generator) -> (B, 3, size, size) uint8``: a fresh ``randomised_render`` of each row's shape,
    each from a ``numpy`` generator seeded by ``seed`` and a number drawn from the torch ``generator`` (so a
    training run's seed fixes every image)."""

    def render(rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        keys = torch.randint(2**62, (len(rows),), generator=generator).tolist()
        draws = [np.random.default_rng([seed, key]) for key in keys]
        images = [randomised_render(shapes[int(row)], rng, size) for row, rng in zip(rows, draws)]
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()

    return render
