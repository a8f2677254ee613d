"""Image targets by render-and-compare on silhouettes.

A user's reference image (a product shot, a photo, a render nobody here made)
is reduced to its foreground mask (``backend.inputs.foreground_mask``), which transfers across materials, lights
and renderers by construction. Every source's surface samples are projected
by a perspective camera (``FOV``) from a grid of views and splatted into small masks (the
``SilhouetteBank``, computed once per library); the target's mask and each
silhouette are aligned by their 2D bounding boxes (aspect ratio kept) and
compared by IoU. The view of the image is the view on which the best sources
agree best; per-axis proportions of a candidate come from the same comparison
with the candidate stretched along X, Y and Z.

Conventions follow ``backend.render.Camera``: Z up, the front faces -Y,
azimuth in degrees about +Z (0 looks at the front, positive turns the camera
towards +X), elevation in degrees above the horizon. Masks are (rows, columns)
with row 0 at the top.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from backend import silhouette_bank as bank_files
from backend.geometry.frames import view_record
from backend.inputs import NO_FOREGROUND, foreground_mask, pixels  # noqa: F401  (the foreground's one home)

RESOLUTION = bank_files.RESOLUTION
RERANK_RESOLUTION = 48  # the bank's head is re-ordered at this resolution
PROPORTION_RESOLUTION = 64  # and its best stretched to the image's proportions at this one
SHORTLIST = 20  # sources re-ordered by mask distance
VIEW_HYPOTHESES = 3  # views of the IoU consensus whose shortlists the mask distance chooses among
HYPOTHESIS_MARGIN = 0.05  # a view is a hypothesis within this much of the best consensus IoU
SWITCH_MARGIN = 0.0005  # mask distance (grid widths) by which another view's shortlist must beat the consensus'
EDGE_CHOICE = 8  # stretched candidates the interior edges choose among
EDGE_RESOLUTION = 64  # grid of the interior edges (that of the proportions)
EDGE_THRESHOLD = 0.02  # Sobel response (grey in 0..1; the difference across two pixels of the working crop) of an edge
EDGE_STEPS = 2  # cells of ``mask_distance``'s truncation between edge maps
EDGE_WEIGHT = 0.1  # the edge distance's weight against the outline's mask distance
EDGE_MARGIN = 0.0005  # by which another stretched candidate must beat the re-ranked first to take its place
PAD = bank_files.PAD
FOV = bank_files.FOV  # degrees: a typical product shot (a 50 mm lens on full frame is 27 degrees vertically)

Progress = Callable[[int, int, str], None]


# -- the target's foreground ---------------------------------------------------------------


def grid_placement(mask: np.ndarray | torch.Tensor, resolution: int) -> tuple[slice, slice, int, int, int, int]:
    """Where ``mask`` (H, W)'s bounding box goes in an R x R grid: its rows and columns (slices of the image), its
    size in cells (th, tw) and the cell of its top-left corner (top, left). The longer side spans ``R - 2 PAD``
    cells, centred: the alignment ``splat`` gives the silhouettes."""
    rows, cols = np.nonzero(np.asarray(mask, bool))
    if len(rows) == 0:
        raise ValueError(f"{NO_FOREGROUND}: the mask is empty")
    h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
    inner, side = resolution - 2 * PAD, max(h, w)
    th, tw = max(1, round(h * inner / side)), max(1, round(w * inner / side))
    crop = (slice(int(rows.min()), int(rows.max()) + 1), slice(int(cols.min()), int(cols.max()) + 1))
    return crop[0], crop[1], th, tw, PAD + (inner - th) // 2, PAD + (inner - tw) // 2


def mask_grid(mask: np.ndarray | torch.Tensor, resolution: int = RESOLUTION) -> torch.Tensor:
    """(R, R) bool: ``mask`` (H, W) cropped to its bounding box and fitted, aspect kept, into the grid.

    The longer side spans ``R - 2 PAD`` cells, centred: the same alignment as ``splat`` (``grid_placement``).
    A cell is set when more than 15% of it is foreground (the silhouettes set a cell
    holding any sample, so thin parts survive on both sides).
    """
    mask = torch.as_tensor(np.asarray(mask, bool))
    rows, cols, th, tw, top, left = grid_placement(mask, resolution)
    crop = mask[rows, cols].float()[None, None]
    mode = "area" if max(crop.shape[2:]) >= resolution - 2 * PAD else "nearest"
    small = F.interpolate(crop, size=(th, tw), mode=mode)[0, 0] > 0.15
    out = torch.zeros(resolution, resolution, dtype=torch.bool)
    out[top : top + th, left : left + tw] = small
    return out


def inset(masks: torch.Tensor, cells: int = 2) -> torch.Tensor:
    """(..., R, R) bool: ``masks`` eroded by ``cells`` 3 x 3 steps (their outline and what lies near it left out)."""
    r, rows = masks.shape[-1], pack_rows(masks)
    for _ in range(cells):
        rows = erode_rows(rows, r)
    return unpack_rows(rows, r)


_SOBEL = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]]) / 4  # grey difference across two pixels
_GAUSS = torch.exp(-torch.arange(-2.0, 3.0).square() / 2)  # sigma one pixel


def image_edges(
    image, mask: np.ndarray, resolution: int = EDGE_RESOLUTION, threshold: float = EDGE_THRESHOLD, oversample: int = 4
) -> torch.Tensor:
    """(R, R) bool: cells, aligned as ``mask_grid(mask, R)``, holding an edge inside the object of ``image`` (any
    array ``pixels`` accepts) whose foreground is ``mask`` (H, W): a grey-level gradient above ``threshold``.

    The object's box is resampled to ``oversample`` pixels a cell first (so a photo of any size is seen alike),
    blurred by a Gaussian of one pixel; its Sobel gradient is max-pooled into cells; cells within two of the
    outline are left out (the outline is the silhouettes' cue). What is left are the lines a plain material shows
    inside the silhouette under any light: creases between faces, where a part passes in front of another, shelf
    fronts, drawer gaps.
    """
    rows, cols, th, tw, top, left = grid_placement(mask, resolution)
    grey = torch.from_numpy(pixels(image)[rows, cols, :3].astype(np.float32).mean(-1) / 255.0)
    inside = torch.from_numpy(np.asarray(mask, bool)[rows, cols]).float()
    size = (th * oversample, tw * oversample)
    work = F.interpolate(torch.stack([grey * inside, inside])[None], size=size, mode="area")[0]
    grey = torch.where(work[1] > 0.5, work[0] / work[1].clamp_min(1e-6), 1.0)  # beyond the object: its background
    g = (_GAUSS / _GAUSS.sum()).view(1, 1, 1, -1)
    blurred = F.conv2d(F.conv2d(F.pad(grey[None, None], (2, 2, 2, 2), mode="replicate"), g), g.transpose(2, 3))
    padded = F.pad(blurred, (1, 1, 1, 1), mode="replicate")
    gx, gy = F.conv2d(padded, _SOBEL.view(1, 1, 3, 3)), F.conv2d(padded, _SOBEL.T.reshape(1, 1, 3, 3))
    strength = F.max_pool2d(torch.hypot(gx, gy), oversample)[0, 0]  # (th, tw)
    out = torch.zeros(resolution, resolution, dtype=torch.bool)
    out[top : top + th, left : left + tw] = strength > threshold
    return out & inset(mask_grid(mask, resolution))


# -- views and splatting -------------------------------------------------------------------


@dataclass(frozen=True)
class ViewGrid:
    """Viewpoints (degrees) compared against an image: every elevation with every azimuth."""

    elevations: tuple[float, ...] = bank_files.ELEVATIONS
    azimuths: tuple[float, ...] = bank_files.AZIMUTHS

    def __len__(self) -> int:
        return len(self.elevations) * len(self.azimuths)

    def angles(self) -> torch.Tensor:
        """(V, 2) azimuth, elevation of view ``v = e * len(azimuths) + a``."""
        el, az = torch.meshgrid(
            torch.tensor(self.elevations, dtype=torch.float64),
            torch.tensor(self.azimuths, dtype=torch.float64),
            indexing="ij",
        )
        return torch.stack([az.reshape(-1), el.reshape(-1)], dim=1)

    def neighbours(self) -> torch.Tensor:
        """(V, V) bool: views at most one grid step apart in azimuth (cyclic) and in elevation."""
        n_az, n_el = len(self.azimuths), len(self.elevations)
        a = torch.arange(n_az)
        e = torch.arange(n_el)
        da = (a[:, None] - a[None, :]).abs()
        near_az = torch.minimum(da, n_az - da) <= 1
        near_el = (e[:, None] - e[None, :]).abs() <= 1
        return (near_el[:, None, :, None] & near_az[None, :, None, :]).reshape(n_el * n_az, n_el * n_az)


def view_axes(angles: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) screen right, screen up and viewing direction of views ``angles`` (..., 2) =
    (azimuth, elevation) in degrees: the camera frame of ``backend.render.Camera.view``."""
    az, el = torch.deg2rad(angles[..., 0]), torch.deg2rad(angles[..., 1])
    zero = torch.zeros_like(az)
    right = torch.stack([torch.cos(az), torch.sin(az), zero], dim=-1)
    up = torch.stack([-torch.sin(az) * torch.sin(el), torch.cos(az) * torch.sin(el), torch.cos(el)], dim=-1)
    forward = torch.stack([-torch.sin(az) * torch.cos(el), torch.cos(az) * torch.cos(el), -torch.sin(el)], dim=-1)
    return torch.stack([right, up, forward], dim=-2)


def box_aligned(xy: torch.Tensor, resolution: int = RESOLUTION) -> torch.Tensor:
    """(B, N, 2) continuous (column, row) grid coordinates of screen points ``xy`` (B, N, 2) (x right, y up).

    Each set's 2D bounding box is fitted, aspect kept, into the grid: the longer
    side spans ``R - 2 PAD`` cells, centred. Differentiable.
    """
    lo, hi = torch.aminmax(xy, dim=1)
    extent = hi - lo
    inner = resolution - 2 * PAD
    scale = inner / extent.max(dim=1, keepdim=True).values.clamp_min(1e-9)  # (B, 1)
    offset = PAD + (inner - extent * scale) / 2
    flip = torch.tensor([1.0, -1.0], dtype=xy.dtype, device=xy.device)
    # column = (x - lo_x) s + offset_x, row = (hi_y - y) s + offset_y, as one multiply-add
    start = torch.stack([lo[:, 0], hi[:, 1]], dim=1) * flip
    return torch.addcmul((offset - start * scale).unsqueeze(1), xy, (scale * flip).unsqueeze(1))


_LOW_63 = 0x7FFFFFFFFFFFFFFF  # clears the bit an arithmetic right shift of an int64 copies in


def pack_rows(masks: torch.Tensor) -> torch.Tensor:
    """(..., R) int64: boolean ``masks`` (..., R, R), bit c of row r holding cell (r, c) (R at most 64).

    Masks this small dilate, erode and compare as whole rows of bits: shifts, ORs and a bit count instead of
    float max-pools over every cell.
    """
    r = masks.shape[-1]
    if r > 64:  # one int64 a row: wider rows would wrap silently
        raise ValueError(f"packed masks hold at most 64 cells a row, got {r}")
    weights = torch.ones(r, dtype=torch.int64, device=masks.device) << torch.arange(r, device=masks.device)
    return (masks.to(torch.int64) * weights).sum(-1)  # distinct bits: the sum is their OR


def unpack_rows(rows: torch.Tensor, resolution: int) -> torch.Tensor:
    """(..., R, R) bool: the inverse of ``pack_rows``."""
    return ((rows.unsqueeze(-1) >> torch.arange(resolution, device=rows.device)) & 1).bool()


def _inside(resolution: int) -> int:
    return -1 if resolution == 64 else (1 << resolution) - 1


def dilate_rows(rows: torch.Tensor, resolution: int) -> torch.Tensor:
    """(..., R) int64: the 3 x 3 dilation of packed masks ``rows`` (..., R) within the R x R grid."""
    wide = (rows | (rows << 1) | ((rows >> 1) & _LOW_63)) & _inside(resolution)
    out = wide.clone()
    out[..., 1:] |= wide[..., :-1]
    out[..., :-1] |= wide[..., 1:]
    return out


def erode_rows(rows: torch.Tensor, resolution: int) -> torch.Tensor:
    """(..., R) int64: the 3 x 3 erosion of packed masks ``rows``; cells beyond the grid count as set."""
    inside = _inside(resolution)
    return ~dilate_rows(~rows & inside, resolution) & inside


def count_cells(rows: torch.Tensor) -> torch.Tensor:
    """(...) int32: set cells of packed masks ``rows`` (..., R) int64."""
    return popcount(rows.contiguous().view(torch.uint8))


def splat(xy: torch.Tensor, resolution: int = RESOLUTION, packed: bool = False) -> torch.Tensor:
    """(B, R, R) bool silhouettes of screen points ``xy`` (B, N, 2), box-aligned; ``packed``: as (B, R) int64
    rows (``pack_rows``).

    Each sample sets its cell; a 3 x 3 closing fills the gaps between samples
    without growing the outline.
    """
    b = xy.shape[0]
    with torch.no_grad():
        cells = box_aligned(xy, resolution).floor_().clamp_(PAD, resolution - PAD - 1)
        flat = cells @ torch.tensor([1.0, resolution], dtype=cells.dtype, device=cells.device)
        index = flat.long() + (torch.arange(b, device=xy.device) * resolution * resolution).unsqueeze(1)
        out = torch.zeros(b * resolution * resolution, dtype=torch.bool, device=xy.device)
        out[index.reshape(-1)] = True
        rows = pack_rows(out.view(b, resolution, resolution))
        closed = erode_rows(dilate_rows(rows, resolution), resolution)
    return closed if packed else unpack_rows(closed, resolution)


def project(points: torch.Tensor, angles: torch.Tensor, fov: float = FOV) -> torch.Tensor:
    """(B, V, N, 2) screen coordinates (x right, y up) of ``points`` (B, N, 3) seen from every view ``angles``
    (V, 2), or from views of their own (B, V, 2); normalised frame (box diagonal 1, centred at 0).

    A perspective camera of vertical field of view ``fov`` degrees framing the
    bounding sphere as ``backend.render.Camera`` does (photos are not
    orthographic: at 40 degrees the near legs of a chair look visibly longer);
    ``fov=0`` projects orthographically. Only shape matters: ``box_aligned`` removes scale.
    """
    axes = view_axes(angles.to(torch.float64)).to(points)  # (V, 3, 3) or (B, V, 3, 3)
    cam = torch.einsum("bnc,vdc->bvnd" if axes.dim() == 3 else "bnc,bvdc->bvnd", points, axes)
    if fov <= 0:
        return cam[..., :2]
    distance = 1.05 * 0.5 / np.sin(np.radians(fov) / 2)  # bounding sphere of radius 1/2 fills the view
    return cam[..., :2] / (cam[..., 2:] + distance)


def silhouettes(
    points: torch.Tensor, angles: torch.Tensor, resolution: int = RESOLUTION, fov: float = FOV, packed: bool = False
) -> torch.Tensor:
    """(B, V, R, R) bool box-aligned silhouettes of ``points`` (B, N, 3) from views ``angles`` (V, 2) or
    (B, V, 2); ``packed``: (B, V, R) int64 rows (``pack_rows``)."""
    xy = project(points, angles, fov)
    b, v, n, _ = xy.shape
    masks = splat(xy.reshape(b * v, n, 2), resolution, packed)
    return masks.view(b, v, resolution) if packed else masks.view(b, v, resolution, resolution)


def box_render(
    points: torch.Tensor,
    boxes: torch.Tensor,
    part_mask: torch.Tensor,
    angles: torch.Tensor,
    resolution: int = EDGE_RESOLUTION,
    fov: float = FOV,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which part box, and which face of it, each cell of P candidates' views sees.

    ``boxes`` (P, K, 6) axis-aligned part boxes and ``points`` (P, N, 3) surface samples in one frame (the
    samples place the grid as ``silhouettes`` does: ``box_aligned`` of their projection), ``part_mask`` (P, K)
    the real parts, ``angles`` (P, 2) each candidate's view (degrees), the camera of ``project``. A ray through
    each cell's centre meets every box (slab test); the nearest entry wins. Rendering the boxes (what a fit
    deforms) rather than a z-buffer of the 2,048 samples: the samples leave holes for the parts behind to show
    through, which scatters false edges over every large panel (docs/images.md).

    Returns:
        part (P, R, R) long, -1 where no box is seen; face (P, R, R) long, axis * 2 + (1 if the face looks
        towards -axis), -1 where none.
    """
    p, r = len(points), resolution
    axes = view_axes(angles.to(torch.float64)).to(points)  # (P, 3, 3): right, up, forward
    xy = project(points, angles[:, None], fov)[:, 0]  # (P, N, 2)
    lo, hi = torch.aminmax(xy, dim=1)
    inner = r - 2 * PAD
    scale = inner / (hi - lo).max(dim=1, keepdim=True).values.clamp_min(1e-9)  # (P, 1) cells per screen unit
    offset = PAD + (inner - (hi - lo) * scale) / 2  # (P, 2), the inverse of ``box_aligned``
    centre = torch.arange(r, dtype=points.dtype, device=points.device) + 0.5
    col, row = (c.reshape(1, -1) for c in torch.meshgrid(centre, centre, indexing="xy"))  # (1, R*R)
    x = (col - offset[:, :1]) / scale + lo[:, :1]  # (P, R*R) screen coordinates of the cell centres
    y = hi[:, 1:] - (row - offset[:, 1:]) / scale
    distance = 1.05 * 0.5 / np.sin(np.radians(fov) / 2)  # as ``project``
    direction = x[..., None] * axes[:, None, 0] + y[..., None] * axes[:, None, 1] + axes[:, None, 2]  # (P, R*R, 3)
    origin = (-distance * axes[:, 2])[:, None, None]  # (P, 1, 1, 3)
    tiny = torch.full_like(direction, 1e-12)
    inverse = (1 / torch.where(direction.abs() < 1e-12, tiny, direction))[:, :, None]  # (P, R*R, 1, 3)
    low = (boxes[:, None, :, :3] - boxes[:, None, :, 3:] - origin) * inverse
    high = (boxes[:, None, :, :3] + boxes[:, None, :, 3:] - origin) * inverse
    entry, axis = torch.minimum(low, high).max(dim=-1)  # (P, R*R, K)
    hit = (entry <= torch.maximum(low, high).min(dim=-1).values) & part_mask[:, None]
    first, part = torch.where(hit, entry, torch.full_like(entry, float("inf"))).min(dim=-1)  # (P, R*R)
    seen = torch.isfinite(first)
    axis = torch.gather(axis, 2, part[..., None])[..., 0]
    side = (torch.gather(direction, 2, axis[..., None])[..., 0] > 0).long()  # a ray along +axis meets the -axis face
    part = torch.where(seen, part, -1).view(p, r, r)
    return part, torch.where(seen, axis * 2 + side, -1).view(p, r, r)


def box_edges(part: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
    """(P, R, R) bool interior edges of ``box_render``'s views: seen cells next to a seen cell of another part or
    another face (occlusions, contacts, creases), two cells in from the rendered outline (as ``image_edges``)."""
    key = part * 6 + face
    seen = part >= 0
    edges = torch.zeros_like(seen)
    edges[:, :-1] |= (key[:, :-1] != key[:, 1:]) & seen[:, :-1] & seen[:, 1:]
    edges[:, :, :-1] |= (key[:, :, :-1] != key[:, :, 1:]) & seen[:, :, :-1] & seen[:, :, 1:]
    return edges & inset(seen)


def iou(masks: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(...) IoU of boolean ``masks`` (..., R, R) with one ``target`` (R, R)."""
    flat = masks.flatten(-2).float()
    goal = target.flatten().float().to(flat)
    inter = flat @ goal
    return inter / (flat.sum(-1) + goal.sum() - inter).clamp_min(1.0)


def mask_distance(masks: torch.Tensor, target: torch.Tensor, steps: int = 4) -> torch.Tensor:
    """(...) symmetric chamfer between masks and one ``target`` (R, R) bool, in grid widths.

    ``masks``: (..., R, R) bool, or (..., R) int64 packed rows (``pack_rows``, as ``silhouettes(packed=True)``
    makes them). The mean chessboard distance from a mask's cells to the target plus the mean distance from the
    target's cells to the mask, each truncated at ``steps`` cells (a wrong shape counts as far off, whatever its
    distance; on the Blender renders 4, 8 and 16 ranked alike), divided by R. Unlike IoU it sees *where* the
    outlines differ: a leg one cell off costs little, a missing leg or a shelf where the image has a gap costs its
    distance, so thin structure (legs, rails, the gaps between shelves) counts for more than its few cells. A
    cell's distance is the number of dilations that do not yet reach it, so both terms are bit counts.
    """
    r = target.shape[-1]
    rows = masks if masks.dtype == torch.int64 else pack_rows(masks)
    goal = pack_rows(target.to(rows.device))
    outward = torch.zeros(rows.shape[:-1], dtype=torch.int32, device=rows.device)
    inward = torch.zeros_like(outward)
    grown_goal, grown = goal, rows
    for _ in range(steps):
        outward += count_cells(rows & ~grown_goal)
        inward += count_cells(goal & ~grown)
        grown_goal, grown = dilate_rows(grown_goal, r), dilate_rows(grown, r)
    area = count_cells(rows).clamp_min(1).float()
    return (outward.float() / area + inward.float() / count_cells(goal).clamp_min(1).float()) / r


# -- the library's silhouettes and the ranking ---------------------------------------------------


@dataclass
class SilhouetteRanking:
    """Every source scored against one image.

    Attributes:
        scores: (S,) agreement with the image (IoU at the source's best view near ``view``).
        views: (S,) index of each source's best view in the grid.
        table: (S, V) IoU of every source from every view.
        view: the view on which the best sources agree best (index into the grid).
        azimuth, elevation: that view, degrees.
        consensus: (V,) the mean IoU of the best sources from each view, plus the front half's bonus.
    """

    scores: torch.Tensor
    views: torch.Tensor
    table: torch.Tensor
    view: int
    azimuth: float
    elevation: float
    consensus: torch.Tensor

    def hypotheses(self, grid: ViewGrid, count: int = VIEW_HYPOTHESES, margin: float = HYPOTHESIS_MARGIN) -> list[int]:
        """Up to ``count`` views (grid indices), ``view`` first: the next best front-half views of ``consensus``
        more than one grid step from those chosen, within ``margin`` of the best."""
        front = grid.angles()[:, 0].abs() <= 90
        near = grid.neighbours()
        chosen = [self.view]
        for v in torch.argsort(self.consensus.cpu(), descending=True).tolist():
            if len(chosen) >= count or self.consensus[v] < self.consensus[self.view] - margin:
                break
            if front[v] and not near[v, chosen].any():
                chosen.append(v)
        return chosen

    def order(
        self,
        prior: torch.Tensor | None = None,
        prior_weight: float = 0.01,
        view: int | None = None,
        grid: ViewGrid | None = None,
    ) -> torch.Tensor:
        """(S,) source indices, best first. ``prior`` (S,) is a learned distance (lower is better); it
        enters standardised and weighted so it decides between near-equal silhouettes only. With ``view`` (and
        its ``grid``) each source scores its best IoU within one grid step of that view instead of ``view``'s."""
        score = self.scores.double()
        if view is not None and view != self.view:
            if grid is None:
                raise ValueError("ranking at another view needs that view's grid")
            near = grid.neighbours()[view].to(self.table.device)
            score = self.table[:, near].max(dim=1).values.double()
        if prior is not None and len(prior) > 1:
            p = prior.double().to(score.device)
            score = score - prior_weight * (p - p.mean()) / p.std().clamp_min(1e-12)
        return torch.argsort(score, descending=True)


def pack(masks: torch.Tensor) -> torch.Tensor:
    """(..., R*R/8) uint8: boolean ``masks`` (..., R, R) eight cells to a byte (R*R a multiple of 8)."""
    flat = masks.flatten(-2)
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=masks.device)
    return (flat.unflatten(-1, (-1, 8)).to(torch.uint8) * weights).sum(-1, dtype=torch.uint8)


