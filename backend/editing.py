"""Structure-aware hand edits: keep joints attached around the parts a user edited.

The problem ``keep_connected`` solves, on the change ``d = x - b`` of the stacked
box parameters ``x = [c_0, s_0, c_1, ...]`` (6K) from the current boxes ``b``:

    edited parts   d_e = 0                          exact (eliminated), whenever feasible
    1. joints      c_a + u_a s_a = c_b + u_b s_b      both ends of every joint coincide
    2. floor       c_z - s_z kept for unedited parts whose bottom is on the floor
    3. symmetry    d_m = M d_k for mirror pairs (M flips the plane axis), with keep_symmetry
    4. the change  |W d|^2, W = MOVE_WEIGHT on centres, SIZE_WEIGHT on half-sizes (moves are cheaper)

solved in that order of priority (a prioritised least-squares problem: each level is
solved in the exact null space of the levels above it, so a lower level never undoes a
higher one; what is left free after level 3 takes the least change). Every level is a
Tikhonov-regularised least-squares solve toward the current boxes, in the whitened
coordinates ``W d / diagonal`` (``damped_solve``): well-posed directions are met
exactly; in ill-posed ones (two joints that are nearly the same equation with slightly
different right-hand sides, as joint points of mirrored parts that are not exactly
mirrored) the damping is chosen by the discrepancy principle, so a disagreement under
``JOINT_TOLERANCE`` of the model's diagonal is left as it is instead of buying a large
resize, and no solve amplifies a disagreement by more than about ``1 / sqrt(damping)``.
Floor and symmetry are damped more (they give way rather than make a part change by
several times what they ask). Symmetry constrains the *change* of each mirror pair,
never copies one box onto the other, so a pair that was not exactly symmetric stays so.

If the edits together make a joint impossible (two edited parts whose joint no
longer meets, or a part held between edited parts), the edited parts give way as
little as possible (``lock_residual``) and ``conflicts`` names each joint and the
edit it conflicts with; a single edit is always feasible except in degenerate
cases, and its message never speaks of several edits.

API for the add-on (through the worker's ``keep_connected`` request)::

    result = keep_connected(source.boxes, source.joint_pairs, source.joint_points,
                            boxes,              # (K, 6) current boxes, any frame that is the
                                                #  source's up to translation and per-axis scale
                            locked=edited,      # (K,) bool: parts the user transformed (the
                                                #  per-part "edited" flag): held exactly
                            excluded=rotated,   # (K,) bool: left as they are, joints ignored
                            mirror=source.part_mirror, symmetry_axis=source.symmetry_axis,
                            keep_symmetry=True, # mirror partners follow the edits
                            reference=applied,  # (K, 6) optional: boxes before the edits (what
                                                #  the add-on last set); gives each edit's change
                            min_half_size=source.min_half_size,
                            yaw=candidate_yaw)  # the fit's heading (parent's Z rotation)
    result.boxes          # (K, 6) new boxes; edited parts bit-exact when result.feasible
    result.edited         # (K,) the parts held (as given in ``locked``): keep their flag set
    result.followed       # (K,) parts moved as mirror images of an edit (keep_symmetry)
    result.locked         # (K,) edited | followed (older name, kept for the worker)
    result.feasible       # False when the edits contradict the joints
    result.lock_residual  # largest distance an edited part gave way (box units); 0 when feasible
    result.conflicts      # [(joint index, part a, part b, edited part)] when not feasible
    result.message        # one line for the user ("" when feasible)
    result.gaps           # (J,) joint gaps after the solve (box units)

Without ``reference`` the change of an edited part with an unedited mirror partner is
estimated as its difference to the partner's mirror image (plane from the unedited
pairs): the partner then aims at the edited part's mirror image, so pass ``reference``
(the add-on has it) to use the edit's true change.
Joint constraints are invariant to translation and per-axis scale, so boxes may
be in the file's frame or the fit's (pass the fit's ``yaw``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from backend.geometry.boxes import union_box
from backend.geometry.connectivity import joint_constraint_matrix, joint_gaps
from backend.geometry.frames import rotation_z

PARAMS = 6
# Cost of a change per unit of the model's diagonal: resizing a part the user did
# not touch is a bigger change than moving it (lengthening a leg should lift the
# seat, not thin it). Weights of the whitened coordinates z = W d / diagonal.
MOVE_WEIGHT = 1.0
SIZE_WEIGHT = 2.0
# Tikhonov damping of every level, in the whitened coordinates: a constraint
# direction with singular value sigma is met to a fraction (DAMPING / (sigma^2 +
# DAMPING))^DAMPING_ORDER of its right-hand side, and no solve moves a part by more
# than about 1 / sqrt(DAMPING) times the disagreement it resolves.
DAMPING = 1e-3
DAMPING_ORDER = 3
# Joints (and the floor, and symmetry) are met to this fraction of the model's
# diagonal (root sum of squares over all of them) and no closer: see ``damped_solve``.
JOINT_TOLERANCE = 1e-3
# Directions of a level whose singular value (whitened) is at least this are met exactly.
WELL_POSED = 0.2
# The floor and symmetry are damped more: they give way rather than make a part
# change by more than a few times what they ask for (a shelf low on a side panel
# that stands on the floor; joint points of a mirror pair that are not mirrored).
FLOOR_DAMPING = 1e-1
SYMMETRY_DAMPING = 1e-1
# A joint further apart than this (fraction of the diagonal) after the solve
# means the edits cannot all be kept exactly.
FEASIBLE_GAP = 2e-3
# With infeasible edits, moving an edited part costs this many times a free one.
EDIT_WEIGHT = 10.0
# Parts whose bottom lies within this fraction of the height of the floor stand on it.
FLOOR_BAND = 0.01
# A free half-size may not shrink below this fraction of its current value.
MIN_SHRINK = 0.25


@dataclass
class EditResult:
    """Boxes after the solve (see the module docstring).

    Attributes:
        boxes: (K, 6) all parts, in the units of the input boxes.
        locked: (K,) edited parts plus the mirror partners that followed them.
        lock_residual: largest distance (box units) an edited part had to give way; 0 when feasible.
        gaps: (J,) joint gaps after the solve (box units; 0 for joints touching an excluded part).
        edited: (K,) the parts held exactly (``locked`` as given).
        followed: (K,) parts that follow an edit as its mirror image.
        feasible: whether every edit could be kept exactly with every joint attached.
        conflicts: (joint, part a, part b, edited part) for each joint an edit makes impossible.
        message: one line for the user, "" when feasible.
    """

    boxes: np.ndarray
    locked: np.ndarray
    lock_residual: float
    gaps: np.ndarray
    edited: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    followed: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    feasible: bool = True
    conflicts: list[tuple[int, int, int, int]] = field(default_factory=list)
    message: str = ""


def mirror_box(box: np.ndarray, axis: int, offset: float) -> np.ndarray:
    """A (..., 6) box reflected across the plane ``x[axis] = offset``."""
    out = np.array(box, dtype=np.float64, copy=True)
    out[..., axis] = 2.0 * offset - out[..., axis]
    return out


def symmetry_plane(boxes: np.ndarray, mirror: np.ndarray, axis: int, edited: np.ndarray | None = None) -> float:
    """Position of the reflection plane implied by the mirrored parts' boxes,
    from the parts the user did not edit when there are such pairs."""
    mirror = np.asarray(mirror)
    k = np.flatnonzero(mirror >= 0)
    m = mirror[k]
    if edited is not None:
        untouched = ~(edited[k] | edited[m])
        if untouched.any():
            k, m = k[untouched], m[untouched]
    return float(np.mean((boxes[k, axis] + boxes[m, axis]) / 2)) if len(k) else 0.0


def damped_solve(
    matrix: np.ndarray, rhs: np.ndarray, damping: float, tolerance: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Tikhonov least squares ``argmin |A w - r|^2 + lam |w|^2`` and the null space of A.

    ``lam`` is the largest value on a log grid from ``damping`` to 1 that still
    meets ``|A w - r| <= tolerance`` (Morozov's discrepancy principle: the equations
    are met to the tolerance and no closer, so a disagreement smaller than the
    tolerance never buys a large change), or ``damping`` when none does.
    Iterated ``DAMPING_ORDER`` times in closed form, so it is exact where the
    equations are well posed and still bounded by about ``1 / sqrt(lam)`` where not.

    Args:
        matrix: (R, n); rhs: (R,).

    Returns:
        w (n,), and an orthonormal basis (n, n - rank) of ``{v : A v = 0}``.
    """
    n = matrix.shape[1]
    if matrix.shape[0] == 0 or n == 0:
        return np.zeros(n), np.eye(n)
    u, singular, vt = np.linalg.svd(matrix, full_matrices=True)
    rank = int(np.sum(singular > 1e-9 * max(float(singular.max(initial=0.0)), 1e-300)))
    coefficients = u.T @ rhs
    reachable, unreachable = coefficients[: len(singular)], coefficients[len(singular) :]
    grid = np.logspace(0.0, np.log10(damping), 25)[:, None]  # largest first
    # Well-posed directions keep the smallest damping; the discrepancy principle
    # chooses it for the ill-posed ones.
    lam = np.where(singular >= WELL_POSED, damping, grid)
    left = (lam / (singular**2 + lam)) ** DAMPING_ORDER
    residual = np.sqrt(np.sum((left * reachable) ** 2, axis=1) + np.sum(unreachable**2))
    meets = np.flatnonzero(residual <= tolerance)
    row = int(meets[0]) if len(meets) else len(grid) - 1
    filtered = np.divide(1.0 - left[row], singular, out=np.zeros_like(singular), where=singular > 0)
    return vt[: len(singular)].T @ (filtered * reachable), vt[rank:].T


