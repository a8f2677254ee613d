"""Refit with locked parts: improve a hand-edited fit without undoing the edits.

``Fitter.refit`` calls ``refit_with_locks``. It

1. starts from the boxes as the user left them; where joints are open (edits without
   Keep Connected) they are first re-attached around the locked parts
   (``backend.editing.keep_connected``);
2. optimises only inside the deformations that keep every joint attached (the
   source's null space) *and* leave the locked parts exactly as they are, so joints
   touching locked parts hold too: boxes ``x = N (z0 + M w)`` where N spans the
   joint-keeping deformations, M the null space of N's locked rows, and z0 is the
   point of that set nearest the start;
3. minimises chamfer to the target (for a single-view scan, ``partial_chamfer`` from the
   scanner's side: ``options.viewpoint`` as the fit reported it, ``"auto"`` to judge it
   again from the cloud, None for a cloud from all around) plus the symmetry term with the fitter's own
   refinement (``backend.model.refinement.refine_boxes`` with ``locked`` and
   ``keep_best``: the best iterate whose half-sizes are all above the source's floor,
   so nothing is clamped afterwards, which would open joints), and returns the start
   itself when that does not measure better (the chamfer after is never above before).

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
from backend.fitting import FitError, FitOptions, FitResult, check_viewpoint, clean_points
from backend.geometry.boxes import union_box
from backend.geometry.connectivity import joint_gaps
from backend.geometry.frames import rotation_z, view_record
from backend.model.geometry import normalisation
from backend.model.inference import estimate_viewpoint
from backend.model.placement import target_extent
from backend.model.refinement import refine_boxes
from backend.model.scoring import partial_chamfer

OPTIMISE_POINTS = 512
MEASURE_POINTS = 1024


@dataclass
class RefitResult(FitResult):
    """A ``FitResult`` with the chamfer before and after the refit (normalised frame)."""

    chamfer_before: float = float("nan")
    chamfer_start: float = float("nan")
    chamfer_after: float = float("nan")

    def to_json(self) -> dict:
        out = super().to_json()
        out.update(
            {
                "chamfer_before_x100": self.chamfer_before * 100,
                "chamfer_start_x100": self.chamfer_start * 100,
                "chamfer_after_x100": self.chamfer_after * 100,
            }
        )
        return out


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
    check_viewpoint(options.viewpoint)
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
    view = _viewpoint(fitter, options.viewpoint, yaw, row, target)
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
    dtype = torch.float32
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(fitter.device, dtype)  # noqa: E731
    start_t = as_tensor(start).unsqueeze(0)
    refined = refine_boxes(
        chosen.first_points(OPTIMISE_POINTS),
        start_t,
        target,
        steps=options.refine_steps,
        symmetry_weight=options.symmetry_weight,
        locked=torch.from_numpy(locked_rows).to(fitter.device).unsqueeze(0),
        viewpoint=view,
        max_seconds=options.refine_seconds,
        progress=None if progress is None else lambda done, total, _: progress(done, total, "refitting"),
        keep_best=True,
    )
    # Locked parts are put back bit for bit (only iterates with every half-size above the floor were kept).
    refined[0, : len(locked_rows)][torch.from_numpy(locked_rows).to(fitter.device)] = start_t[0][
        torch.from_numpy(locked_rows).to(fitter.device)
    ]
    with torch.no_grad():
        measure_points = chosen.first_points(MEASURE_POINTS)
        trio = torch.cat([as_tensor(given).unsqueeze(0), start_t, refined])
        trio_sources = measure_points.select(torch.zeros(3, dtype=torch.long, device=fitter.device))
        chamfers = partial_chamfer(trio_sources, trio, target.expand(3, -1, -1), view)
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
        # back to the fit's world frame: the heading frame turned by +yaw
        view=None
        if view is None
        else view_record(rotation_z(yaw) @ view.double().cpu().numpy(), isinstance(options.viewpoint, str)),
        chamfer_before=before,
        chamfer_start=at_start,
        chamfer_after=after,
    )


def _viewpoint(fitter, viewpoint, yaw: float, row: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """(3,) direction towards the scanner in the refit's heading frame (the cloud turned by ``-yaw``), or None.

    ``viewpoint``: a direction in the fit's world frame, None (a cloud from all around) or ``"auto"``
    (judged from the cloud with the refitted source placed on it, ``inference.estimate_viewpoint``)."""
    if viewpoint is None:
        return None
    if isinstance(viewpoint, str):
        zero = torch.zeros(1, dtype=target.dtype, device=target.device)
        return estimate_viewpoint(fitter.sources, row, target, target_extent(target), zero)
    turned = rotation_z(-yaw) @ np.asarray(viewpoint, dtype=np.float64)
    return torch.from_numpy(turned / np.linalg.norm(turned)).to(target)
