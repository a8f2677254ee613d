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

Image targets have no points: they get no residuals.
"""

from __future__ import annotations

import numpy as np
import torch

from backend.geometry.frames import rotation_z

MAX_TARGET_POINTS = 4096  # a larger target is subsampled (seeded): the residuals are means
CHUNK_ELEMENTS = 1 << 24  # distances held at once (64 MB of float32)


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
    source_boxes = np.asarray(source_boxes, np.float64)
    fitted_boxes = np.asarray(fitted_boxes, np.float64)
    labels = np.asarray(labels, np.int64)
    half = source_boxes[:, 3:]
    scale = np.where(half > 1e-9, fitted_boxes[:, 3:] / np.maximum(half, 1e-9), 1.0)
    local = (np.asarray(points, np.float64) - source_boxes[labels, :3]) * scale[labels]
    return fitted_boxes[labels, :3] + local @ rotation_z(float(yaw)).T


def part_residuals(target: np.ndarray, samples: np.ndarray, labels: np.ndarray, n_parts: int) -> dict[str, list]:
    """Per-part residuals of C fitted candidates against one target, all candidates at once.

    Args:
        target: (M, 3) target points (metres); more than ``MAX_TARGET_POINTS`` are subsampled.
        samples: (C, N, 3) each candidate's deformed samples (``deformed_samples``), same N for all.
        labels: (C, N) part of each sample.
        n_parts: (C,) parts of each candidate (labels are below it).

    Returns:
        ``{"parts_x100": C lists of K_c floats, "share": C lists of K_c floats}`` (see the module).
        A part without samples gets ``parts_x100`` None.
    """
    target = np.asarray(target, np.float64)
    if len(target) > MAX_TARGET_POINTS:
        target = target[np.random.default_rng(0).choice(len(target), MAX_TARGET_POINTS, replace=False)]
    diagonal = max(float(np.linalg.norm(target.max(axis=0) - target.min(axis=0))), 1e-9)
    t = torch.from_numpy(target / diagonal).float()
    s = torch.from_numpy(np.asarray(samples, np.float64) / diagonal).float()  # (C, N, 3)
    lab = torch.from_numpy(np.asarray(labels, np.int64))  # (C, N)
    to_target, nearest_sample = [], []
    chunk = max(1, CHUNK_ELEMENTS // max(1, s.shape[1] * t.shape[0]))  # candidates per (c, N, M) distance block
    for start in range(0, len(s), chunk):
        distance = torch.cdist(s[start : start + chunk], t.expand(len(s[start : start + chunk]), -1, -1))
        to_target.append(distance.min(dim=2).values ** 2)  # (c, N)
        nearest_sample.append(distance.argmin(dim=1))  # (c, M)
    to_target, nearest_sample = torch.cat(to_target), torch.cat(nearest_sample)
    explained_by = torch.gather(lab, 1, nearest_sample)  # (C, M)
    k = int(max(n_parts))
    sums = torch.zeros(len(s), k).scatter_add_(1, lab, to_target)
    counts = torch.zeros(len(s), k).scatter_add_(1, lab, torch.ones_like(to_target))
    share = torch.zeros(len(s), k).scatter_add_(1, explained_by, torch.ones(explained_by.shape)) / t.shape[0]
    means = 100.0 * sums / counts.clamp(min=1)
    out: dict[str, list] = {"parts_x100": [], "share": []}
    for c, parts in enumerate(n_parts):
        out["parts_x100"].append([float(m) if n > 0 else None for m, n in zip(means[c, :parts], counts[c, :parts])])
        out["share"].append([float(v) for v in share[c, :parts]])
    return out


def candidate_residuals(index, target: np.ndarray, candidates: list) -> list[dict]:
    """Per-part residuals of each ``backend.fitting.Candidate`` against the target points (M, 3).

    Returns one ``{"parts_x100": [...], "share": [...]}`` per candidate, parts in index order."""
    if not candidates:
        return []
    sources = [index.load_source(c.source_index) for c in candidates]
    count = min(len(s.points) for s in sources)  # samples are in random order: a uniform subset
    samples = np.stack(
        [
            deformed_samples(s.points[:count], s.point_labels[:count], c.source_boxes, c.fitted_boxes, c.yaw)
            for s, c in zip(sources, candidates)
        ]
    )
    labels = np.stack([s.point_labels[:count] for s in sources])
    table = part_residuals(target, samples, labels, [s.n_parts for s in sources])
    return [{"parts_x100": p, "share": q} for p, q in zip(table["parts_x100"], table["share"])]