def prioritised_solve(levels: list[tuple[np.ndarray, np.ndarray, float, float]], n: int) -> np.ndarray:
    """Minimum-norm z meeting ``A_i z = r_i`` level by level (damped), each in the null space of those above.

    Args:
        levels: [(A_i (R_i, n), r_i (R_i,), damping_i, tolerance_i)], highest priority first
            (see ``damped_solve``).
        n: number of unknowns.
    """
    z = np.zeros(n)
    span = np.eye(n)
    for matrix, rhs, damping, tolerance in levels:
        if span.shape[1] == 0:
            break
        if len(rhs) == 0:
            continue
        w, null = damped_solve(matrix @ span, rhs - matrix @ z, damping, tolerance)
        z = z + span @ w
        span = span @ null
    return z


def unit_rows(matrix: np.ndarray, rhs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Equations scaled to unit-norm rows (all-zero rows are dropped)."""
    norm = np.linalg.norm(matrix, axis=1)
    keep = norm > 0
    return matrix[keep] / norm[keep, None], rhs[keep] / norm[keep]


def _symmetry_rows(
    mirror: np.ndarray, axis: int, free: np.ndarray, active: np.ndarray, change: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``d_m - M d_k = M e_k - e_m`` for every mirror pair, where ``e`` is the
    change each part already carries (an edit) and ``M`` flips the plane axis.

    Args:
        mirror: (K,) partner of each part or -1; axis: the plane's axis.
        free: (K, 6) bool, coordinates being solved for; active: (K,) parts in the solve.
        change: (K, 6) change already made to each part (its edit; 0 for the others).

    Returns:
        (R, 6K) rows on the full parameter vector and (R,) right-hand sides.
    """
    n_parts = len(mirror)
    k = np.arange(n_parts)
    m = np.asarray(mirror, dtype=np.int64)
    keep = (m >= k) & active & active[np.maximum(m, 0)]
    k, m = k[keep], m[keep]
    flip = np.ones(PARAMS)
    flip[axis] = -1.0
    coords = np.arange(PARAMS)
    rows = np.zeros((len(k), PARAMS, PARAMS * n_parts))
    pair = np.arange(len(k))[:, None]
    rows[pair, coords, PARAMS * m[:, None] + coords] += 1.0
    rows[pair, coords, PARAMS * k[:, None] + coords] -= flip
    rhs = flip * change[k] - change[m]
    rows, rhs = rows.reshape(-1, PARAMS * n_parts), rhs.reshape(-1)
    involved = (np.abs(rows[:, free.reshape(-1)]) > 0).any(axis=1)
    return rows[involved], rhs[involved]


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
    reference: np.ndarray | None = None,
    yaw: float = 0.0,
) -> EditResult:
    """Re-attach every joint, changing the unedited parts as little as possible.

    Args:
        source_boxes: (K, 6) the source's undeformed boxes (its own frame).
        joint_pairs: (J, 2) connected parts; joint_points: (J, 3) in the source's frame.
        boxes: (K, 6) current boxes (after the user's edits), in a similar frame.
        locked: (K,) bool, the parts the user edited: held exactly.
        excluded: (K,) bool, parts left out of the solve (e.g. the user rotated
            them, which the deformation model cannot express): they keep their
            boxes and their joints are not enforced.
        mirror, symmetry_axis: the source's part mirror map and plane axis.
        keep_symmetry: mirror partners of edited parts change as the edits' mirror images.
        min_half_size: half-sizes never go below this (box units).
        reference: (K, 6) optional boxes before the edits, in the frame of ``boxes``.
        yaw: the fit's heading (``Candidate.yaw``, the parent's Z rotation): box centres
            are in the fit's frame, turned by ``yaw`` about Z, half-sizes along the parts'
            own axes (as ``Candidate.fitted_boxes`` and the add-on give them).

    Returns:
        An ``EditResult``; see the module docstring.
    """
    if yaw:  # solve in the source's orientation (joints do not depend on the pivot), turn back
        turn = rotation_z(float(yaw))
        result = keep_connected(
            source_boxes, joint_pairs, joint_points, _turned(boxes, turn.T), locked, excluded, mirror,
            symmetry_axis, keep_symmetry, min_half_size, None if reference is None else _turned(reference, turn.T),
        )  # fmt: skip
        result.boxes = _turned(result.boxes, turn)
        return result
    boxes = np.asarray(boxes, dtype=np.float64)
    n_parts = len(boxes)
    edited = np.asarray(locked, dtype=bool).copy()
    excluded = np.zeros(n_parts, bool) if excluded is None else np.asarray(excluded, dtype=bool).copy()
    edited &= ~excluded
    pairs = np.asarray(joint_pairs, dtype=np.int64).reshape(-1, 2)
    joint_points = np.asarray(joint_points, dtype=np.float64).reshape(-1, 3)
    active = ~(excluded[pairs[:, 0]] | excluded[pairs[:, 1]]) if len(pairs) else np.zeros(0, bool)
    diagonal = max(float(np.linalg.norm(2 * union_box(boxes)[3:])), 1e-12)

    # B x = (joint carried by part a) - (carried by part b), 3 rows per active joint.
    constraint = joint_constraint_matrix(source_boxes, pairs[active], joint_points[active], min_half_size)
    x0 = boxes.reshape(-1)
    joint_rhs = -(constraint @ x0)

    # Floor: the bottom of every unedited part standing on it stays where it is.
    base = boxes if reference is None else np.asarray(reference, dtype=np.float64)
    bottoms = base[:, 2] - base[:, 5]
    inside = ~excluded & ~edited if (~excluded & ~edited).any() else ~excluded
    floor = float(bottoms[inside].min(initial=np.inf)) if inside.any() else 0.0
    height = float((base[:, 2] + base[:, 5])[~excluded].max(initial=floor)) - floor
    grounded = np.flatnonzero(~excluded & ~edited & (bottoms <= floor + FLOOR_BAND * max(height, 1e-12)))
    floor_rows = np.zeros((len(grounded), PARAMS * n_parts))
    floor_rows[np.arange(len(grounded)), PARAMS * grounded + 2] = 1.0
    floor_rows[np.arange(len(grounded)), PARAMS * grounded + 5] = -1.0
    floor_rhs = bottoms[grounded] - (boxes[grounded, 2] - boxes[grounded, 5])

    use_symmetry = keep_symmetry and symmetry_axis >= 0 and mirror is not None
    mirror = np.full(n_parts, -1) if mirror is None else np.asarray(mirror, dtype=np.int64)
    change = np.zeros((n_parts, PARAMS))
    if use_symmetry:
        if reference is not None:
            change[edited] = boxes[edited] - base[edited]
        else:  # the edit's change estimated against the unedited partner's mirror image
            offset = symmetry_plane(boxes, mirror, symmetry_axis, edited=edited)
            has = edited & (mirror >= 0)
            has[has] &= ~edited[mirror[has]]
            change[has] = boxes[has] - mirror_box(boxes[mirror[has]], symmetry_axis, offset)
    follows = np.zeros(n_parts, bool)
    if use_symmetry:
        partners = mirror[edited & (mirror >= 0)]
        follows[partners] = True
        follows &= ~edited & ~excluded

    weight = np.tile(np.r_[np.full(3, MOVE_WEIGHT), np.full(3, SIZE_WEIGHT)], n_parts) / diagonal

    def solve(held: np.ndarray, soft_edits: bool) -> np.ndarray:
        """New parameters (6K,) with the coordinates ``held`` (K, 6) fixed."""
        free = ~held
        if soft_edits:  # the edited parts join the solve, at a high price
            free = free | edited[:, None]
        cols = np.flatnonzero(free.reshape(-1))
        # Whitened unknowns z = scale * d; every row divided by the diagonal is unit-free.
        scale = weight[cols] * np.where(edited.repeat(PARAMS)[cols], EDIT_WEIGHT, 1.0)
        levels = [(constraint[:, cols] / scale / diagonal, joint_rhs / diagonal, DAMPING, JOINT_TOLERANCE)]
        if soft_edits:  # keeping the edits comes right after the joints
            rows = np.flatnonzero(edited.repeat(PARAMS)[cols])
            levels.append((np.eye(len(cols))[rows], np.zeros(len(rows)), DAMPING, 0.0))
        levels.append((*unit_rows(floor_rows[:, cols] / scale, floor_rhs), FLOOR_DAMPING, JOINT_TOLERANCE))
        if use_symmetry:
            rows, rhs = _symmetry_rows(mirror, symmetry_axis, free, ~excluded, change)
            levels.append((*unit_rows(rows[:, cols] / scale, rhs), SYMMETRY_DAMPING, JOINT_TOLERANCE))
        x = x0.copy()
        x[cols] += prioritised_solve(levels, len(cols)) / scale
        return x

    def solve_with_bounds(soft_edits: bool) -> np.ndarray:
        """Solve; half-sizes that would collapse are held at their current value and the solve repeated."""
        held = np.repeat((edited | excluded)[:, None], PARAMS, axis=1)
        for _ in range(n_parts + 1):
            x = solve(held, soft_edits).reshape(n_parts, PARAMS)
            collapsing = np.zeros((n_parts, PARAMS), bool)
            collapsing[:, 3:] = x[:, 3:] < np.maximum(min_half_size, MIN_SHRINK * boxes[:, 3:])
            collapsing &= ~held
            if soft_edits:
                collapsing &= ~edited[:, None]
            if not collapsing.any():
                break
            held |= collapsing
        return x

    solved = solve_with_bounds(soft_edits=False)
    gaps = joint_gaps(source_boxes, solved, pairs, joint_points, min_half_size) * active
    bad = np.flatnonzero(gaps > FEASIBLE_GAP * diagonal)
    result = EditResult(solved, edited | follows, 0.0, gaps, edited.copy(), follows)
    if len(bad) == 0:
        result.boxes[excluded] = boxes[excluded]
        return result
    result.conflicts = _conflicts(pairs, bad, edited, solve, excluded, source_boxes, joint_points, min_half_size, gaps)
    solved = solve_with_bounds(soft_edits=True)
    solved[excluded] = boxes[excluded]
    solved[:, 3:] = np.maximum(solved[:, 3:], min_half_size)
    result.boxes = solved
    result.gaps = joint_gaps(source_boxes, solved, pairs, joint_points, min_half_size) * active
    result.lock_residual = float(np.abs(solved[edited] - boxes[edited]).max(initial=0.0))
    result.feasible = False
    result.message = conflict_message(result.conflicts, int(edited.sum()))
    return result


