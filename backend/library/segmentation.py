"""Grouping a file's pieces into the deformable parts of a source.

Real models come as many pieces: screws, hinges, handles, single planks.
The deformation model wants a handful of meaningful parts, so pieces are
merged in two passes:

1. Tiny pieces (box diagonal under ``min_part_fraction`` of the shape's)
   join the touching piece whose box grows least by taking them in,
   preferring pieces that are not tiny themselves; a tiny piece that
   touches nothing joins the nearest one.
2. While more than ``max_parts`` remain, the touching pair whose union box
   adds the least volume is merged (so four back slats become one back
   long before the back joins the seat); pairs that do not touch are
   considered only when no touching pair is left.
"""

from __future__ import annotations

import numpy as np

from backend.geometry.connectivity import Contacts


class _Groups:
    """Union of pieces into groups, with their boxes and adjacency."""

    def __init__(self, boxes: np.ndarray, pairs: np.ndarray, min_half_size: float):
        self.lo = boxes[:, :3] - boxes[:, 3:]
        self.hi = boxes[:, :3] + boxes[:, 3:]
        self.alive = np.ones(len(boxes), dtype=bool)
        self.parent = np.arange(len(boxes))
        self.min_half_size = min_half_size
        self.neighbours: list[set[int]] = [set() for _ in range(len(boxes))]
        for a, b in np.asarray(pairs, dtype=np.int64).reshape(-1, 2):
            self.neighbours[a].add(int(b))
            self.neighbours[b].add(int(a))

    @property
    def count(self) -> int:
        return int(self.alive.sum())

    def diagonals(self) -> np.ndarray:
        return np.linalg.norm(self.hi - self.lo, axis=1)

    def volumes(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        return np.prod(np.maximum(hi - lo, 2.0 * self.min_half_size), axis=-1)

    def growth(self, a: int, others: np.ndarray) -> np.ndarray:
        """Volume the union box of ``a`` with each of ``others`` adds over both boxes."""
        lo = np.minimum(self.lo[a], self.lo[others])
        hi = np.maximum(self.hi[a], self.hi[others])
        return (
            self.volumes(lo, hi) - self.volumes(self.lo[others], self.hi[others]) - self.volumes(self.lo[a], self.hi[a])
        )

    def gaps(self, a: int, others: np.ndarray) -> np.ndarray:
        """Distance between the box of ``a`` and each of ``others`` (0 if they overlap)."""
        separation = np.maximum(0.0, np.maximum(self.lo[others] - self.hi[a], self.lo[a] - self.hi[others]))
        return np.linalg.norm(separation, axis=1)

    def merge(self, keep: int, gone: int) -> None:
        self.lo[keep] = np.minimum(self.lo[keep], self.lo[gone])
        self.hi[keep] = np.maximum(self.hi[keep], self.hi[gone])
        self.alive[gone] = False
        self.parent[self.parent == gone] = keep
        moved = self.neighbours[gone]
        self.neighbours[gone] = set()
        for n in moved:
            self.neighbours[n].discard(gone)
            if n != keep:
                self.neighbours[n].add(keep)
                self.neighbours[keep].add(n)
        self.neighbours[keep].discard(keep)

    def best_partner(self, a: int, min_diagonal: float = 0.0) -> int:
        """The group ``a`` should join: a touching one (preferring those of at
        least ``min_diagonal``, so screws join the leg rather than each
        other) whose box grows least, else the nearest one."""
        diagonals = self.diagonals()
        touching = np.array(sorted(self.neighbours[a]), dtype=np.int64)
        if len(touching):
            large = touching[diagonals[touching] >= min_diagonal]
            touching = large if len(large) else touching
            return int(touching[np.argmin(self.growth(a, touching))])
        others = np.flatnonzero(self.alive)
        others = others[others != a]
        large = others[diagonals[others] >= min_diagonal]
        others = large if len(large) else others  # floating bolts join a real part, not each other
        return int(others[np.argmin(self.gaps(a, others))])


def group_pieces(
    boxes: np.ndarray,
    contacts: Contacts,
    diagonal: float,
    max_parts: int = 16,
    min_part_fraction: float = 0.04,
) -> np.ndarray:
    """Assign every piece to a part.

    Args:
        boxes: (P, 6) piece boxes ``[centre, half_size]`` in metres.
        contacts: contacts between pieces.
        diagonal: the whole shape's bounding-box diagonal (metres).
        max_parts: the most parts a source may have (>= 1).
        min_part_fraction: pieces with a smaller box diagonal, relative to
            ``diagonal``, are merged into a neighbour.

    Returns:
        (P,) part index of each piece; parts are numbered by their first piece.
    """
    if max_parts < 1:
        raise ValueError("max_parts must be at least 1")
    boxes = np.asarray(boxes, dtype=np.float64)
    groups = _Groups(boxes, contacts.pairs, min_half_size=1e-3 * max(diagonal, 1e-9))
    threshold = min_part_fraction * diagonal

    while groups.count > 1:
        diagonals = np.where(groups.alive, groups.diagonals(), np.inf)
        smallest = int(np.argmin(diagonals))
        if diagonals[smallest] >= threshold:
            break
        groups.merge(groups.best_partner(smallest, threshold), smallest)

    while groups.count > max_parts:
        best: tuple[float, int, int] | None = None
        for a in np.flatnonzero(groups.alive):
            touching = np.array([n for n in groups.neighbours[a] if n > a], dtype=np.int64)
            if len(touching):
                growth = groups.growth(int(a), touching)
                i = int(np.argmin(growth))
                if best is None or growth[i] < best[0]:
                    best = (float(growth[i]), int(a), int(touching[i]))
        if best is None:
            alive = np.flatnonzero(groups.alive)
            smallest = int(alive[np.argmin(groups.diagonals()[alive])])
            partner = groups.best_partner(smallest)
            best = (0.0, partner, smallest)
        _, a, b = best
        keep, gone = min(a, b), max(a, b)
        groups.merge(keep, gone)

    _, first, labels = np.unique(groups.parent, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[labels.reshape(-1)]
