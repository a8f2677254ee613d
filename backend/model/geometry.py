"""Batched, differentiable geometry of part deformations (torch).

Shapes are handled in a *normalised frame*: centred at the centre of their
bounding box and scaled so the box diagonal is 1. Chamfer distances are
reported in that frame.
"""

from __future__ import annotations

import torch

PARAMS = 6


def normalisation(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre (..., 3) and scale (...) that map ``points`` (..., N, 3) to the normalised frame.

    ``(points - centre) / scale`` has its bounding box centred at 0 with diagonal 1.
    """
    lo, hi = points.min(dim=-2).values, points.max(dim=-2).values
    return (lo + hi) / 2, (hi - lo).norm(dim=-1).clamp_min(1e-9)


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, N, M) squared Euclidean distances between (B, N, 3) ``a`` and (B, M, 3) ``b`` (one matrix product of
    augmented points, ``|a|^2 - 2 a.b + |b|^2``; not for autograd: callers find neighbours with it)."""
    ones_a, ones_b = a.new_ones(a.shape[:-1] + (1,)), b.new_ones(b.shape[:-1] + (1,))
    left = torch.cat([-2 * a, a.square().sum(-1, keepdim=True), ones_a], dim=-1)
    right = torch.cat([b, ones_b, b.square().sum(-1, keepdim=True)], dim=-1)
    return torch.bmm(left, right.transpose(1, 2))


def nearest_neighbours(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, N) long: for each point of (B, N, 3) ``a`` the index of its nearest point in (B, M, 3) ``b``.

    A reduction along the last axis: on the CPU ``min(dim=1)`` of a (B, M, N) matrix is 10x slower than
    ``min(dim=2)`` of its own product (and ``argmin`` 3x slower than ``min``), so each direction of a chamfer
    takes its own product."""
    with torch.no_grad():
        return squared_distances(a, b).min(dim=2).indices


def chamfer_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Symmetric chamfer distance between point sets.

    Squared Euclidean distances, averaged over the points of each set and
    summed over both directions: ``mean_a min_b |a-b|^2 + mean_b min_a |a-b|^2``.

    Args:
        a: (B, N, 3).
        b: (B, M, 3).

    Returns:
        (B,) distances (squared units of the input).
    """
    # Nearest neighbours are found without autograd; the distances to them
    # are then recomputed differentiably. Same value and gradient as
    # differentiating through the min, without a (B, N, M) backward pass.
    matched_b = torch.gather(b, 1, nearest_neighbours(a, b).unsqueeze(-1).expand(-1, -1, 3))
    matched_a = torch.gather(a, 1, nearest_neighbours(b, a).unsqueeze(-1).expand(-1, -1, 3))
    return (a - matched_b).square().sum(-1).mean(1) + (b - matched_a).square().sum(-1).mean(1)


def sampling_floor(points: torch.Tensor) -> torch.Tensor:
    """(B,) expected squared distance from a point of a surface to the nearest of its (B, N, 3) random samples.

    For samples of density ``N / area`` on a surface, that expectation is ``area / (pi N)`` (a Poisson process in
    the plane); the mean squared distance from each sample of one half to the nearest of the other half is twice it,
    so the floor is half of that, read off the samples themselves (deformed parts included, no areas or normals
    needed). A chamfer to N samples of a surface is biased by about this much wherever the target lies on it.
    """
    half = points.shape[1] // 2
    first, second = points[:, :half], points[:, half : 2 * half]
    nearest = torch.gather(second, 1, nearest_neighbours(first, second).unsqueeze(-1).expand(-1, -1, 3))
    return (first - nearest).square().sum(-1).mean(1) / 2


def deform_points(
    points: torch.Tensor, labels: torch.Tensor, boxes: torch.Tensor, new_boxes: torch.Tensor, min_half: float = 1e-4
) -> torch.Tensor:
    """Per-part box deformation ``v' = c'_k + (v - c_k) * s'_k / s_k``.

    Args:
        points: (B, N, 3).
        labels: (B, N) long part index of each point.
        boxes: (B, K, 6) original boxes.
        new_boxes: (B, K, 6) deformed boxes.

    Returns:
        (B, N, 3).
    """
    index = labels.unsqueeze(-1).expand(-1, -1, PARAMS)
    old = torch.gather(boxes, 1, index)
    new = torch.gather(new_boxes, 1, index)
    return new[..., :3] + (points - old[..., :3]) * new[..., 3:] / old[..., 3:].clamp_min(min_half)


def project(params: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Orthogonal projection onto the connectivity-preserving subspace.

    Args:
        params: (B, K, 6) boxes (padded parts are ignored by a zero basis).
        basis: (B, 6K, D) orthonormal null-space bases, zero-padded.

    Returns:
        (B, K, 6) ``N N^T x``.
    """
    flat = params.reshape(params.shape[0], -1, 1)
    return (basis @ (basis.transpose(1, 2) @ flat)).reshape(params.shape)


def box_symmetry_loss(boxes: torch.Tensor, mirror: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    """How far deformed boxes are from the source's bilateral symmetry.

    In the normalised frame a symmetric source's plane is ``x[axis] = 0``;
    each part's reflection should coincide with its mirror part's box.

    Args:
        boxes: (B, K, 6) deformed boxes.
        mirror: (B, K) long mirror part of each part, -1 for none.
        axis: (B,) long plane axis, -1 when the source is not symmetric.

    Returns:
        (B,) mean squared mismatch over the mirrored parts (0 where none).
    """
    valid = (mirror >= 0) & (axis >= 0).unsqueeze(1)
    partner = torch.gather(boxes, 1, mirror.clamp_min(0).unsqueeze(-1).expand(-1, -1, PARAMS))
    flip = torch.ones_like(boxes)
    axis_onehot = torch.nn.functional.one_hot(axis.clamp_min(0), 3).to(boxes.dtype)
    flip[..., :3] = 1 - 2 * axis_onehot.unsqueeze(1)
    error = (boxes * flip - partner).square().sum(-1) * valid
    return error.sum(1) / valid.sum(1).clamp_min(1)


def project_positive(
    params: torch.Tensor, basis: torch.Tensor, min_half: torch.Tensor, part_mask: torch.Tensor, iterations: int = 100
) -> torch.Tensor:
    """Nearest connectivity-preserving boxes whose half-sizes are at least ``min_half``.

    Dykstra's alternating projections between the subspace and the half-size
    bounds, for inference: a part never collapses or mirrors.

    Args:
        params: (B, K, 6); basis: (B, 6K, D); min_half: (B,); part_mask: (B, K).
    """
    floor = min_half.view(-1, 1, 1)
    y = project(params, basis)
    if bool(((y[..., 3:] >= floor) | ~part_mask.unsqueeze(-1)).all()):
        return y
    half = torch.zeros_like(params, dtype=torch.bool)
    half[..., 3:] = part_mask.unsqueeze(-1)

    def clamp(v: torch.Tensor) -> torch.Tensor:
        return torch.where(half, torch.maximum(v, floor.expand_as(v)), v)

    current, p, q = params, torch.zeros_like(params), torch.zeros_like(params)
    for _ in range(iterations):
        y = project(current + p, basis)
        p = current + p - y
        current = clamp(y + q)
        q = y + q - current
        if bool(((y[..., 3:] >= floor * (1 - 1e-4)) | ~part_mask.unsqueeze(-1)).all()):
            break
    return clamp(y)
