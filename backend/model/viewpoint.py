"""Is a point cloud a single-view scan, and from where? (pure tensors, batched)

A scan records only what its scanner sees. So each hypothesis "seen from ``d``" predicts an observation of a
fitted source: the source's samples a viewer along ``-d`` sees (``visible_from``); the hypothesis "seen
from all around" predicts all of them. The hypothesis whose predicted observation is nearest the cloud in chamfer
wins. The scores are comparable across hypotheses (the same two-way chamfer, only the source subset differs): a
full cloud has points on the far side of every ``d``, which no visible subset explains, so it keeps the full
hypothesis; a scan has none there, so the full hypothesis pays for the source's unseen far side.

Frames: points and directions in a target's normalised frame (box centre 0, diagonal 1, Z up); directions are
unit vectors from the object towards the scanner.
"""

from __future__ import annotations

import math

import torch

from backend.model.geometry import squared_distances

# Hypotheses: a ring of azimuths at a few elevations (scans from below the object are not considered).
AZIMUTHS = 24
ELEVATIONS_DEG = (0.0, 15.0, 30.0, 45.0, 60.0)
VISIBILITY_GRID = 24  # z-buffer cells across the image plane for ``EVIDENCE_POINTS`` source samples
VISIBILITY_TOLERANCE = 0.04  # normalised units behind the nearest point of a cell that still count as seen
EVIDENCE_POINTS = 2048  # source samples per fitted source
EVIDENCE_TARGET_POINTS = 512
# A scan hypothesis must explain the cloud this many times better than the full one. Measured (tests, bench/ood.py):
# full clouds of the OOD set and of generated shapes against a 9-source library score up to 1.25, while the scans
# that gain most from the scan objective (closed, boxy pieces) score 1.3 to 10; open structures (thin boards, legs)
# score 0.6 to 1.3 either way, and for them the two objectives differ least.
SCAN_MARGIN = 1.3
NEIGHBOURS = 64  # a target point's nearest visible source sample is looked for among this many nearest samples


def visible_from(
    points: torch.Tensor, direction: torch.Tensor, grid: int = 40, tolerance: float = 0.02
) -> torch.Tensor:
    """(B, N) mask of points a viewer looking along ``-direction`` sees.

    A point z-buffer: points are binned on a ``grid`` x ``grid`` image plane
    and kept when within ``tolerance`` (normalised units) of the nearest
    point of their cell, which is what a single scan of the shape records.

    Args:
        points: (B, N, 3) in a normalised frame.
        direction: (B, 3) unit vectors from the shape towards the viewer.
    """
    up = torch.tensor([0.0, 0.0, 1.0], dtype=points.dtype, device=points.device).expand_as(direction)
    right = torch.nn.functional.normalize(torch.cross(up, direction, dim=-1), dim=-1)
    true_up = torch.cross(direction, right, dim=-1)
    u = (points * right.unsqueeze(1)).sum(-1)
    v = (points * true_up.unsqueeze(1)).sum(-1)
    depth = -(points * direction.unsqueeze(1)).sum(-1)
    cell_u = ((u + 0.75) / 1.5 * grid).long().clamp(0, grid - 1)
    cell_v = ((v + 0.75) / 1.5 * grid).long().clamp(0, grid - 1)
    cell = cell_u * grid + cell_v
    nearest = torch.full((points.shape[0], grid * grid), float("inf"), dtype=points.dtype, device=points.device)
    nearest = nearest.scatter_reduce(1, cell, depth, reduce="amin")
    return depth <= torch.gather(nearest, 1, cell) + tolerance


def view_directions(
    azimuths: int = AZIMUTHS, elevations_deg: tuple[float, ...] = ELEVATIONS_DEG, dtype=torch.float32
) -> torch.Tensor:
    """(V, 3) unit directions towards a scanner: ``azimuths`` even azimuths (from +X towards +Y) at each elevation."""
    az = torch.arange(azimuths, dtype=torch.float64) * (2 * math.pi / azimuths)
    el = torch.tensor(elevations_deg, dtype=torch.float64).deg2rad()
    az, el = az.repeat(len(el)), el.repeat_interleave(azimuths)
    return torch.stack([az.cos() * el.cos(), az.sin() * el.cos(), el.sin()], dim=-1).to(dtype)


def hypothesis_scores(
    points: torch.Tensor,
    targets: torch.Tensor,
    directions: torch.Tensor,
    grid: int = VISIBILITY_GRID,
    tolerance: float = VISIBILITY_TOLERANCE,
    neighbours: int = NEIGHBOURS,
) -> torch.Tensor:
    """How well each hypothesis explains each target: chamfer between the target and the source samples that
    hypothesis would observe.

    Args:
        points: (P, N, 3) fitted (or placed) source samples; targets: (P, M, 3) the clouds they were fitted to.
        directions: (P, V, 3) scan directions to test, in each pair's frame.

    Returns:
        (P, 1 + V) chamfer (squared distances, mean per direction, summed); column 0 is the full-cloud hypothesis
        (every sample observed), column ``1 + v`` the scan from ``directions[:, v]``. A target point whose
        ``neighbours`` nearest samples are all unseen counts the farthest of them (a lower bound: cheap, and the
        full hypothesis is measured the same way).
    """
    n_pairs, n_views = directions.shape[:2]
    seen = visible_from(
        points.repeat_interleave(n_views, dim=0), directions.reshape(-1, 3), grid=grid, tolerance=tolerance
    ).view(n_pairs, n_views, -1)
    seen = torch.cat([torch.ones_like(seen[:, :1]), seen], dim=1)  # (P, 1 + V, N)
    squared = squared_distances(targets, points).clamp_min(0)  # (P, M, N)
    near, which = squared.topk(min(neighbours, points.shape[1]), dim=2, largest=False)  # (P, M, k)
    near_seen = torch.gather(
        seen.unsqueeze(2).expand(-1, -1, targets.shape[1], -1), 3, which.unsqueeze(1).expand(-1, 1 + n_views, -1, -1)
    )
    farthest = near[..., -1:].unsqueeze(1)
    to_source = torch.where(near_seen, near.unsqueeze(1), farthest).min(dim=3).values.mean(dim=2)
    nearest = squared_distances(points, targets).clamp_min(0).min(dim=2).values  # (P, N); not squared.min(dim=1): slow
    to_target = (nearest.unsqueeze(1) * seen).sum(2) / seen.sum(2).clamp_min(1)
    return to_source + to_target


def choose_viewpoint(scores: torch.Tensor, margin: float = SCAN_MARGIN) -> tuple[int, torch.Tensor]:
    """The winning hypothesis of (P, 1 + V) ``hypothesis_scores`` summed over the P fits (all about one cloud): the
    best scan hypothesis when it beats the full one by ``margin`` (the best of V hypotheses is favoured by
    selection alone), else the full one.

    Returns:
        (index into the hypotheses, 0 for a full cloud; (1 + V,) the summed scores).
    """
    total = scores.sum(dim=0)
    best = 1 + int(total[1:].argmin())
    return (best if float(total[0]) > margin * float(total[best]) else 0), total
