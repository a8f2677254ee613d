"""Per-axis placement of sources on a target's box, and the coarse ranking of those placements.

A per-axis scaling of a whole source keeps every joint attached, so it lies in every source's connectivity
subspace: the cheap geometric start of every fit (``backend.model.inference.fit_cloud``). Frames and units as in
``backend.model.inference``: normalised frames (box centre 0, diagonal 1), boxes ``[centre, half_size]`` (..., K, 6).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from backend.model.plausibility import IMPLAUSIBLE_FACTOR
from backend.model.scoring import RANK_POINTS, coarse_chamfer
from backend.model.sources import SourceTensors

# How steeply the ranking charges a placement beyond IMPLAUSIBLE_FACTOR (``proportion_charge``): at 5x a placement's
# coarse chamfer counts 7.7 times.
RANK_PROPORTION_POWER = 4


def source_extent(sources: SourceTensors) -> torch.Tensor:
    """(S, 3) size of the union of each source's real part boxes, normalised units (diagonal 1)."""
    mask = sources.part_mask.unsqueeze(-1)
    centre, half = sources.boxes[..., :3], sources.boxes[..., 3:]
    lo = torch.where(mask, centre - half, torch.full_like(centre, float("inf"))).min(dim=1).values
    hi = torch.where(mask, centre + half, torch.full_like(centre, float("-inf"))).max(dim=1).values
    return hi - lo


def target_extent(points: torch.Tensor) -> torch.Tensor:
    """(B, 3) box size of (B, N, 3) targets."""
    return points.max(dim=1).values - points.min(dim=1).values


def box_placement(sources: SourceTensors, extent: torch.Tensor, floor: float = 1e-3) -> torch.Tensor:
    """Each source scaled per axis so its box matches a target box of size ``extent``.

    Both are centred at 0 in their normalised frames, so the placement is a per-axis scaling of
    centres and half-sizes about the origin (padded parts keep their boxes).

    Args:
        sources: S sources.
        extent: (S, 3) or (3,) target box sizes, normalised units; an axis thinner than
            ``floor`` is treated as ``floor`` (a flat scan does not flatten the source).

    Returns:
        (S, K, 6) boxes in the target's normalised frame.
    """
    scale = extent.clamp_min(floor).expand(len(sources), 3) / source_extent(sources).clamp_min(1e-6)
    factor = torch.cat([scale, scale], dim=-1).unsqueeze(1)
    placed = sources.boxes * factor
    return torch.where(sources.part_mask.unsqueeze(-1), placed, sources.boxes)


def placement_factor(
    sources: SourceTensors, extent: torch.Tensor, floor: float = 1e-3, lower_bound: bool = False
) -> torch.Tensor:
    """(S,) the largest per-axis factor (>= 1, growing or shrinking) by which ``box_placement`` scales each source's
    parts, relative to the shapes' diagonals: what ``part_scale_factors`` reports for every part of that placement
    (a uniform scaling gives 1; a source turned a quarter so its depth has to fill the target's width gives its
    width-to-depth ratio or more).

    Args:
        sources: S sources; extent: (S, 3) or (3,) target box sizes, normalised units (as ``box_placement``).
        lower_bound: the extent may fall short of the true one (a single-view scan: seen from the front at eye
            level, a wardrobe is as deep as its doors), so only growth counts; shrinking to it is no evidence.
    """
    ratio = extent.clamp_min(floor).expand(len(sources), 3) / source_extent(sources).clamp_min(1e-6)
    if lower_bound:
        return ratio.max(dim=-1).values.clamp_min(1.0)
    return torch.maximum(ratio, 1 / ratio).max(dim=-1).values


def proportion_charge(sources: SourceTensors, extent: torch.Tensor, lower_bound: bool = False) -> torch.Tensor:
    """(S,) factor (>= 1) on each placement's coarse chamfer in the ranking: 1 up to ``IMPLAUSIBLE_FACTOR``, then
    ``(placement_factor / IMPLAUSIBLE_FACTOR) ** RANK_PROPORTION_POWER``. It decides which sources enter a fit's
    pool and at which heading (issue 14 item 8): a placement that stretches a source's parts beyond 3x enters only
    where no source of plausible proportions fits nearly as well; the pool is then ordered by measured fits.

    Args:
        sources: S sources; extent: (S, 3) or (3,) target box sizes, normalised units; lower_bound: as
            ``placement_factor`` (scans).
    """
    factor = placement_factor(sources, extent, lower_bound=lower_bound)
    return (factor / IMPLAUSIBLE_FACTOR).clamp_min(1.0) ** RANK_PROPORTION_POWER


