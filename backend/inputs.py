"""Targets as users give them: point files, image files and arrays, checked before any work.

Every function here raises ``InputError`` (a ``ValueError``) with one line
that names the file or array and the problem; nothing returns garbage:

- points: ``.npy`` headers are read and checked (dtype, shape, declared size
  against the file's size and ``MAX_POINTS``) before anything is allocated;
- images: every Pillow mode (16-bit and 32-bit grey, float, palette with or
  without transparency, CMYK, grey or colour with alpha) becomes 8-bit RGB or
  RGBA in its own range; arrays are normalised by dtype (uint8, uint16, bool,
  float in 0..1); size is capped at ``MAX_IMAGE_PIXELS``; an image with no
  object on a plain background (or transparency) is refused.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from backend.protocol import npy_header

MAX_POINTS = 20_000_000
MAX_TEXT_BYTES = 1 << 30
MAX_COORDINATE = 1e12  # metres: beyond this, float32 normalisation overflows or loses the shape
MAX_IMAGE_PIXELS = 64_000_000
MIN_IMAGE_SIDE = 16
WORKING_SIDE = 1024  # larger images are reduced on reading: the model sees far fewer pixels
NO_FOREGROUND = "the image needs a plain background or transparency"
BACKGROUND_TOLERANCE = 0.1  # colour distance (max over channels, in [0, 1]) still counted as background
PLAIN_BORDER = 0.6  # at least this fraction of the border must be the background colour
MIN_FOREGROUND = 0.002  # fraction of the frame
MAX_FOREGROUND = 0.95
POINT_FILES = (".npy", ".ply", ".obj", ".off", ".stl", ".glb", ".gltf", ".xyz", ".txt", ".pts", ".csv")


class InputError(ValueError):
    """A target that cannot be used; the message names it and says why."""


# -- points ------------------------------------------------------------------------------------


def _npy_points(path: str) -> np.ndarray:
    size = os.path.getsize(path)
    if size == 0:
        raise InputError(f"{path} is empty (0 bytes)")
    with open(path, "rb") as handle:
        try:
            shape, dtype, offset = npy_header(handle)
        except ValueError as error:
            raise InputError(f"{path}: {error}") from error
    if dtype.kind not in "fiu":
        raise InputError(f"{path} holds {dtype} values; points must be plain numbers (float or int)")
    if len(shape) != 2 or shape[1] < 3:
        raise InputError(f"{path} holds an array of shape {shape}; points must be N x 3")
    if shape[0] > MAX_POINTS:
        raise InputError(f"{path} declares {shape[0]} points; the limit is {MAX_POINTS}")
    if offset + shape[0] * shape[1] * dtype.itemsize != size:
        raise InputError(f"{path} is truncated or damaged: its header declares {shape}, its size does not match")
    return np.load(path, allow_pickle=False)[:, :3]


def read_points(path: str | os.PathLike) -> np.ndarray:
    """(N, 3) float64 points from .npy (no pickle), mesh vertices (.ply .obj .off .stl .glb .gltf)
    or whitespace/comma text (.xyz .txt .pts .csv).

    Raises:
        InputError: missing, unreadable, malformed, too large, or with absurd coordinates.
    """
    path = str(path)
    if not os.path.exists(path):
        raise InputError(f"points file not found: {path}")
    if not os.path.isfile(path):
        raise InputError(f"{path} is not a regular file")
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".npy":
        points = _npy_points(path)
    elif suffix in (".ply", ".obj", ".off", ".stl", ".glb", ".gltf"):
        import trimesh

        from backend.library.loading import ConfinedResolver

        try:
            loaded = trimesh.load(path, process=False, resolver=ConfinedResolver(path, Path(path).resolve().parent))
            if isinstance(loaded, trimesh.Scene):
                loaded = loaded.to_geometry()
            points = np.asarray(loaded.vertices)
        except Exception as error:  # trimesh raises many types on malformed files
            raise InputError(f"cannot read points from {path}: {type(error).__name__}: {error}") from error
    else:
        if os.path.getsize(path) > MAX_TEXT_BYTES:
            raise InputError(f"{path} is larger than {MAX_TEXT_BYTES >> 20} MiB; save it as .npy")
        try:
            points = np.loadtxt(path, ndmin=2, delimiter="," if suffix == ".csv" else None, max_rows=MAX_POINTS)
        except (ValueError, UnicodeDecodeError) as error:
            raise InputError(f"cannot read points from {path}: {error}") from error
        if points.shape[1] < 3:
            raise InputError(f"{path} has {points.shape[1]} columns; points need x y z")
        points = points[:, :3]
    return check_points(points, path)


def check_points(points, what: str = "the target") -> np.ndarray:
    """(N, 3) float64 from an array; rows with NaN/inf are left for the fitter to drop (with a warning).

    Raises:
        InputError: wrong shape or dtype, empty, or coordinates beyond ``MAX_COORDINATE``.
    """
    array = np.asarray(points)
    if array.dtype.kind not in "fiu" or array.dtype.names is not None:
        raise InputError(f"{what}: points must be numbers, got {array.dtype}")
    if array.ndim != 2 or array.shape[1] != 3:
        raise InputError(f"{what}: points must be an N x 3 array, got shape {array.shape}")
    if len(array) == 0:
        raise InputError(f"{what} holds no points")
    array = array.astype(np.float64)
    finite = np.isfinite(array)
    if np.any(np.abs(array[finite]) > MAX_COORDINATE):
        raise InputError(
            f"{what} has coordinates up to {np.abs(array[finite]).max():.3g}; more than {MAX_COORDINATE:.0e} m "
            "cannot be fitted (check the units)"
        )
    from backend.fitting import MIN_POINTS

    usable = array[finite.all(axis=1)]
    if len(usable) < MIN_POINTS:
        raise InputError(
            f"{what} has {len(usable)} usable points (rows without NaN or infinite coordinates); "
            f"at least {MIN_POINTS} are needed"
        )
    if np.linalg.norm(usable.max(axis=0) - usable.min(axis=0)) <= 1e-9:
        raise InputError(f"{what} has no extent: every point is at the same place")
    return array


# -- images ------------------------------------------------------------------------------------


def _to_uint8(values: np.ndarray, full_scale: float) -> np.ndarray:
    return np.clip(np.rint(values.astype(np.float64) * (255.0 / full_scale)), 0, 255).astype(np.uint8)


def _float_scale(values: np.ndarray, what: str) -> float:
    """Full scale of a float image: 1 (fractions) or 255 (8-bit values stored as float)."""
    if not np.all(np.isfinite(values)):
        raise InputError(f"{what} has NaN or infinite pixel values")
    top = float(values.max(initial=0.0))
    if top <= 1.0 + 1e-3:
        return 1.0
    if top <= 255.0 + 1e-3:
        return 255.0
    raise InputError(f"{what} has float pixel values up to {top:.4g}; expected 0..1 or 0..255")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """(H, W, 3|4) uint8 RGB(A) of an image file, whatever its mode; row 0 at the top.

    Large images are reduced to ``WORKING_SIDE`` pixels on the long side.

    Raises:
        InputError: missing, unreadable, larger than ``MAX_IMAGE_PIXELS``, too small, or showing no object.
    """
    from PIL import Image, UnidentifiedImageError

    path = str(path)
    if not os.path.exists(path):
        raise InputError(f"image not found: {path}")
    if not os.path.isfile(path):
        raise InputError(f"{path} is not a regular file")
    limit = f"the limit is {MAX_IMAGE_PIXELS // 1_000_000} megapixels: downscale it"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise InputError(f"{path} is {width} x {height} pixels; {limit}")
                array = image_modes_to_uint8(image, path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise InputError(f"{path} is larger than {MAX_IMAGE_PIXELS // 1_000_000} megapixels; {limit}") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        if isinstance(error, InputError):
            raise
        raise InputError(f"cannot read image {path}: {error}") from error
    return prepare_image(array, path)


def image_modes_to_uint8(image, what: str) -> np.ndarray:
    """(H, W, 3|4) uint8 from an open Pillow image of any mode."""
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(image)
        if mode == "F":
            scale = _float_scale(values, what)
        elif mode == "I":
            scale = 65535.0 if values.max(initial=0) > 255 else 255.0
        else:
            scale = 65535.0
        grey = _to_uint8(values, scale)
        return np.repeat(grey[..., None], 3, axis=2)
    has_alpha = "A" in image.getbands() or (mode in ("P", "L", "RGB") and "transparency" in image.info)
    return np.asarray(image.convert("RGBA" if has_alpha else "RGB"))


def image_array(array, what: str = "the image") -> np.ndarray:
    """(H, W, 3|4) uint8 from an array sent by the add-on or a script.

    Accepts (H, W), (H, W, 1|2|3|4) of uint8, uint16, bool, or float in 0..1 (or 0..255).

    Raises:
        InputError: another dtype or shape, non-finite values, or no object to fit.
    """
    return prepare_image(pixels(array, what), what)


def pixels(array, what: str = "the image") -> np.ndarray:
    """(H, W, 3|4) uint8 RGB(A) from (H, W) or (H, W, 1|2|3|4) uint8, uint16, bool or float (0..1 or 0..255).

    Raises:
        InputError: another dtype or shape, non-finite values, more than ``MAX_IMAGE_PIXELS``.
    """
    values = np.asarray(array)
    if values.ndim == 2:
        values = values[..., None]
    if values.ndim != 3 or values.shape[2] not in (1, 2, 3, 4):
        raise InputError(f"{what} must be H x W x 3 (RGB) or x 4 (RGBA), got shape {values.shape}")
    if values.shape[0] * values.shape[1] > MAX_IMAGE_PIXELS:
        raise InputError(f"{what} is {values.shape[1]} x {values.shape[0]} pixels; the limit is 64 megapixels")
    if values.dtype == np.uint8:
        data = values
    elif values.dtype == np.uint16:
        data = _to_uint8(values, 65535.0)
    elif values.dtype == np.bool_:
        data = values.astype(np.uint8) * 255
    elif values.dtype.kind == "f":
        data = _to_uint8(values, _float_scale(values, what))
    else:
        raise InputError(f"{what} has {values.dtype} pixels; send uint8, uint16 or float in 0..1")
    if data.shape[2] in (1, 2):  # grey, grey + alpha
        data = np.concatenate([np.repeat(data[..., :1], 3, axis=2), data[..., 1:]], axis=2)
    return np.ascontiguousarray(data)


def prepare_image(data: np.ndarray, what: str) -> np.ndarray:
    """Reduce a uint8 RGB(A) image to ``WORKING_SIDE`` and check that it shows an object."""
    height, width = data.shape[:2]
    if min(height, width) < MIN_IMAGE_SIDE:
        raise InputError(f"{what} is {width} x {height} pixels; at least {MIN_IMAGE_SIDE} on each side are needed")
    if max(height, width) > WORKING_SIDE:
        from PIL import Image

        image = Image.fromarray(data)
        image.thumbnail((WORKING_SIDE, WORKING_SIDE), Image.Resampling.BOX)
        data = np.asarray(image)
    try:
        foreground_mask(data)
    except InputError as error:
        raise InputError(f"{what}: {error}") from None
    return data


def foreground_mask(image) -> np.ndarray:
    """(H, W) bool: the object in a reference image (any array ``pixels`` accepts).

    From the alpha channel when it is not all opaque; otherwise every pixel
    that differs from the background colour, the median of the image's border
    (white or any plain colour), by more than ``BACKGROUND_TOLERANCE``. The
    object may be small and anywhere in the frame, and may touch the border.

    Raises:
        InputError: ``"the image needs a plain background or transparency: ..."``
            when the border is not one plain colour or the foreground is empty,
            tiny or fills the frame (a bad shape or dtype gets its own message).
    """
    data = pixels(image).astype(np.float32) / 255.0
    h, w, channels = data.shape
    colour = data[..., :3]
    if channels == 4 and float(data[..., 3].min()) < 0.99:
        mask = data[..., 3] > 0.5
        how = "transparency"
    else:
        band = max(1, round(0.02 * min(h, w)))
        border = np.concatenate(
            [colour[:band].reshape(-1, 3), colour[-band:].reshape(-1, 3), colour[:, :band].reshape(-1, 3)]
            + [colour[:, -band:].reshape(-1, 3)]
        )
        background = np.median(border, axis=0)
        plain = float((np.abs(border - background).max(axis=1) <= BACKGROUND_TOLERANCE).mean())
        if plain < PLAIN_BORDER:
            raise InputError(
                f"{NO_FOREGROUND}: the image's border is not one plain colour "
                f"(only {plain:.0%} of it is close to its median colour)"
            )
        mask = np.abs(colour - background).max(axis=2) > BACKGROUND_TOLERANCE
        how = "background"
    fraction = float(mask.mean())
    if fraction < MIN_FOREGROUND:
        detail = "the alpha channel is transparent" if how == "transparency" else "nothing differs from the background"
        raise InputError(f"{NO_FOREGROUND}: no object found ({detail} almost everywhere)")
    if fraction > MAX_FOREGROUND:
        raise InputError(f"{NO_FOREGROUND}: the object fills {fraction:.0%} of the frame, so no background is left")
    return mask