def unpack(bits: torch.Tensor, resolution: int) -> torch.Tensor:
    """(..., R, R) bool: the inverse of ``pack``."""
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=bits.device)
    cells = (bits.unsqueeze(-1) >> shifts) & 1
    return cells.flatten(-2).unflatten(-1, (resolution, resolution)).bool()


_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int16)


def popcount(bits: torch.Tensor) -> torch.Tensor:
    """(...) number of set bits over the last axis of ``bits`` (..., B) uint8."""
    return _POPCOUNT.to(bits.device)[bits.long()].sum(-1, dtype=torch.int32)


class SilhouetteBank:
    """Box-aligned silhouettes of S sources from every view of a grid, bit-packed: ``bits`` (S, V, R*R/8) uint8.

    Built once per library from the sources' normalised surface samples (S x 9 kB at
    the default 32 x 32 and 72 views) by ``backend.silhouette_bank`` (numpy: the indexer
    builds it without torch), and kept in the index folder; ranking reads the packed bits
    (AND and a bit count), never a float copy of the bank.
    """

    def __init__(self, bits: torch.Tensor, grid: ViewGrid, resolution: int = RESOLUTION):
        self.bits = bits
        self.grid = grid
        self.resolution = resolution
        self.areas = popcount(bits).float()  # (S, V)

    @property
    def masks(self) -> torch.Tensor:
        """(S, V, R, R) bool, unpacked (for inspection)."""
        return unpack(self.bits, self.resolution)

    @classmethod
    def build(
        cls,
        points: torch.Tensor,
        grid: ViewGrid = ViewGrid(),
        resolution: int = RESOLUTION,
        max_points: int = bank_files.MAX_POINTS,
        progress: Progress | None = None,
    ) -> SilhouetteBank:
        """From ``points`` (S, N, 3) in each source's normalised frame (first ``max_points`` used: samples
        are in random order). ``progress(done, total, text)`` is called between chunks."""
        cloud = points[:, :max_points].detach().cpu().numpy()
        chunk = 256
        bits = [np.zeros((0, len(grid), resolution * resolution // 8), np.uint8)]
        for start in range(0, len(cloud), chunk):
            if progress is not None:
                progress(start, len(cloud), f"silhouettes of {start} of {len(cloud)} sources")
            block = cloud[start : start + chunk]
            bits.append(bank_files.bank_bits(block, grid.elevations, grid.azimuths, resolution))
        return cls(torch.from_numpy(np.concatenate(bits)).to(points.device), grid, resolution)

    @classmethod
    def cached(
        cls,
        points: torch.Tensor,
        folder: str | os.PathLike,
        grid: ViewGrid = ViewGrid(),
        resolution: int = RESOLUTION,
        max_points: int = bank_files.MAX_POINTS,
        progress: Progress | None = None,
        arrays: list[str] | None = None,
    ) -> SilhouetteBank:
        """The bank of ``points`` kept in ``folder`` (``backend.silhouette_bank``: the indexer writes it; named
        by the rows' sample digests and the settings, so the fitter finds it from its own samples). Rows a bank
        there already holds (same samples, same settings) are reused; only the others are built, and the file is
        rewritten atomically. ``arrays``: the rows' source files in the index (lets the next indexing run reuse
        rows without reading their sources)."""
        folder = Path(folder)
        settings = bank_files.settings_key(grid.elevations, grid.azimuths, resolution, max_points)
        digests = bank_files.point_digests(points[:, :max_points].detach().cpu().numpy(), max_points)
        path = folder / bank_files.bank_name(digests, settings)
        stored = bank_files.read_bank(path, settings, ("bits",)) if path.exists() else None
        shape = (len(points), len(grid), resolution * resolution // 8)
        if stored is not None and stored["bits"].shape == shape:
            return cls(torch.from_numpy(stored["bits"]).to(points.device), grid, resolution)
        old = bank_files.previous_rows(folder, settings)
        missing = [i for i, d in enumerate(digests) if str(d) not in old]
        bits = np.zeros(shape, np.uint8)
        for i, digest in enumerate(digests):
            if str(digest) in old:
                bits[i] = old[str(digest)][0]
        if missing:
            built = cls.build(points[missing], grid, resolution, max_points, progress)
            bits[missing] = built.bits.cpu().numpy()
        names = arrays if arrays is not None and len(arrays) == len(points) else [""] * len(points)
        try:
            bank_files.write_bank(folder, bits, digests, np.array(names, np.str_), settings)
        except OSError:  # a full or read-only index folder: this fit uses the bank it built, the next builds again
            pass
        return cls(torch.from_numpy(bits).to(points.device), grid, resolution)

    def __len__(self) -> int:
        return self.bits.shape[0]

    def rank(
        self, target: torch.Tensor, consensus: int = 5, front_prior: float = 0.02, chunk: int = 256
    ) -> SilhouetteRanking:
        """Score every source against ``target`` (R, R) bool (``mask_grid`` of the image's foreground).

        The image's view is the one where the ``consensus`` best sources reach the
        highest mean IoU, plus ``front_prior`` for views of the front half
        (|azimuth| <= 90: a boxy shape looks the same from behind, and product
        shots face the front); each source then scores its best IoU over the
        views within one grid step of it.
        """
        goal = pack(target.to(self.bits.device))
        s = len(self)
        inter = torch.cat(
            [popcount(self.bits[i : i + chunk] & goal).float() for i in range(0, s, chunk)]
            + [self.areas.new_zeros(0, len(self.grid))]
        )
        table = inter / (self.areas + float(target.sum()) - inter).clamp_min(1.0)
        angles = self.grid.angles()
        best = table.topk(min(consensus, s), dim=0).values.mean(0)  # (V,)
        best = best + front_prior * (angles[:, 0].abs() <= 90).to(best)
        view = int(best.argmax())
        near = self.grid.neighbours()[view].to(table.device)
        scores, local = table[:, near].max(dim=1)
        views = torch.nonzero(near).squeeze(1)[local]
        az, el = angles[view].tolist()
        return SilhouetteRanking(scores, views, table, view, az, el, best)


@dataclass
class Reranking:
    """The bank's ranking with its head re-ordered by ``mask_distance`` at a finer resolution.

    Attributes:
        order: (S,) every source, best first: the shortlists by mask distance, then the rest in the bank's order.
        distance: (L,) mask distance of the shortlists' sources (in ``order``'s order), grid widths, plus
            ``switch_margin`` for those whose best view is not near the consensus view.
        angles: (S, 2) each source's best view (azimuth, elevation), degrees, in ``order``'s order.
    """

    order: torch.Tensor
    distance: torch.Tensor
    angles: torch.Tensor


def rerank(
    ranking: SilhouetteRanking,
    points: torch.Tensor,
    mask: np.ndarray | torch.Tensor,
    grid: ViewGrid,
    shortlist: int = SHORTLIST,
    resolution: int = RERANK_RESOLUTION,
    prior: torch.Tensor | None = None,
    hypotheses: int = VIEW_HYPOTHESES,
    switch_margin: float = SWITCH_MARGIN,
) -> Reranking:
    """Re-order the ``shortlist`` best of ``ranking`` (IoU at the bank's 32 x 32, ``prior`` breaking near-ties)
    by the chamfer of their silhouettes to the image's ``mask`` (H, W) at ``resolution``, each from its best
    view within one grid step of the image's; with ``hypotheses`` > 1 the ``shortlist`` best around each of
    that many views of the IoU consensus (``SilhouetteRanking.hypotheses``) compete, a source counting its
    least distance, those of the other views ``switch_margin`` more.

    ``points`` (S, N, 3): every source's samples, normalised frame (all N are projected: at 48 x 48 the bank's
    1,024 leave holes). IoU at 32 x 32 finds the right kind of shape cheaply for every source, but between
    shapes of one kind it is decided by the bulk: on Blender renders of out-of-distribution furniture the
    closest 3D shape was in its top 20 for every target and its first for 5 of 15; the mask distance
    (``mask_distance``) sees legs, rails and the gaps between shelves (docs/images.md). The consensus of five
    sources' IoU can settle on a wrong view (a tripod table seen at -75 degrees for +21), which the finer
    distance then cannot undo: so it chooses among the views too.
    """
    base = ranking.order(prior)
    angles = grid.angles()
    goal = mask_grid(mask, resolution)
    heads, distances, views = [], [], []
    for k, view in enumerate(ranking.hypotheses(grid, hypotheses)):
        head = (base if k == 0 else ranking.order(prior, view=view, grid=grid))[:shortlist]
        near = torch.nonzero(grid.neighbours()[view]).squeeze(1)
        masks = silhouettes(points[head.to(points.device)], angles[near], resolution, packed=True)  # (L, V, R)
        distance, where = mask_distance(masks, goal).min(dim=1)
        heads.append(head)
        distances.append(distance.cpu().double() + (switch_margin if k else 0.0))
        views.append(angles[near][where.cpu()])
    head, distance, view = torch.cat(heads), torch.cat(distances), torch.cat(views)
    better = torch.argsort(distance, stable=True)  # the consensus view's shortlist first between equals
    rows = head[better]
    first = ~(rows[:, None] == rows[None, :]).tril(-1).any(dim=1)  # each source once, at its least distance
    better, rows = better[first], rows[first]
    rest = base[~torch.isin(base, rows)]
    order = torch.cat([rows, rest])
    best_angles = angles[ranking.views.cpu()[order.cpu()]]
    best_angles[: len(rows)] = view[better]
    return Reranking(order, distance[better].to(torch.float32), best_angles)


# -- proportions -----------------------------------------------------------------------------


def stretch_grid(steps: int = 5, high: float = 1.6) -> torch.Tensor:
    """(G, 3) per-axis scales to try: X and Y each over a log grid from ``1 / high`` to ``high`` (the source's
    own proportions in the middle), Z fixed at 1 (the alignment by box removes the overall size)."""
    values = torch.exp(torch.linspace(-np.log(high), np.log(high), steps, dtype=torch.float64))
    sx, sy = torch.meshgrid(values, values, indexing="ij")
    return torch.stack([sx.reshape(-1), sy.reshape(-1), torch.ones(sx.numel(), dtype=torch.float64)], dim=1)


def stretched_distance(
    points: torch.Tensor, stretches: torch.Tensor, angles: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """(P, G, A) ``mask_distance`` (on the CPU) to ``target`` (R, R) of ``points`` (P, N, 3) stretched by
    ``stretches`` (P, G, 3) per candidate and seen from each candidate's views ``angles`` (P, A, 2)."""
    p, n, _ = points.shape
    g = stretches.shape[1]
    stretched = (points[:, None] * stretches.to(points)[:, :, None]).reshape(p * g, n, 3)
    views = angles.repeat_interleave(g, dim=0)  # (P*G, A, 2)
    masks = silhouettes(stretched, views, target.shape[-1], packed=True)  # (P*G, A, R)
    return mask_distance(masks, target).view(p, g, angles.shape[1]).cpu()  # the search's bookkeeping is on the CPU


def fit_proportions(
    points: torch.Tensor,
    target: torch.Tensor,
    angles: torch.Tensor,
    stretches: torch.Tensor | None = None,
    azimuth_offsets: tuple[float, ...] = (-7.5, 0.0, 7.5),
    elevation_offsets: tuple[float, ...] = (-5.0, 0.0, 5.0),
    prior: float = 0.002,
    refinements: int = 2,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-axis scales of P candidates, and their views, so their silhouettes match the image's.

    Coarse to fine: every candidate (``points`` (P, N, 3), normalised frame) is stretched by each of
    ``stretches`` (G, 3) (default ``stretch_grid()``: X and Y against Z over 0.63-1.6) and seen from its view
    ``angles`` (P, 2) (azimuth, elevation; degrees); then ``refinements`` times around its best stretch, at half
    the previous step, from its view turned by every pair of ``azimuth_offsets`` and ``elevation_offsets``
    (halved at each level too: the width/depth ratio and the azimuth explain the same outline, so they are chosen
    together). The least ``mask_distance`` to ``target`` (R, R) wins, plus ``prior`` times the squared log
    stretch (a shape's own proportions win between near-equal outlines). On the Blender renders of
    docs/images.md, two refinements and ``prior`` 0.002 beat one refinement, three, 0.005 and 0, a wider or a
    narrower grid and larger view offsets.

    Returns:
        scales (P, 3) with a unit geometric mean, mask distance (P,) and the refined views (P, 2) in degrees.
    """
    stretches = (stretch_grid() if stretches is None else stretches).to(torch.float64)
    p = len(points)
    angles = angles.to(torch.float64).reshape(p, 2)

    def penalised(score: torch.Tensor, tried: torch.Tensor) -> torch.Tensor:  # (P, G, A), (P, G, 3)
        return score + prior * torch.log(tried).square().sum(-1).to(score).unsqueeze(-1)

    tried = stretches.expand(p, -1, -1)
    rows = torch.arange(p)
    coarse = stretched_distance(points, tried, angles[:, None], target)[..., 0]
    first = penalised(coarse[..., None], tried)[..., 0].argmin(dim=1)
    best, distance = tried[rows, first], coarse[rows, first]  # (P, 3), (P,)
    logs = torch.log(stretches[:, :2])
    steps = [torch.diff(c.unique()).min() if len(c.unique()) > 1 else c.new_zeros(()) for c in logs.T]
    offsets = torch.tensor([[a, e] for a in azimuth_offsets for e in elevation_offsets], dtype=torch.float64)
    view = angles
    for level in range(1, refinements + 1):  # each level halves the stretch step and the view's turn
        local = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64) * 0.5**level
        dx, dy = torch.meshgrid(local * steps[0], local * steps[1], indexing="ij")
        factor = torch.stack([dx.reshape(-1), dy.reshape(-1), torch.zeros(dx.numel(), dtype=torch.float64)], 1)
        tried = best[:, None] * factor.exp()[None]  # (P, 9, 3)
        views = view[:, None] + offsets[None] * 0.5 ** (level - 1)  # (P, A, 2)
        score = stretched_distance(points, tried, views, target)
        choice = penalised(score, tried).flatten(1).argmin(dim=1)
        which, where = choice // len(offsets), choice % len(offsets)
        best, view, distance = tried[rows, which], views[rows, where], score[rows, which, where]
    scales = best.to(points)
    scales = scales / scales.prod(dim=1, keepdim=True).pow(1 / 3)
    return scales, distance, view.to(points)


def scale_boxes(boxes: torch.Tensor, part_mask: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """(P, K, 6) ``boxes`` (normalised frame) stretched per axis by ``scales`` (P, 3) about the origin and
    renormalised: the union of the real parts (``part_mask`` (P, K)) centred at 0 with diagonal 1.

    Stretching the whole shape keeps every contact, so the result stays in the connectivity subspace.
    """
    centre, half = boxes[..., :3] * scales[:, None], boxes[..., 3:] * scales[:, None]
    big = torch.finfo(boxes.dtype).max
    real = part_mask.unsqueeze(-1)
    lo = torch.where(real, centre - half, torch.full_like(centre, big)).min(dim=1).values
    hi = torch.where(real, centre + half, torch.full_like(centre, -big)).max(dim=1).values
    middle, diagonal = (lo + hi) / 2, (hi - lo).norm(dim=-1).clamp_min(1e-9)
    out = torch.cat([(centre - middle[:, None]) / diagonal[:, None, None], half / diagonal[:, None, None]], dim=-1)
    return torch.where(real, out, boxes)


# -- one image against a library ---------------------------------------------------------------


def image_view(azimuth: float, elevation: float, fov: float = FOV) -> dict:
    """``FitResult.view`` of an image seen from ``(azimuth, elevation)`` (degrees, this module's convention) in
    the source's own frame (Z up, front -Y): the unit direction from the object towards the camera, its
    azimuth ``atan2(y, x)`` and elevation, the assumed vertical field of view, ``estimated`` True."""
    az, el = np.radians(azimuth), np.radians(elevation)
    return view_record([np.sin(az) * np.cos(el), -np.cos(az) * np.cos(el), np.sin(el)], True, fov)


@dataclass
class ImageMatch:
    """The best sources for one image, stretched to its proportions.

    Attributes:
        order: (P,) source rows, best first.
        scores: (P,) mask distance of each stretched candidate (grid widths; lower is better).
        scales: (P, 3) per-axis stretch of each candidate (unit geometric mean).
        boxes: (P, K, 6) the candidates' boxes stretched, normalised frame.
        views: (P, 2) each candidate's view (azimuth, elevation), degrees.
        azimuth, elevation: the image's estimated view (the best candidate's), degrees.
        ranking: the library-wide ranking it came from (IoU at the bank's resolution).
    """

    order: torch.Tensor
    scores: torch.Tensor
    scales: torch.Tensor
    boxes: torch.Tensor
    views: torch.Tensor
    azimuth: float
    elevation: float
    ranking: SilhouetteRanking

    @property
    def view(self) -> dict:
        """The estimated camera as ``FitResult.view`` (``image_view``)."""
        return image_view(self.azimuth, self.elevation)


def edge_distance(
    image, mask: np.ndarray, points: torch.Tensor, boxes: torch.Tensor, part_mask: torch.Tensor, angles: torch.Tensor
) -> torch.Tensor:
    """(P,) how far the interior edges of P stretched candidates, seen from their views, are from the image's:
    ``mask_distance`` (truncated at ``EDGE_STEPS`` cells) between ``box_edges`` of their ``box_render`` and
    ``image_edges``, at ``EDGE_RESOLUTION``. ``points`` (P, N, 3) and ``boxes`` (P, K, 6) in one frame,
    ``part_mask`` (P, K), ``angles`` (P, 2) degrees."""
    part, face = box_render(points, boxes, part_mask, angles)
    return mask_distance(box_edges(part, face), image_edges(image, mask), EDGE_STEPS)


def match_image(
    image,
    sources,
    bank: SilhouetteBank,
    top_k: int = 5,
    prior: torch.Tensor | None = None,
    mask: np.ndarray | None = None,
    shortlist: int = SHORTLIST,
    hypotheses: int = VIEW_HYPOTHESES,
    switch_margin: float = SWITCH_MARGIN,
    edge_weight: float = EDGE_WEIGHT,
    edge_choice: int = EDGE_CHOICE,
    edge_margin: float = EDGE_MARGIN,
) -> ImageMatch:
    """Rank every source of ``sources`` (``SourceTensors``, the rows of ``bank``) against ``image``.

    The foreground comes first (``foreground_mask``, unless the caller passes its
    ``mask``: a clear ``ValueError`` before any work when there is none); the bank ranks every source by IoU,
    ``prior`` (S,) (a learned distance) breaking near-ties; its ``shortlist`` best are re-ordered by mask
    distance at 48 x 48 (``rerank``) and the best ``max(top_k, edge_choice)`` stretched to the image's proportions
    (``fit_proportions``, 64 x 64), which also refines each one's view. The first ``edge_choice`` are then
    ordered by their stretched mask distance plus ``edge_weight`` times the distance of their interior edges to
    the image's (``edge_distance``), all but the re-ranked first charged ``edge_margin`` more (the re-ranking saw
    the outline around several views; a near-tie keeps its choice): the outline cannot tell an open bookshelf
    from a closed cabinet or a desk with drawers from one without, the lines inside it can. ``edge_weight`` 0
    keeps the re-ranked order (by the stretched outline alone a stretched wrong shape overtakes the right one), as
    does a ``mask`` given without an ``image`` (``image`` None).
    """
    mask = foreground_mask(image) if mask is None else mask
    ranking = bank.rank(mask_grid(mask, bank.resolution).to(bank.bits.device))
    reranked = rerank(
        ranking,
        sources.points,
        mask,
        bank.grid,
        shortlist,
        prior=prior,
        hypotheses=hypotheses,
        switch_margin=switch_margin,
    )
    by_edges = edge_weight > 0 and image is not None  # a mask alone has no inside to compare
    order = reranked.order[: max(top_k, edge_choice) if by_edges else top_k]
    count = len(order)  # a library smaller than the choice gives every source once
    chosen = sources.select(order.to(sources.points.device))
    target = mask_grid(mask, PROPORTION_RESOLUTION)
    scales, scores, views = fit_proportions(chosen.points, target, reranked.angles[:count])
    if by_edges:
        head = min(edge_choice, count)
        stretch = scales[:head, None]
        boxes = torch.cat([chosen.boxes[:head, :, :3] * stretch, chosen.boxes[:head, :, 3:] * stretch], dim=-1)
        edges = edge_distance(image, mask, chosen.points[:head] * stretch, boxes, chosen.part_mask[:head], views[:head])
        choice = scores[:head].double() + edge_weight * edges.cpu().double()
        choice[1:] += edge_margin
        better = torch.argsort(choice, stable=True)
        keep = torch.cat([better, torch.arange(head, count)])[:top_k]
        order, scales, scores, views, chosen = order[keep], scales[keep], scores[keep], views[keep], chosen.select(keep)
    boxes = scale_boxes(chosen.boxes, chosen.part_mask, scales)
    azimuth, elevation = views[0].tolist()
    return ImageMatch(order, scores, scales, boxes, views, azimuth, elevation, ranking)
