"""Refit with locked parts: improve a hand-edited fit without undoing the edits.

``Fitter.refit`` calls ``refit_with_locks``. It

1. starts from the boxes as the user left them; where joints are open (edits without
   Keep Connected) they are first re-attached around the locked parts
   (``backend.editing.keep_connected``);
2. optimises only inside the deformations that keep every joint attached (the
   source's null space) *and* leave the locked parts exactly as they are, so joints
   touching locked parts hold too: boxes ``x = x_start + N M w`` where N spans the
   joint-keeping deformations and M the null space of N's locked rows;
3. minimises chamfer to the target plus the symmetry term (Adam on w), keeps the
   best iterate whose half-sizes are all above the source's floor (so nothing is
   clamped afterwards, which would open joints), and returns the start itself when the best iterate does not measure
   better (so the chamfer after is never above the chamfer before).

The result is a ``RefitResult`` (a ``FitResult``) with ``chamfer_before`` (the boxes
as given), ``chamfer_start`` (joints re-attached) and ``chamfer_after``, all in the
normalised frame (squared distances, box diagonal 1), as ``Candidate.measured_chamfer``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from backend.editing import FEASIBLE_GAP, keep_connected
from backend.fitting import FitError, FitOptions, FitResult, clean_points
from backend.geometry.boxes import union_box
from backend.geometry.connectivity import joint_gaps
from backend.geometry.frames import rotation_z
from backend.model.geometry import box_symmetry_loss, chamfer_distance, normalisation
from backend.model.networks import deformed_points

OPTIMISE_POINTS = 512
MEASURE_POINTS = 1024
LEARNING_RATE = 2e-3
PROGRESS_SECONDS = 0.1


@dataclass
class RefitResult(FitResult):
    """A ``FitResult`` with the chamfer before and after the refit (normalised frame)."""

    chamfer_before: float = float("nan")
    chamfer_start: float = float("nan")
    chamfer_after: float = float("nan")
    steps: int = 0

    def to_json(self) -> dict:
        out = super().to_json()
        out.update(
            {
                "chamfer_before_x100": self.chamfer_before * 100,
                "chamfer_start_x100": self.chamfer_start * 100,
                "chamfer_after_x100": self.chamfer_after * 100,
                "refit_steps": self.steps,
            }
        )
        return out


def locked_directions(basis: np.ndarray, locked_rows: np.ndarray) -> np.ndarray:
    """(6K, d) orthonormal directions inside ``basis`` (6K, D) that leave the ``locked_rows`` (6K,) at 0."""
    if not locked_rows.any():
        return basis
    _, singular, vt = np.linalg.svd(basis[locked_rows], full_matrices=True)
    rank = int(np.sum(singular > 1e-9 * max(float(singular.max(initial=0.0)), 1e-300)))
    return basis @ vt[rank:].T


def optimise(
    chosen, start: torch.Tensor, directions: torch.Tensor, target: torch.Tensor, options: FitOptions, progress=None
) -> tuple[torch.Tensor, int]:
    """Best boxes (1, K, 6) on chamfer + symmetry over ``start + directions @ w``, and the steps run.

    Args:
        chosen: SourceTensors of the one source (its samples already cut to the optimisation's count).
        start: (1, K, 6) boxes; directions: (6K, d); target: (1, N, 3) normalised.
    """
    shape = start.shape
    flat = start.reshape(-1)

    def boxes_of(w: torch.Tensor) -> torch.Tensor:
        return (flat + directions @ w).reshape(shape)

    def objective(boxes: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """The loss, and whether every half-size is at least the floor (only such boxes are kept)."""
        fit = chamfer_distance(deformed_points(chosen, boxes), target)
        shortfall = torch.relu(chosen.min_half.view(-1, 1, 1) - boxes[..., 3:]) * chosen.part_mask.unsqueeze(-1)
        symmetry = box_symmetry_loss(boxes, chosen.mirror, chosen.axis)
        loss = (fit + options.symmetry_weight * symmetry + 10 * shortfall.square().sum((1, 2))).sum()
        return loss, not bool((shortfall > 0).any())

    w = torch.zeros(directions.shape[1], dtype=start.dtype, device=start.device, requires_grad=True)
    best_w, best = w.detach().clone(), float("inf")
    if directions.shape[1] == 0:
        return start, 0
    optimiser = torch.optim.Adam([w], lr=LEARNING_RATE)
    started = last_report = time.perf_counter()
    reference, step = None, 0
    with torch.enable_grad():
        for step in range(1, options.refine_steps + 1):
            loss, valid = objective(boxes_of(w))
            value = float(loss.detach())
            if valid and value < best:  # the loss of the boxes before this step: keep the best seen
                best, best_w = value, w.detach().clone()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            now = time.perf_counter()
            if progress is not None and now - last_report >= PROGRESS_SECONDS:
                progress(step, options.refine_steps, f"refitting, step {step} of {options.refine_steps}")
                last_report = now
            if step % 10 == 0:  # converged: under 0.1% better than 10 steps ago
                if reference is not None and reference - value <= 1e-3 * abs(reference):
                    break
                reference = value
            if now - started > options.refine_seconds:
                break
    with torch.no_grad():
        final, valid = objective(boxes_of(w))
        if valid and float(final) < best:
            best_w = w.detach().clone()
        return boxes_of(best_w), step


def refit_with_locks(
    fitter,
    points,
    source_index: int,
    boxes,
    locked,
    yaw: float = 0.0,
    options: FitOptions = FitOptions(),
    progress=None,
) -> RefitResult:
    """See the module docstring; arguments as ``Fitter.refit``."""
    started = time.perf_counter()
    if progress is not None:
        progress(0, 1, "refitting")
    if not 0 <= int(source_index) < len(fitter.index):
        raise FitError(f"there is no source {source_index}; the index holds {len(fitter.index)}")
    cloud, notes = clean_points(points, fitter.model.config.n_points)
    boxes = np.asarray(boxes, np.float64)
    k = fitter.index.sources[source_index].n_parts
    if boxes.shape != (k, 6) or np.shape(locked) != (k,):
        raise FitError(f"source {source_index} has {k} parts: boxes must be {k} x 6 and locked {k} long")
    locked = np.asarray(locked, bool)
    pivot = (cloud.min(axis=0) + cloud.max(axis=0)) / 2
    turned = (cloud - pivot) @ rotation_z(-yaw).T + pivot
    target = torch.from_numpy(turned).float().unsqueeze(0).to(fitter.device)
    centre, diagonal = normalisation(target)
    target = (target - centre.unsqueeze(1)) / diagonal.view(-1, 1, 1)
    scale, origin = float(diagonal), centre[0].cpu().numpy().astype(np.float64)

    # The boxes in the normalised frame of the target, padded as the source tensors are.
    unturned = (boxes[:, :3] - pivot) @ rotation_z(yaw) + pivot  # R^T applied to rows
    given = fitter.sources.boxes[source_index].clone().double().cpu().numpy()
    given[:k, :3] = (unturned - origin) / scale
    given[:k, 3:] = boxes[:, 3:] / scale
    source = fitter.index.load_source(source_index)
    row = torch.tensor([source_index], device=fitter.device)
    chosen = fitter.sources.select(row)
    min_half = float(chosen.min_half[0])
    start = given.copy()
    feasible = True
    size = float(np.linalg.norm(2 * union_box(given[:k])[3:]))
    gaps = joint_gaps(source.boxes, given[:k], source.joint_pairs, source.joint_points, source.min_half_size)
    if gaps.max(initial=0.0) > FEASIBLE_GAP * size:  # joints open (edits without Keep Connected): re-attach
        connected = keep_connected(
            source.boxes, source.joint_pairs, source.joint_points, given[:k], locked, min_half_size=min_half
        )
        start[:k], feasible = connected.boxes, connected.feasible
        if not feasible:
            notes.append(connected.message)

    locked_rows = np.zeros(len(start), bool)
    locked_rows[:k] = locked
    basis = chosen.basis[0].double().cpu().numpy()
    directions = locked_directions(basis, np.repeat(locked_rows, 6))
    dtype = torch.float32
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(fitter.device, dtype)  # noqa: E731
    start_t = as_tensor(start).unsqueeze(0)
    refined, steps = optimise(
        chosen.first_points(OPTIMISE_POINTS), start_t, as_tensor(directions), target, options, progress
    )
    # Locked parts are put back bit for bit (only iterates with every half-size above the floor were kept).
    refined[0, : len(locked_rows)][torch.from_numpy(locked_rows).to(fitter.device)] = start_t[0][
        torch.from_numpy(locked_rows).to(fitter.device)
    ]
    with torch.no_grad():
        measure_points = chosen.first_points(MEASURE_POINTS)
        trio = torch.cat([as_tensor(given).unsqueeze(0), start_t, refined])
        chamfers = chamfer_distance(deformed_points(measure_points.select(torch.zeros(3, dtype=torch.long)), trio),
                                    target.expand(3, -1, -1))  # fmt: skip
        before, at_start, after = (float(c) for c in chamfers)
        if after > at_start:  # the optimisation did not pay off on the measured chamfer: keep the start
            refined, after = start_t, at_start
        distance = torch.cdist(fitter.model.retrieval.embed_target(target, "points"), fitter.codes["embedding"])[0]
    predicted = fitter.codes["sigma"][row] * distance[row] / 100.0
    measured = torch.tensor([after])
    candidates = fitter._candidates(
        row, distance, predicted, measured, chosen, refined, origin, scale, yaw, pivot, None
    )
    if feasible:  # the locked parts as the user gave them, not as they came back through float32
        candidates[0].fitted_boxes[locked] = boxes[locked]
    if progress is not None:
        progress(1, 1, "refitted")
    return RefitResult(
        "points",
        candidates,
        notes,
        time.perf_counter() - started,
        chamfer_before=before,
        chamfer_start=at_start,
        chamfer_after=after,
        steps=steps,
    )