def placement_scores(
    sources: SourceTensors,
    extent: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor | None = None,
    viewpoint: torch.Tensor | None = None,
    n_points: int = RANK_POINTS,
    progress: Callable[[int, int, str], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """How a fit ranks sources: each placed per axis on a target box (``box_placement``), scored by its
    ``coarse_chamfer`` times its ``proportion_charge`` (for a scan, given ``viewpoint``, only growth is charged:
    its box may be short along the view). The one home of that score: ``fit_cloud``'s ranking,
    training's pairs (``training.joint.train.placement_candidates``) and the evaluation's ranking
    (``training.evaluate.evaluate_pipeline``) all call it, so they rank alike.

    Args:
        sources: S sources; extent: (S, 3) or (3,) target box sizes, normalised units.
        targets: (S, M, 3) the target of each source (an expanded view costs nothing).
        weights, viewpoint, n_points, progress: as ``coarse_chamfer``.

    Returns:
        (S,) the placements' coarse chamfer and (S,) their ranking score (lower ranks first).
    """
    placed = box_placement(sources, extent)
    chamfer = coarse_chamfer(sources, placed, targets, weights, viewpoint, n_points, progress=progress)
    return chamfer, chamfer * proportion_charge(sources, extent, lower_bound=viewpoint is not None)


def candidate_headings(points: torch.Tensor, steps: int = 90) -> torch.Tensor:
    """Yaws (radians, about +Z) to try for an (N, 3) cloud whose heading is unknown.

    Library models stand axis-aligned; a turned target is axis-aligned again after turning it by
    ``-yaw`` for the right ``yaw``. The footprint's minimum-area bounding rectangle gives that angle
    modulo 90 degrees; it is tried with its four quarter turns, beside the four quarter turns of the
    cloud's own heading (yaw 0). Angles closer than 3 degrees are merged. (Footprints without a
    clear rectangle are left to ``fit_cloud``'s ring of headings.)

    Returns:
        (H,) yaws in [0, 2 pi), H at most 8, yaw 0 first.
    """
    xy = points[:, :2] - points[:, :2].mean(dim=0)
    angles = torch.arange(steps, dtype=xy.dtype, device=xy.device) * (math.pi / 2 / steps)
    c, s = torch.cos(angles), torch.sin(angles)
    # Coordinates after turning by -angle: u = x c + y s, v = -x s + y c.
    u = xy[:, 0:1] * c + xy[:, 1:2] * s
    v = -xy[:, 0:1] * s + xy[:, 1:2] * c
    area = (u.max(0).values - u.min(0).values) * (v.max(0).values - v.min(0).values)
    rectangle = float(angles[area.argmin()])
    out: list[float] = []
    for base in (0.0, rectangle):
        for turn in range(4):
            yaw = (base + turn * math.pi / 2) % (2 * math.pi)
            gap = [abs((yaw - y + math.pi) % (2 * math.pi) - math.pi) for y in out]
            if all(g > math.radians(3) for g in gap):
                out.append(yaw)
    return torch.tensor(out, dtype=points.dtype)


def turn_about_z(points: torch.Tensor, yaws: torch.Tensor, pivot: torch.Tensor) -> torch.Tensor:
    """(H, N, 3) copies of (N, 3) ``points`` turned by ``-yaws`` (H,) about the vertical through ``pivot`` (3,)."""
    c, s = torch.cos(-yaws), torch.sin(-yaws)
    rel = points - pivot
    x = c.unsqueeze(1) * rel[:, 0] - s.unsqueeze(1) * rel[:, 1]
    y = s.unsqueeze(1) * rel[:, 0] + c.unsqueeze(1) * rel[:, 1]
    return torch.stack([x, y, rel[:, 2].expand_as(x)], dim=-1) + pivot


def turn_directions(direction: torch.Tensor, yaws: torch.Tensor) -> torch.Tensor:
    """(H, 3) a direction (3,) turned by ``-yaws`` (H,) about Z."""
    pivot = torch.zeros(3, dtype=direction.dtype, device=direction.device)
    return turn_about_z(direction.unsqueeze(0), yaws.to(direction.device), pivot).squeeze(1)
