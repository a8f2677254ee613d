"""Structure-aware hand edits: keep joints attached around the parts a user edited.

After a fit the user moves or scales some parts (``locked``: they stay
exactly as edited). ``keep_connected`` moves the other parts as little as
possible so that every joint is attached again: a least-squares problem on
the connectivity-preserving subspace with the edited parts as hard
constraints. Unedited parts prefer moving to resizing, and parts standing
on the floor keep standing on it. Joint constraints are invariant to
translation and uniform scale, so boxes may be in any such frame of the
source (the file's own, or the fit's).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backend.geometry.connectivity import joint_constraint_matrix, joint_gaps, null_space_basis

PARAMS = 6


@dataclass
class EditResult:
    """Boxes after the solve.

    Attributes:
        boxes: (K, 6) all parts; edited parts as given (up to ``lock_residual``).
        locked: (K,) parts held fixed (edited ones, plus their mirrors with symmetry).
        lock_residual: largest distance (in box units) an edited part had to
            give way because the edits contradict each other's joints; 0 normally.
        gaps: (J,) joint gaps after the solve (in the boxes' units).
    """

    boxes: np.ndarray
    locked: np.ndarray
    lock_residual: float
    gaps: np.ndarray


SIZE_WEIGHT = 30.0
FLOOR_WEIGHT = 1000.0


def _solve(
    basis: np.ndarray, goal: np.ndarray, fixed: np.ndarray, weight: np.ndarray, rows: np.ndarray, values: np.ndarray
) -> np.ndarray:
    """Null-space coordinates z with ``(N z)[fixed] = goal[fixed]`` (least
    squares if impossible), and ``(N z)[free]`` nearest to ``goal[free]`` in the
    ``weight``-ed norm together with the weighted soft equations ``rows N z = values``."""
    n_fixed = basis[fixed]
    n_free = np.vstack([basis[~fixed] * weight[~fixed, None], rows @ basis])
    goal_free = np.concatenate([goal[~fixed] * weight[~fixed], values])
    if fixed.any():
        z0, *_ = np.linalg.lstsq(n_fixed, goal[fixed], rcond=None)
        _, singular, vt = np.linalg.svd(n_fixed, full_matrices=True)
        rank = int(np.sum(singular > 1e-9 * max(singular.max(initial=0.0), 1e-300)))
        free_directions = vt[rank:].T
    else:
        z0, free_directions = np.zeros(basis.shape[1]), np.eye(basis.shape[1])
    if free_directions.shape[1] == 0 or not (~fixed).any():
        return z0
    w, *_ = np.linalg.lstsq(n_free @ free_directions, goal_free - n_free @ z0, rcond=None)
    return z0 + free_directions @ w


def mirror_box(box: np.ndarray, axis: int, offset: float) -> np.ndarray:
    out = np.array(box, dtype=np.float64, copy=True)
    out[axis] = 2.0 * offset - out[axis]
    return out


def symmetry_plane(boxes: np.ndarray, mirror: np.ndarray, axis: int, edited: np.ndarray | None = None) -> float:
    """Position of the reflection plane implied by the mirrored parts' boxes,
    from the parts the user did not edit when there are such pairs."""
    pairs = [(k, m) for k, m in enumerate(mirror) if m >= 0]
    if edited is not None:
        untouched = [(k, m) for k, m in pairs if not edited[k] and not edited[m]]
        pairs = untouched or pairs
    return float(np.mean([(boxes[k, axis] + boxes[m, axis]) / 2 for k, m in pairs])) if pairs else 0.0


def keep_connected(
    source_boxes: np.ndarray,
    joint_pairs: np.ndarray,
    joint_points: np.ndarray,
    boxes: np.ndarray,
    locked: np.ndarray,
    excluded: np.ndarray | None = None,
    mirror: np.ndarray | None = None,
    symmetry_axis: int = -1,
    keep_symmetry: bool = False,
    min_half_size: float = 1e-6,
) -> EditResult:
    """Re-attach every joint, moving the unedited parts as little as possible.

    Args:
        source_boxes: (K, 6) the source's undeformed boxes (its own frame).
        joint_pairs: (J, 2) connected parts; joint_points: (J, 3) in the source's frame.
        boxes: (K, 6) current boxes (after the user's edits), in a similar frame.
        locked: (K,) bool, parts the user edited: held exactly.
        excluded: (K,) bool, parts left out of the solve (e.g. the user rotated
            them, which the deformation model cannot express): they keep their
            boxes and their joints are not enforced.
        mirror, symmetry_axis: the source's part mirror map and plane axis.
        keep_symmetry: also apply each edit to the edited part's mirror.
        min_half_size: half-sizes never go below this.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    n_parts = len(boxes)
    locked = np.asarray(locked, dtype=bool).copy()
    excluded = np.zeros(n_parts, bool) if excluded is None else np.asarray(excluded, dtype=bool)
    target = boxes.copy()
    if keep_symmetry and symmetry_axis >= 0 and mirror is not None:
        offset = symmetry_plane(boxes, np.asarray(mirror), symmetry_axis, edited=locked)
        for k in np.flatnonzero(locked):
            m = int(mirror[k])
            if m >= 0 and m != k and not locked[m] and not excluded[m]:
                target[m] = mirror_box(target[k], symmetry_axis, offset)
                locked[m] = True
    pairs = np.asarray(joint_pairs, dtype=np.int64).reshape(-1, 2)
    joint_points = np.asarray(joint_points, dtype=np.float64).reshape(-1, 3)
    active = ~(excluded[pairs[:, 0]] | excluded[pairs[:, 1]]) if len(pairs) else np.zeros(0, bool)
    constraint = joint_constraint_matrix(source_boxes, pairs[active], joint_points[active], min_half_size)
    basis = null_space_basis(constraint, PARAMS * n_parts)  # x = N z keeps every active joint

    fixed = np.repeat(locked | excluded, PARAMS)
    goal = target.reshape(-1)
    # Resizing a part the user did not touch is a bigger change than moving
    # it: lengthening a leg should lift the seat, not thin it.
    weight = np.tile(np.r_[np.ones(3), np.full(3, SIZE_WEIGHT)], n_parts)
    # Parts standing on the floor stay on it (their bottom height is kept).
    floor = float((boxes[:, 2] - boxes[:, 5]).min())
    height = float((boxes[:, 2] + boxes[:, 5]).max()) - floor
    grounded = np.flatnonzero((boxes[:, 2] - boxes[:, 5] <= floor + 0.01 * height) & ~locked & ~excluded)
    rows = np.zeros((len(grounded), PARAMS * n_parts))
    rows[np.arange(len(grounded)), PARAMS * grounded + 2] = FLOOR_WEIGHT
    rows[np.arange(len(grounded)), PARAMS * grounded + 5] = -FLOOR_WEIGHT
    values = FLOOR_WEIGHT * (boxes[grounded, 2] - boxes[grounded, 5])
    for _ in range(n_parts + 1):  # active set: half-sizes that would collapse are held (softly, after the user's locks)
        z = _solve(basis, goal, fixed, weight, rows, values)
        solved = (basis @ z).reshape(n_parts, PARAMS)
        collapsing = np.zeros((n_parts, PARAMS), bool)
        collapsing[:, 3:] = solved[:, 3:] < np.maximum(min_half_size, 0.5 * target[:, 3:])
        collapsing = collapsing.reshape(-1) & ~fixed & (weight < FLOOR_WEIGHT)
        if not collapsing.any():
            break
        weight = np.where(collapsing, FLOOR_WEIGHT, weight)
    residual = float(np.abs(solved[locked] - target[locked]).max(initial=0.0))
    solved[excluded] = boxes[excluded]
    solved[:, 3:] = np.maximum(solved[:, 3:], min_half_size)
    gaps = joint_gaps(source_boxes, solved, pairs[active], joint_points[active], min_half_size)
    return EditResult(solved, locked, residual, gaps)
