"""Inner deformation optimisation: Adam on each candidate's connectivity-subspace coordinates, so every joint stays
attached, against ``backend.model.scoring.partial_chamfer`` plus symmetry and plausible sizes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from backend.model.geometry import box_symmetry_loss, project_positive
from backend.model.plausibility import implausible_growth, size_penalty
from backend.model.scoring import partial_chamfer
from backend.model.sources import SourceTensors

# Weight of ``implausible_growth`` in refinement, relative to ``size_weight`` (a barrier: 100 x 0.01 = 1, against
# chamfers of about 1e-4 to 1e-3).
REFINE_GROWTH_WEIGHT = 100.0


def refine_boxes(
    sources: SourceTensors,
    boxes: torch.Tensor,
    targets: torch.Tensor,
    steps: int = 200,
    symmetry_weight: float = 1.0,
    size_weight: float = 0.0,
    reference: torch.Tensor | None = None,
    locked: torch.Tensor | None = None,
    viewpoint: torch.Tensor | None = None,
    max_seconds: float = float("inf"),
    tolerance: float = 1e-3,
    progress: Callable[[int, int, str], None] | None = None,
    keep_best: bool = False,
) -> torch.Tensor:
    """Inner deformation optimisation from the given starts.

    Adam on each candidate's null-space coordinates (so every joint stays attached), on
    ``partial_chamfer`` to the target plus ``symmetry_weight`` times the symmetry error, plus
    ``size_weight`` times ``size_penalty`` against ``reference`` boxes and ``size_weight x REFINE_GROWTH_WEIGHT``
    times ``implausible_growth`` (no part taken beyond 3x of its source size that its reference left within it),
    plus a barrier keeping half-sizes at least ``min_half`` (without locked parts, the result is projected onto
    boxes that keep every joint and every half-size at least ``min_half``: ``project_positive``). Stops when the
    summed loss improves by less than ``tolerance`` (relative) over 10 steps, after ``steps`` steps, or after
    ``max_seconds`` (a safety cap only: results should not depend on the machine's load).

    Args:
        sources: P sources (use few points: ``first_points(inference.REFINE_POINTS)``).
        boxes: (P, K, 6) starts; targets: (P, M, 3).
        reference: (P, K, 6) boxes whose part sizes are plausible (default: the starts).
        locked: optional (P, K) bool, parts that keep their boxes exactly.
        viewpoint: (3,) or (P, 3) direction towards the scanner of a single-view scan, or None.
        progress: called ``progress(step, steps, text)`` every 10 steps.
        keep_best: return each candidate's lowest-loss iterate whose half-sizes are all at
            least ``min_half`` (nothing clamped afterwards, so no joint opens), not the last one.

    Returns:
        (P, K, 6) refined boxes.
    """
    basis = sources.basis
    reference = boxes if reference is None else reference
    start = basis.transpose(1, 2) @ boxes.reshape(len(boxes), -1, 1)
    directions = torch.eye(basis.shape[2], dtype=basis.dtype, device=basis.device).expand(len(boxes), -1, -1)
    if locked is not None and bool(locked.any()):
        start, directions = _locked_subspace(basis, boxes, locked)
    w = torch.zeros(len(boxes), directions.shape[2], 1, device=basis.device, requires_grad=True)
    best_w = torch.zeros_like(w, requires_grad=False)
    best = torch.full((len(boxes),), float("inf"), device=basis.device)
    with torch.enable_grad():
        optimiser = torch.optim.Adam([w], lr=2e-3)
        started, previous = time.perf_counter(), None
        for step in range(steps):
            current = (basis @ (start + directions @ w)).reshape(boxes.shape)
            fit = partial_chamfer(sources, current, targets, viewpoint)
            shortfall = torch.relu(sources.min_half.view(-1, 1, 1) - current[..., 3:]) * sources.part_mask.unsqueeze(-1)
            each = fit + 10 * shortfall.square().sum((1, 2))
            if symmetry_weight:
                each = each + symmetry_weight * box_symmetry_loss(current, sources.mirror, sources.axis)
            if size_weight:
                each = each + size_weight * size_penalty(current, reference, sources.part_mask)
                each = each + size_weight * REFINE_GROWTH_WEIGHT * implausible_growth(current, reference, sources)
            if keep_best:  # the boxes before this step: keep each candidate's best valid one
                better = (each.detach() < best) & (shortfall.detach().flatten(1).amax(1) <= 0)
                best = torch.where(better, each.detach(), best)
                best_w = torch.where(better.view(-1, 1, 1), w.detach(), best_w)
            loss = each.sum()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if step % 10 == 0:
                if progress is not None:
                    progress(step, steps, f"refining, step {step} of {steps}")
                value = float(loss.detach())
                if previous is not None and previous - value <= tolerance * abs(previous):
                    break
                previous = value
            if time.perf_counter() - started > max_seconds:
                break
    with torch.no_grad():
        if keep_best:  # candidates that never had a valid iterate fall back to the clamped last one
            w = torch.where(torch.isfinite(best).view(-1, 1, 1), best_w, w)
        final = (basis @ (start + directions @ w)).reshape(boxes.shape)
        if locked is None:  # half-sizes below the floor (a scan's unseen parts) lifted without opening a joint
            return project_positive(final, basis, sources.min_half, sources.part_mask)
        return torch.cat([final[..., :3], torch.maximum(final[..., 3:], sources.min_half.view(-1, 1, 1))], dim=-1)


def _locked_subspace(basis: torch.Tensor, boxes: torch.Tensor, locked: torch.Tensor):
    """Start ``z0`` (P, D, 1) meeting the locked boxes and directions ``M`` (P, D, W) that leave them be:
    null-space coordinates ``z = z0 + M w``. ``z0`` is the point of that set nearest the start's own
    coordinates, so the unlocked parts begin where the start has them."""
    starts, spans = [], []
    for p in range(len(boxes)):  # one least-squares problem per user-edited candidate (one in practice)
        rows = locked[p].repeat_interleave(6)
        n_locked = basis[p].double()[rows]
        z_start = basis[p].double().T @ boxes[p].reshape(-1, 1).double()
        miss = n_locked @ z_start - boxes[p].reshape(-1).double()[rows].unsqueeze(-1)
        z0 = z_start - torch.linalg.lstsq(n_locked, miss).solution
        _, singular, vt = torch.linalg.svd(n_locked, full_matrices=True)
        rank = int((singular > 1e-9 * max(float(singular.max()) if len(singular) else 0.0, 1e-300)).sum())
        starts.append(z0.to(basis))
        spans.append(vt[rank:].T.to(basis))
    width = max(m.shape[1] for m in spans)
    return torch.stack(starts), torch.stack([torch.nn.functional.pad(m, (0, width - m.shape[1])) for m in spans])