def _turned(boxes: np.ndarray, turn: np.ndarray) -> np.ndarray:
    """(K, 6) boxes with their centres rotated by ``turn`` (3, 3) about the origin."""
    out = np.array(boxes, dtype=np.float64, copy=True)
    out[:, :3] = out[:, :3] @ turn.T
    return out


def _conflicts(pairs, bad, edited, solve, excluded, source_boxes, joint_points, min_half_size, gaps):
    """(joint, a, b, edited part) for every open joint that releasing that edit would close."""
    n_parts = len(edited)
    out = []
    for e in np.flatnonzero(edited):
        held = np.repeat((edited | excluded)[:, None], PARAMS, axis=1)
        held[e] = False
        x = solve(held, False).reshape(n_parts, PARAMS)
        released = joint_gaps(source_boxes, x, pairs[bad], joint_points[bad], min_half_size)
        for j in bad[released < 0.5 * gaps[bad]]:
            out.append((int(j), int(pairs[j, 0]), int(pairs[j, 1]), int(e)))
    if not out:  # no single edit is to blame: every open joint against every edit
        out = [(int(j), int(pairs[j, 0]), int(pairs[j, 1]), int(e)) for j in bad for e in np.flatnonzero(edited)]
    return out


def conflict_message(conflicts: list[tuple[int, int, int, int]], n_edited: int, names: list[str] | None = None) -> str:
    """One line naming the joints the edits make impossible (part names when given)."""

    def name(k: int) -> str:
        return names[k] if names is not None and k < len(names) else f"part {k}"

    if not conflicts:
        return ""
    listed = "; ".join(
        f"joint {name(a)}-{name(b)} conflicts with the edit of {name(e)}" for _, a, b, e in conflicts[:4]
    )
    more = f" (and {len(conflicts) - 4} more)" if len(conflicts) > 4 else ""
    if n_edited <= 1:
        return f"this edit cannot keep every joint attached: {listed}{more}; the edited part gave way slightly"
    return f"your edits cannot all be kept with the joints attached: {listed}{more}; edited parts gave way slightly"
