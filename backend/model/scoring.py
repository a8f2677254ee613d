"""How well deformed sources fit their targets: the chamfer objectives of ranking, refinement and measurement.

Chamfer values are ``backend.model.geometry.chamfer_distance`` (squared distances, mean per direction, summed) in
the target's normalised frame; for a single-view scan only the source surface that faces the scanner is pulled
toward the scan (``partial_chamfer``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from backend.model.geometry import chamfer_distance, nearest_neighbours, sampling_floor
from backend.model.networks import deformed_points
from backend.model.sources import SourceTensors
from backend.model.viewpoint import visible_from

# Points of each source and target a placement is ranked on (``coarse_chamfer``).
RANK_POINTS = 256
# Source samples a full cloud's candidates are measured on: the measure's bias (a target point's distance to the
# nearest of N samples of a candidate's surface, about its area / N) differs between candidates and decides near
# ties; all 2,048 samples of the index halve it (bench/ood.py full clouds, target seeds 1 / 2 / 3, ratio of means to
# the per-axis box oracle, 256 / 512 refinement: 0.531 / 0.776 / 0.410 -> 0.530 / 0.761 / 0.393). Taking off the
# samples' own ``sampling_floor`` (``MEASURE_DEBIAS``), with the finer refinement and polish of
# ``backend.model.inference`` (``REFINE_POINTS``, ``REFINE_POLISH_POINTS``): 0.497 / 0.714 / 0.381 -> 0.493 / 0.710 /
# 0.365 (8 of 45 targets better, 3 worse by at most 0.0008 chamfer x10^-2). The leader of a candidate's two starts
# is picked on ``LEADER_POINTS``; a scan is measured on ``SCAN_MEASURE_POINTS``, its objective's counts.
MEASURE_POINTS = 2048
LEADER_POINTS = 1024
SCAN_MEASURE_POINTS = 1024
MEASURE_DEBIAS = True


def coarse_chamfer(
    sources: SourceTensors,
    boxes: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor | None = None,
    viewpoint: torch.Tensor | None = None,
    n_points: int = RANK_POINTS,
    batch: int = 512,
    progress: Callable[[int, int, str], None] | None = None,
) -> torch.Tensor:
    """Chamfer of many deformed sources to their targets on ``n_points`` points of each.

    Sources' samples are in random order, so their first points are a uniform subset; so are the
    first points of a target cleaned by ``backend.fitting.clean_points``.

    Args:
        sources: P sources (one per pair); boxes: (P, K, 6) their boxes.
        targets: (P, M, 3) the target of each pair (an expanded view costs nothing).
        weights: optional (P,) factors (a common unit when targets differ in normalisation).
        viewpoint: (3,) towards the scanner of a single-view scan (``partial_chamfer``), or None.
        batch: pairs per batch (memory: batch x n_points^2 floats).
        progress: called ``progress(done, total, text)`` after each batch.

    Returns:
        (P,) chamfer distances.
    """
    out = []
    total = len(boxes)
    for start in range(0, total, batch):
        rows = slice(start, min(start + batch, total))
        chosen = SourceTensors(*(getattr(sources, f)[rows] for f in SourceTensors.__dataclass_fields__)).first_points(
            n_points
        )
        out.append(partial_chamfer(chosen, boxes[rows], targets[rows, :n_points], viewpoint))
        if progress is not None:
            progress(rows.stop, total, f"ranking {rows.stop} of {total} placements")
    distance = torch.cat(out)
    return distance if weights is None else distance * weights


def partial_chamfer(
    sources: SourceTensors, boxes: torch.Tensor, targets: torch.Tensor, viewpoint: torch.Tensor | None
) -> torch.Tensor:
    """Chamfer for a target that may be a single-view scan, differentiable in ``boxes``.

    Every target point is pulled to the source surface; from the source side only the points a
    viewer at ``viewpoint`` would see are pulled to the target (all of them when ``viewpoint``
    is None: ``chamfer_distance``), so a one-sided scan does not squash the source into its
    visible half.

    Args:
        sources: P sources; boxes: (P, K, 6); targets: (P, M, 3); viewpoint: (3,) or None.

    Returns:
        (P,) distances.
    """
    points = deformed_points(sources, boxes)
    if viewpoint is None:
        return chamfer_distance(points, targets)
    with torch.no_grad():
        grid = max(8, int(math.sqrt(points.shape[1] / 4)))
        seen = visible_from(points, viewpoint.expand(len(points), 3), grid=grid, tolerance=0.04).float()
    nearest_source, nearest_target = nearest_neighbours(targets, points), nearest_neighbours(points, targets)
    matched_source = torch.gather(points, 1, nearest_source.unsqueeze(-1).expand(-1, -1, 3))
    matched_target = torch.gather(targets, 1, nearest_target.unsqueeze(-1).expand(-1, -1, 3))
    to_source = (targets - matched_source).square().sum(-1).mean(1)
    to_target = ((points - matched_target).square().sum(-1) * seen).sum(1) / seen.sum(1).clamp_min(1)
    return to_source + to_target


def measured_chamfer(
    sources: SourceTensors,
    boxes: torch.Tensor,
    targets: torch.Tensor,
    viewpoint: torch.Tensor | None = None,
    n_points: int = MEASURE_POINTS,
) -> torch.Tensor:
    """(P,) final fit of P deformed sources to (P, M, 3) targets on ``n_points`` source samples
    (``partial_chamfer``: one-sided from the source for a scan). For a full cloud the source samples' own
    ``sampling_floor`` is taken off (``MEASURE_DEBIAS``): candidates of different areas, or a candidate before and
    after refinement, are then compared on their shapes rather than on how densely their samples cover them."""
    chosen = sources.first_points(n_points)
    if viewpoint is not None:
        return partial_chamfer(chosen, boxes, targets, viewpoint)
    points = deformed_points(chosen, boxes)
    value = chamfer_distance(points, targets)
    return (value - sampling_floor(points)).clamp_min(0) if MEASURE_DEBIAS else value  # a chamfer is not negative
