"""Where a fit is poor: per-part residuals of fitted candidates against the target.

For each part of a fitted candidate, its surface samples are deformed as the
part's box was (scaled about the source box's centre, moved to the fitted
centre, turned by the candidate's yaw) and compared with the target cloud:

- ``parts_x100`` (K,): mean squared distance of the part's samples to their
  nearest target point, in the target's normalised frame (box diagonal 1)
  times 100: the units of ``measured_chamfer_x100``, so the add-on's rating
  scale applies to a part as to the whole fit. A part where the target has no
  surface (misplaced, too large, an extra leg) scores high.
- ``share`` (K,): the share of target points whose nearest fitted sample lies
  on this part (the target the part explains; the shares sum to 1).

For a single-view scan (the fit's ``view``: the direction towards the scanner) only
the samples the scanner would see count in ``parts_x100``: the backs of parts are
never in the scan, so a perfect fit would otherwise look poor there. A part it
cannot see at all gets None.

Image targets have no points: they get no residuals.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from backend.geometry.frames import carry_parts, fit_root, part_nodes

MAX_TARGET_POINTS = 4096  # a larger target is subsampled (seeded): the residuals are means


def deformed_samples(
    points: np.ndarray, labels: np.ndarray, source_boxes: np.ndarray, fitted_boxes: np.ndarray, yaw: float
) -> np.ndarray:
    """(N, 3) a source's samples moved with their parts' boxes, in the fit's world frame (metres).

    Args:
        points: (N, 3) surface samples in the source file's frame.
        labels: (N,) part of each sample.
        source_boxes: (K, 6) ``[centre, half_size]`` in the file's frame.
        fitted_boxes: (K, 6) the fitted boxes (``Candidate.fitted_boxes``: centres in the world
            frame, half-sizes along the axes turned by ``yaw``).
        yaw: the candidate's heading, radians about Z.
    """
    origin = np.zeros(3)  # in the world frame a part's place does not depend on the fit's pivot
    world = fit_root(origin, yaw) @ part_nodes(source_boxes, fitted_boxes, origin, yaw)
    return carry_parts(points, labels, source_boxes, world)


def seen_by(samples: np.ndarray, centre: np.ndarray, diagonal: float, view: np.ndarray) -> np.ndarray:
    """(C, N) which of the (C, N, 3) ``samples`` (metres) a scanner in direction ``view`` (3,) would record: the
    fit's own visibility test (``backend.model.viewpoint.visible_from``, as ``partial_chamfer`` uses it) in the
    target's normalised frame (box ``centre``, ``diagonal``)."""
    import torch

    from backend.model.viewpoint import visible_from

    points = torch.from_numpy((np.asarray(samples, np.float64) - centre) / diagonal).float()
    direction = torch.from_numpy(np.asarray(view, np.float64) / np.linalg.norm(view)).float()
    grid = max(8, int(np.sqrt(points.shape[1] / 4)))
    return visible_from(points, direction.expand(len(points), 3), grid=grid, tolerance=0.04).numpy()


def part_residuals(
    target: np.ndarray, samples: np.ndarray, labels: np.ndarray, n_parts: list[int], view: np.ndarray | None = None
) -> dict[str, list]:
    """Per-part residuals of C fitted candidates against one target, all candidates at once.

    Args:
        target: (M, 3) target points (metres); more than ``MAX_TARGET_POINTS`` are subsampled (seeded).
        samples: (C, N, 3) each candidate's deformed samples (``deformed_samples``), same N for all.
        labels: (C, N) part of each sample.
        n_parts: (C,) parts of each candidate (labels are below it).
        view: (3,) direction towards the scanner of a single-view scan (world frame), or None.

    Returns:
        ``{"parts_x100": C lists of K_c floats, "share": C lists of K_c floats}`` (see the module).
        A part without samples (or, for a scan, without a sample the scanner sees) gets ``parts_x100`` None.
    """
    target = np.asarray(target, np.float64)
    if len(target) > MAX_TARGET_POINTS:
        target = target[np.random.default_rng(0).choice(len(target), MAX_TARGET_POINTS, replace=False)]
    low, high = target.min(axis=0), target.max(axis=0)
    diagonal = max(float(np.linalg.norm(high - low)), 1e-9)
    samples = np.asarray(samples, np.float64)
    weight = None if view is None else seen_by(samples, (low + high) / 2, diagonal, view).reshape(-1).astype(float)
    samples = samples / diagonal
    target = target / diagonal
    count, n = samples.shape[:2]
    k = int(max(n_parts))
    slot = np.asarray(labels, np.int64) + k * np.arange(count)[:, None]  # (C, N) candidate-and-part bins
    to_target = cKDTree(target).query(samples.reshape(-1, 3))[0] ** 2  # every candidate's samples in one query
    counted = np.ones_like(to_target) if weight is None else weight
    sums = np.bincount(slot.reshape(-1), to_target * counted, minlength=count * k).reshape(count, k)
    counts = np.bincount(slot.reshape(-1), counted, minlength=count * k).reshape(count, k)
    nearest = np.stack([cKDTree(c).query(target)[1] for c in samples])  # (C, M): each target point's sample
    explained = np.take_along_axis(slot, nearest, axis=1)
    share = np.bincount(explained.reshape(-1), minlength=count * k).reshape(count, k) / len(target)
    means = 100.0 * sums / np.maximum(counts, 1)
    out: dict[str, list] = {"parts_x100": [], "share": []}
    for c, parts in enumerate(n_parts):
        out["parts_x100"].append([float(m) if n > 0 else None for m, n in zip(means[c, :parts], counts[c, :parts])])
        out["share"].append([float(v) for v in share[c, :parts]])
    return out


def candidate_residuals(sources, target: np.ndarray, candidates: list, view: dict | None = None) -> list[dict]:
    """Per-part residuals of each ``backend.fitting.Candidate`` against the target points (M, 3).

    Args:
        sources: the fitter's ``SourceTensors`` (samples in each source's normalised frame).
        view: the fit's ``FitResult.view`` (a single-view scan: only what its scanner sees counts), or None.

    Returns one ``{"parts_x100": [...], "share": [...]}`` per candidate, parts in index order."""
    if not candidates:
        return []
    rows = np.array([c.source_index for c in candidates])
    points = sources.points[rows].cpu().numpy().astype(np.float64)  # (C, N, 3), normalised frame
    scale = sources.scale[rows].cpu().numpy().astype(np.float64)
    points = points * scale[:, None, None] + sources.centre[rows].cpu().numpy()[:, None, :]  # the files' frames
    labels = sources.labels[rows].cpu().numpy()
    samples = np.stack(
        [
            deformed_samples(p, lab, c.source_boxes, c.fitted_boxes, c.yaw)
            for p, lab, c in zip(points, labels, candidates)
        ]
    )
    direction = None if view is None else np.asarray(view["direction"], np.float64)
    table = part_residuals(target, samples, labels, [len(c.source_boxes) for c in candidates], direction)
    return [{"parts_x100": p, "share": q} for p, q in zip(table["parts_x100"], table["share"])]
