"""Part contacts, the joint constraints they imply, and projection onto them.

Two parts are connected where their surfaces come within ``tolerance`` of
each other. Each connected pair gets one joint point (the mean of the
surface points that lie in the contact zone). A joint at ``p`` between parts
a and b stays attached after deformation when its position, carried along by
either part, agrees:

    c'_a + u_a * s'_a = c'_b + u_b * s'_b,   u_k = (p - c_k) / s_k

which is linear in the stacked parameters ``x = [c'_0, s'_0, c'_1, ...]``:
``B x = 0`` with B of shape (3J, 6K). An orthonormal basis N of the null
space of B spans every connectivity-preserving deformation, and
``N N^T x`` projects any deformation onto it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from backend.geometry.boxes import PARAMS_PER_PART, boxes_from_points, safe_half_sizes


@dataclass(frozen=True)
class Contacts:
    """Contact zones between labelled point sets.

    Attributes:
        pairs: (J, 2) int64 part indices, ``a < b``, sorted.
        point_sums: (J, 3) sum of the positions of the points in each zone.
        counts: (J,) number of points in each zone.
    """

    pairs: np.ndarray
    point_sums: np.ndarray
    counts: np.ndarray

    @property
    def joint_points(self) -> np.ndarray:
        """(J, 3) one joint per contact: the mean of its zone's points."""
        return self.point_sums / np.maximum(self.counts, 1)[:, None]

    @staticmethod
    def empty() -> Contacts:
        return Contacts(np.zeros((0, 2), np.int64), np.zeros((0, 3)), np.zeros(0, np.int64))

    def relabel(self, mapping: np.ndarray) -> Contacts:
        """Contacts between groups, where ``mapping[i]`` is the group of item i.

        Zones between items of the same group disappear; zones between the
        same two groups are pooled into one joint.
        """
        if len(self.pairs) == 0:
            return Contacts.empty()
        mapped = np.sort(np.asarray(mapping)[self.pairs], axis=1)
        keep = mapped[:, 0] != mapped[:, 1]
        mapped, sums, counts = mapped[keep], self.point_sums[keep], self.counts[keep]
        if len(mapped) == 0:
            return Contacts.empty()
        unique, inverse = np.unique(mapped, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        pooled_sums = np.zeros((len(unique), 3))
        np.add.at(pooled_sums, inverse, sums)
        pooled_counts = np.bincount(inverse, weights=counts, minlength=len(unique)).astype(np.int64)
        return Contacts(unique.astype(np.int64), pooled_sums, pooled_counts)


def _pair_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """(P,) distance from each point p[i] to triangle (a[i], b[i], c[i]).

    Closest point by Voronoi regions (Ericson, Real-Time Collision
    Detection, 5.1.5), vectorised over aligned (P, 3) arrays.
    """
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = np.einsum("ij,ij->i", ab, ap), np.einsum("ij,ij->i", ac, ap)
    bp = p - b
    d3, d4 = np.einsum("ij,ij->i", ab, bp), np.einsum("ij,ij->i", ac, bp)
    cp = p - c
    d5, d6 = np.einsum("ij,ij->i", ab, cp), np.einsum("ij,ij->i", ac, cp)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = va + vb + vc
        v = np.where(denom != 0, vb / denom, 0.0)
        w = np.where(denom != 0, vc / denom, 0.0)
        closest = a + ab * v[:, None] + ac * w[:, None]
        # Edge, then vertex regions; later assignments take precedence.
        t = np.where((d4 - d3) + (d5 - d6) != 0, (d4 - d3) / ((d4 - d3) + (d5 - d6)), 0.0)
        closest = np.where(((va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0))[:, None], b + (c - b) * t[:, None], closest)
        t = np.where(d2 - d6 != 0, d2 / (d2 - d6), 0.0)
        closest = np.where(((vb <= 0) & (d2 >= 0) & (d6 <= 0))[:, None], a + ac * t[:, None], closest)
        t = np.where(d1 - d3 != 0, d1 / (d1 - d3), 0.0)
        closest = np.where(((vc <= 0) & (d1 >= 0) & (d3 <= 0))[:, None], a + ab * t[:, None], closest)
    closest = np.where(((d6 >= 0) & (d5 <= d6))[:, None], c, closest)
    closest = np.where(((d3 >= 0) & (d4 <= d3))[:, None], b, closest)
    closest = np.where(((d1 <= 0) & (d2 <= 0))[:, None], a, closest)
    return np.linalg.norm(p - closest, axis=1)


def points_near_triangles(
    points: np.ndarray, triangles: np.ndarray, tolerance: float, chunk: int = 1_000_000
) -> np.ndarray:
    """(M,) mask of the points within ``tolerance`` of any triangle.

    The distance to a triangle's bounding box is a cheap lower bound, so the
    exact test runs only on the (point, triangle) pairs that pass it.
    """
    points = np.asarray(points, dtype=np.float64)
    near = np.zeros(len(points), dtype=bool)
    if len(triangles) == 0:
        return near
    lo, hi = triangles.min(axis=1), triangles.max(axis=1)
    step = max(1, chunk // len(triangles))
    for start in range(0, len(points), step):
        block = points[start : start + step]
        gap = np.maximum(0.0, np.maximum(lo[None] - block[:, None], block[:, None] - hi[None]))
        i, j = np.nonzero(np.einsum("mtk,mtk->mt", gap, gap) <= tolerance**2)
        if len(i) == 0:
            continue
        dist = _pair_distance(block[i], triangles[j, 0], triangles[j, 1], triangles[j, 2])
        near[start + np.unique(i[dist <= tolerance])] = True
    return near


def find_contacts(
    points: np.ndarray,
    labels: np.ndarray,
    n_parts: int,
    tolerance: float,
    triangles: np.ndarray | None = None,
    triangle_labels: np.ndarray | None = None,
    spacing: float = 0.0,
    chunk: int = 1_000_000,
) -> Contacts:
    """Find the pairs of labelled parts whose surfaces come within ``tolerance``.

    Only pairs whose boxes, grown by ``tolerance``, overlap are examined, so
    the cost follows the number of plausible contacts rather than K^2.
    Without triangles, distances are measured between points. With the
    parts' triangles, a point of one part is first matched against the other
    part's points with the looser bound ``tolerance + spacing`` (samples
    are ``spacing`` apart at most), and the survivors are then measured
    exactly against the other part's triangles, so contacts do not depend
    on how densely a large face happened to be sampled.

    Args:
        points: (N, 3) surface points (vertices and samples) in metres.
        labels: (N,) part index of each point.
        n_parts: K.
        tolerance: contact distance in metres.
        triangles: optional (T, 3, 3) corners of every triangle.
        triangle_labels: (T,) part index of each triangle.
        spacing: largest distance from a surface point to the nearest sample.
        chunk: bound on point-triangle pairs screened at once (memory).

    Returns:
        The contact zones, one per touching pair.
    """
    points = np.asarray(points, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    exact = triangles is not None
    boxes = boxes_from_points(points, labels, n_parts)
    lo = boxes[:, :3] - boxes[:, 3:] - tolerance
    hi = boxes[:, :3] + boxes[:, 3:] + tolerance
    overlap = np.all((lo[:, None, :] <= hi[None, :, :]) & (lo[None, :, :] <= hi[:, None, :]), axis=2)
    candidates = np.argwhere(np.triu(overlap, k=1))
    if len(candidates) == 0:
        return Contacts.empty()

    def group(values: np.ndarray) -> list[np.ndarray]:
        order = np.argsort(values, kind="stable")
        starts = np.searchsorted(values[order], np.arange(n_parts + 1))
        return [order[starts[k] : starts[k + 1]] for k in range(n_parts)]

    members = group(labels)
    part_triangles = group(np.asarray(triangle_labels, dtype=np.int64)) if exact else []
    trees: dict[int, cKDTree] = {}
    search = tolerance + (spacing if exact else 0.0)

    def tree(k: int) -> cKDTree:
        if k not in trees:
            trees[k] = cKDTree(points[members[k]])
        return trees[k]

    def near(a: int, b: int) -> np.ndarray:
        """Points of part a within tolerance of part b."""
        pts = points[members[a]]
        pts = pts[np.all((pts >= lo[b]) & (pts <= hi[b]), axis=1)]
        if len(pts) == 0:
            return pts
        dist, _ = tree(b).query(pts, k=1, distance_upper_bound=search)
        if not exact:
            return pts[np.isfinite(dist)]
        # A point within tolerance of one of b's surface points is within
        # tolerance of b's surface: only the uncertain band needs triangles.
        sure = pts[dist <= tolerance]
        unsure = pts[(dist > tolerance) & np.isfinite(dist)]
        if len(unsure) == 0:
            return sure
        tri = triangles[part_triangles[b]]
        zone_lo, zone_hi = unsure.min(axis=0) - tolerance, unsure.max(axis=0) + tolerance
        tri = tri[np.all((tri.max(axis=1) >= zone_lo) & (tri.min(axis=1) <= zone_hi), axis=1)]
        return np.concatenate([sure, unsure[points_near_triangles(unsure, tri, tolerance, chunk)]])

    pairs, sums, counts = [], [], []
    for a, b in candidates:
        if len(members[a]) == 0 or len(members[b]) == 0:
            continue
        zone = np.concatenate([near(a, b), near(b, a)])
        if len(zone):
            pairs.append((a, b))
            sums.append(zone.sum(axis=0))
            counts.append(len(zone))
    if not pairs:
        return Contacts.empty()
    return Contacts(np.asarray(pairs, np.int64), np.asarray(sums), np.asarray(counts, np.int64))


def joint_constraint_matrix(
    boxes: np.ndarray, pairs: np.ndarray, joint_points: np.ndarray, min_half_size: float
) -> np.ndarray:
    """The matrix B (3J, 6K) with ``B x = 0`` iff every joint stays attached.

    ``B x`` is, for each joint, where part a carries it minus where part b
    carries it (3 rows per joint, in the units of ``x``).

    Args:
        boxes: (K, 6) original part boxes.
        pairs: (J, 2) connected part indices.
        joint_points: (J, 3) joint positions on the original shape.
        min_half_size: floor for half-sizes of flat parts (metres).
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    points = np.asarray(joint_points, dtype=np.float64).reshape(-1, 3)
    n_joints = len(pairs)
    constraint = np.zeros((n_joints, 3, PARAMS_PER_PART * len(boxes)))
    half = safe_half_sizes(boxes[:, 3:], min_half_size)
    joint = np.arange(n_joints)[:, None]
    axis = np.arange(3)[None, :]
    for side, sign in ((0, 1.0), (1, -1.0)):
        part = pairs[:, side]
        local = (points - boxes[part, :3]) / half[part]
        col = PARAMS_PER_PART * part[:, None] + axis
        constraint[joint, axis, col] += sign
        constraint[joint, axis, col + 3] += sign * local
    return constraint.reshape(3 * n_joints, PARAMS_PER_PART * len(boxes))


def null_space_basis(constraint: np.ndarray, n_params: int, rtol: float = 1e-9) -> np.ndarray:
    """Orthonormal basis (n_params, D) of ``{x : constraint @ x = 0}``."""
    if constraint.size == 0:
        return np.eye(n_params)
    _, singular, vt = np.linalg.svd(constraint, full_matrices=True)
    rank = int(np.sum(singular > rtol * max(singular.max(initial=0.0), 1e-300)))
    return np.ascontiguousarray(vt[rank:].T)


def joint_gaps(
    boxes: np.ndarray, new_boxes: np.ndarray, pairs: np.ndarray, joint_points: np.ndarray, min_half_size: float
) -> np.ndarray:
    """(J,) distance (metres) between where each joint lands when carried by either part."""
    boxes = np.asarray(boxes, dtype=np.float64)
    new_boxes = np.asarray(new_boxes, dtype=np.float64)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if len(pairs) == 0:
        return np.zeros(0)
    half = safe_half_sizes(boxes[:, 3:], min_half_size)
    p = np.asarray(joint_points, dtype=np.float64)
    ends = []
    for side in (0, 1):
        k = pairs[:, side]
        ends.append(new_boxes[k, :3] + (p - boxes[k, :3]) / half[k] * new_boxes[k, 3:])
    return np.linalg.norm(ends[0] - ends[1], axis=1)
