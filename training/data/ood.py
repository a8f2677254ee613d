"""A second furniture generator, written independently of ``training.data.furniture``, for out-of-distribution checks.

Nothing here is shared with the training generator's shape code: other families (splayed and slanted legs, round
and oval tops, spindle backs, bar stools, benches, desks with a drawer pedestal, bookshelves with uneven shelves,
leaning ladder shelves, graduated chests, wardrobes, swivel bases with separate spokes, small knobs), other
proportions (club armchairs twice as wide as a training chair, benches up to 1.8 m, bar stools with 0.8 m seats)
and other primitives (trimesh's own cylinders and tori, frusta and slanted bars built here).

Frame: metres, Z up, front facing -Y, resting on z = 0 (Blender's world; ``write_glb`` turns it into glTF's Y-up
with ``backend.geometry.frames.Z_UP_TO_Y_UP``). Parts meant to be joined overlap by a few millimetres, so the
indexer's contact search joins them. Every shape is a deterministic function of ``(category, seed, index)``.

    shape = generate("chair", seed=0, index=3)     # OODShape: category, family, parts (name -> trimesh)
    write_glb(shape, Path("chair_3.glb"))           # one glTF node per part
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trimesh

from backend.geometry.frames import Z_UP_TO_Y_UP

CATEGORIES = ("chair", "table", "storage")
# Salt of the random streams: the same (seed, index) never reproduces a training generator stream.
_SALT = 0x00D5E7
OVERLAP = 0.004  # metres that joined parts run into each other


@dataclass
class OODShape:
    """A generated shape: ``parts`` maps a part name to its mesh (Z up, metres)."""

    category: str
    family: str
    parts: dict[str, trimesh.Trimesh] = field(default_factory=dict)

    def add(self, name: str, mesh: trimesh.Trimesh) -> str:
        if name in self.parts:
            raise ValueError(f"duplicate part name {name}")
        self.parts[name] = mesh
        return name

    def bounds(self) -> np.ndarray:
        """(2, 3) lowest and highest corner of all parts."""
        v = np.concatenate([m.vertices for m in self.parts.values()])
        return np.stack([v.min(axis=0), v.max(axis=0)])

    def mesh_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All parts as one mesh: vertices (V, 3) and faces (F, 3)."""
        meshes = list(self.parts.values())
        offsets = np.cumsum([0] + [len(m.vertices) for m in meshes[:-1]])
        return np.concatenate([m.vertices for m in meshes]), np.concatenate(
            [m.faces + o for m, o in zip(meshes, offsets)]
        )


# -- primitives ------------------------------------------------------------------------------------
def block(lo, hi) -> trimesh.Trimesh:
    """Axis-aligned box between corners ``lo`` and ``hi``."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    return trimesh.creation.box(extents=hi - lo, transform=trimesh.transformations.translation_matrix((lo + hi) / 2))


def rod(a, b, radius: float, sections: int = 14) -> trimesh.Trimesh:
    """Round rod from point ``a`` to point ``b``."""
    return trimesh.creation.cylinder(radius=radius, segment=np.array([a, b], float), sections=sections)


def _frame(axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors perpendicular to ``axis`` and to each other."""
    helper = np.array([1.0, 0.0, 0.0]) if abs(axis[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = np.cross(axis, helper)
    u /= np.linalg.norm(u)
    return u, np.cross(axis, u)


def frustum(a, b, radius_a: float, radius_b: float, sections: int = 14) -> trimesh.Trimesh:
    """Tapered round leg: radius ``radius_a`` at ``a``, ``radius_b`` at ``b``."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    axis = (b - a) / np.linalg.norm(b - a)
    u, v = _frame(axis)
    angle = np.linspace(0.0, 2 * np.pi, sections, endpoint=False)
    ring = np.cos(angle)[:, None] * u + np.sin(angle)[:, None] * v
    return trimesh.convex.convex_hull(np.concatenate([a + radius_a * ring, b + radius_b * ring]))


def slanted_bar(a, b, half_width: float, half_thick: float, across=(1.0, 0.0, 0.0)) -> trimesh.Trimesh:
    """Rectangular bar from ``a`` to ``b``, ``half_width`` along ``across`` (made perpendicular to the bar)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    axis = (b - a) / np.linalg.norm(b - a)
    side = np.asarray(across, float) - np.dot(across, axis) * axis
    side /= np.linalg.norm(side)
    normal = np.cross(axis, side)
    corners = [p + s * half_width * side + t * half_thick * normal for p in (a, b) for s in (-1, 1) for t in (-1, 1)]
    return trimesh.convex.convex_hull(np.array(corners))


def disc(centre_xy, z0: float, z1: float, radius_x: float, radius_y: float, sections: int = 48) -> trimesh.Trimesh:
    """Round (or oval when the radii differ) slab from ``z0`` to ``z1``."""
    mesh = trimesh.creation.cylinder(radius=1.0, height=z1 - z0, sections=sections)
    mesh.apply_scale((radius_x, radius_y, 1.0))
    mesh.apply_translation((centre_xy[0], centre_xy[1], (z0 + z1) / 2))
    return mesh


def ring(z: float, radius: float, tube: float) -> trimesh.Trimesh:
    """Horizontal torus (a footrest ring) at height ``z``."""
    mesh = trimesh.creation.torus(major_radius=radius, minor_radius=tube, major_sections=32, minor_sections=8)
    mesh.apply_translation((0.0, 0.0, z))
    return mesh


def knob(x: float, z: float, front_y: float, radius: float) -> trimesh.Trimesh:
    """Small round knob sticking out of a front face at ``y = front_y`` towards -Y."""
    return rod((x, front_y + OVERLAP, z), (x, front_y - 2.2 * radius, z), radius, sections=10)


def _splayed(top_xy, top_z: float, splay: float) -> tuple[np.ndarray, np.ndarray]:
    """Foot and top of a leg whose foot lies ``splay`` times farther from the centre than its top."""
    top = np.array([top_xy[0], top_xy[1], top_z])
    return np.array([top_xy[0] * splay, top_xy[1] * splay, 0.0]), top


def _along(foot: np.ndarray, top: np.ndarray, z: float) -> np.ndarray:
    """The point of the segment foot-top at height ``z``."""
    return foot + (top - foot) * (z - foot[2]) / (top[2] - foot[2])


# -- chairs (seating: chairs, stools, benches) -----------------------------------------------------
def windsor(rng: np.random.Generator) -> OODShape:
    """Round or oval seat, four splayed tapered legs, optional side stretchers, a spindle back under a crest rail."""
    s = OODShape("chair", "windsor")
    height, thick = rng.uniform(0.43, 0.48), rng.uniform(0.035, 0.055)
    rx = rng.uniform(0.21, 0.27)
    ry = rx * rng.uniform(0.82, 1.0)
    s.add("seat", disc((0, 0), height - thick, height, rx, ry))
    splay, radius = rng.uniform(1.15, 1.4), rng.uniform(0.014, 0.022)
    legs = {}
    for name, sx, sy in (("front_left", -1, -1), ("front_right", 1, -1), ("back_left", -1, 1), ("back_right", 1, 1)):
        foot, top = _splayed((sx * 0.62 * rx, sy * 0.6 * ry), height - thick + OVERLAP, splay)
        legs[name] = (foot, top)
        s.add(f"leg_{name}", frustum(foot, top, radius * 0.7, radius))
    if rng.random() < 0.6:
        z = rng.uniform(0.12, 0.2)
        for side in ("left", "right"):
            s.add(f"stretcher_{side}", rod(_along(*legs[f"front_{side}"], z), _along(*legs[f"back_{side}"], z), 0.01))
    top = height + rng.uniform(0.38, 0.55)
    rail_h = rng.uniform(0.05, 0.08)
    n = int(rng.integers(3, 8))
    spread = rng.uniform(0.5, 0.9)
    angles = np.linspace(-spread, spread, n)
    xs, ys = 0.82 * rx * np.sin(angles), 0.82 * ry * np.cos(angles)
    spindle_r = rng.uniform(0.007, 0.011)
    for i, (x, y) in enumerate(zip(xs, ys)):
        s.add(f"spindle_{i}", rod((x, y, height - OVERLAP), (x, y, top - rail_h / 2), spindle_r, sections=8))
    s.add("crest_rail", block((xs[0] - 0.03, ys.min() - 0.02, top - rail_h), (xs[-1] + 0.03, ys.max() + 0.02, top)))
    return s


def club(rng: np.random.Generator) -> OODShape:
    """A club armchair: wide low base, arm blocks down to the base, a thick back, cushions, optional bun feet."""
    s = OODShape("chair", "club")
    w, d = rng.uniform(0.72, 0.98), rng.uniform(0.72, 0.95)
    z0 = rng.uniform(0.06, 0.12) if rng.random() < 0.6 else 0.0
    base_top = z0 + rng.uniform(0.15, 0.25)
    arm_w, arm_h = rng.uniform(0.1, 0.22), rng.uniform(0.55, 0.68)
    back_t, top = rng.uniform(0.15, 0.25), rng.uniform(0.75, 0.95)
    s.add(
        "base",
        block((-w / 2 + arm_w - OVERLAP, -d / 2, z0), (w / 2 - arm_w + OVERLAP, d / 2 - back_t + OVERLAP, base_top)),
    )
    for side, sign in (("left", -1), ("right", 1)):
        x0, x1 = sorted((sign * w / 2, sign * (w / 2 - arm_w)))
        s.add(f"arm_{side}", block((x0, -d / 2, z0), (x1, d / 2, arm_h)))
    s.add("back", block((-w / 2 + arm_w - OVERLAP, d / 2 - back_t, z0), (w / 2 - arm_w + OVERLAP, d / 2, top)))
    cushion_top = base_top + rng.uniform(0.08, 0.15)
    s.add(
        "seat_cushion",
        block((-w / 2 + arm_w, -d / 2 + 0.02, base_top - OVERLAP), (w / 2 - arm_w, d / 2 - back_t, cushion_top)),
    )
    if rng.random() < 0.5:
        y = d / 2 - back_t
        s.add(
            "back_cushion",
            block(
                (-w / 2 + arm_w, y - rng.uniform(0.08, 0.14), cushion_top - OVERLAP),
                (w / 2 - arm_w, y + OVERLAP, top - 0.05),
            ),
        )
    if z0 > 0:
        r = rng.uniform(0.025, 0.045)
        for name, sx, sy in (
            ("front_left", -1, -1),
            ("front_right", 1, -1),
            ("back_left", -1, 1),
            ("back_right", 1, 1),
        ):
            s.add(
                f"foot_{name}",
                disc((sx * (w / 2 - r - 0.02), sy * (d / 2 - r - 0.02)), 0.0, z0 + OVERLAP, r, r, sections=16),
            )
    return s


def tulip(rng: np.random.Generator) -> OODShape:
    """Round seat on a trumpet column; a disc foot or a swivel base of four separate spokes; a shell back."""
    s = OODShape("chair", "tulip")
    height, thick = rng.uniform(0.44, 0.49), rng.uniform(0.04, 0.07)
    r = rng.uniform(0.2, 0.25)
    s.add("seat", disc((0, 0), height - thick, height, r, r * rng.uniform(0.9, 1.0)))
    swivel = rng.random() < 0.5
    foot_top = 0.05 if swivel else rng.uniform(0.02, 0.04)
    s.add(
        "column",
        frustum(
            (0, 0, foot_top - OVERLAP),
            (0, 0, height - thick + OVERLAP),
            rng.uniform(0.05, 0.1),
            rng.uniform(0.025, 0.04),
        ),
    )
    if swivel:
        reach = rng.uniform(0.26, 0.33)
        for i, a in enumerate(np.pi / 4 + np.arange(4) * np.pi / 2):
            s.add(
                f"spoke_{i}",
                slanted_bar(
                    (0, 0, 0.035), (reach * np.cos(a), reach * np.sin(a), 0.018), 0.02, 0.016, across=(0, 0, 1)
                ),
            )
    else:
        fr = rng.uniform(0.22, 0.29)
        s.add("foot", disc((0, 0), 0.0, foot_top, fr, fr))
    bw, bh, bt = rng.uniform(0.32, 0.44), rng.uniform(0.3, 0.45), rng.uniform(0.02, 0.04)
    y0 = 0.55 * r
    s.add("back", block((-bw / 2, y0, height - OVERLAP), (bw / 2, y0 + bt, height + bh)))
    return s


def bar_stool(rng: np.random.Generator) -> OODShape:
    """High round seat, three or four splayed legs, a footrest ring or footrest bars, an optional low back."""
    s = OODShape("chair", "bar_stool")
    height, thick = rng.uniform(0.62, 0.8), rng.uniform(0.03, 0.06)
    r = rng.uniform(0.16, 0.2)
    s.add("seat", disc((0, 0), height - thick, height, r, r))
    n = int(rng.choice([3, 4]))
    splay, radius = rng.uniform(1.3, 1.75), rng.uniform(0.012, 0.018)
    legs = []
    for i, a in enumerate(np.pi / 2 + np.arange(n) * 2 * np.pi / n + (np.pi / n if n == 4 else 0.0)):
        foot, top = _splayed((0.6 * r * np.cos(a), 0.6 * r * np.sin(a)), height - thick + OVERLAP, splay)
        legs.append((foot, top))
        s.add(f"leg_{i}", rod(foot, top, radius, sections=10))
    z = rng.uniform(0.22, 0.32)
    if rng.random() < 0.5:
        at = _along(*legs[0], z)
        s.add("footrest", ring(z, float(np.hypot(at[0], at[1])), 0.011))
    else:
        for i in range(n):
            s.add(f"footrest_{i}", rod(_along(*legs[i], z), _along(*legs[(i + 1) % n], z), 0.01, sections=8))
    if rng.random() < 0.4:
        back_z = height + rng.uniform(0.18, 0.28)
        for side, x in (("left", -0.45 * r), ("right", 0.45 * r)):
            s.add(
                f"back_post_{side}", rod((x, 0.7 * r, height - OVERLAP), (x, 0.7 * r, back_z - 0.02), 0.01, sections=8)
            )
        s.add("back", block((-0.6 * r, 0.7 * r - 0.015, back_z - 0.07), (0.6 * r, 0.7 * r + 0.015, back_z)))
    return s


def bench(rng: np.random.Generator) -> OODShape:
    """Long seat on two panel ends or four to six round legs; optional lower shelf and backrest."""
    s = OODShape("chair", "bench")
    w, d = rng.uniform(1.0, 1.8), rng.uniform(0.3, 0.45)
    height, thick = rng.uniform(0.42, 0.48), rng.uniform(0.03, 0.06)
    s.add("seat", block((-w / 2, -d / 2, height - thick), (w / 2, d / 2, height)))
    inset = rng.uniform(0.03, 0.12)
    shelf_z = rng.uniform(0.1, 0.16)
    if rng.random() < 0.5:
        t = rng.uniform(0.03, 0.05)
        for side, x in (("left", -w / 2 + inset), ("right", w / 2 - inset - t)):
            s.add(f"end_{side}", block((x, -0.45 * d, 0.0), (x + t, 0.45 * d, height - thick + OVERLAP)))
        span = (-w / 2 + inset + t - OVERLAP, w / 2 - inset - t + OVERLAP)
    else:
        r = rng.uniform(0.016, 0.026)
        xs = [-w / 2 + inset + r, w / 2 - inset - r] + ([0.0] if w > 1.4 else [])
        for i, x in enumerate(xs):
            for end, y in (("front", -d / 2 + inset + r), ("back", d / 2 - inset - r)):
                s.add(f"leg_{end}_{i}", disc((x, y), 0.0, height - thick + OVERLAP, r, r, sections=14))
        span = (-w / 2 + inset, w / 2 - inset)
    if rng.random() < 0.45:
        s.add("shelf", block((span[0], -0.4 * d, shelf_z), (span[1], 0.4 * d, shelf_z + rng.uniform(0.015, 0.03))))
    if rng.random() < 0.4:
        back_top = height + rng.uniform(0.3, 0.45)
        for side, x in (("left", -w / 2 + 0.06), ("right", w / 2 - 0.08)):
            s.add(f"back_post_{side}", block((x, d / 2 - 0.04, height - OVERLAP), (x + 0.02, d / 2 - 0.02, back_top)))
        s.add(
            "backrest",
            block(
                (-w / 2 + 0.04, d / 2 - 0.02 - OVERLAP, back_top - rng.uniform(0.1, 0.18)),
                (w / 2 - 0.04, d / 2, back_top),
            ),
        )
    return s


# -- tables ----------------------------------------------------------------------------------------
def splayed_round(rng: np.random.Generator) -> OODShape:
    """Round or oval top on three or four splayed tapered legs, optional lower disc shelf (dining or coffee)."""
    s = OODShape("table", "splayed_round")
    coffee = rng.random() < 0.35
    height = rng.uniform(0.38, 0.5) if coffee else rng.uniform(0.68, 0.76)
    thick = rng.uniform(0.025, 0.045)
    rx = rng.uniform(0.35, 0.6)
    ry = rx * (rng.uniform(0.55, 0.8) if rng.random() < 0.4 else 1.0)
    s.add("top", disc((0, 0), height - thick, height, rx, ry))
    n = int(rng.choice([3, 4]))
    splay, radius = rng.uniform(1.2, 1.5), rng.uniform(0.018, 0.03)
    legs = []
    for i, a in enumerate(np.pi / 4 + np.arange(n) * 2 * np.pi / n):
        foot, top = _splayed((0.5 * rx * np.cos(a), 0.5 * ry * np.sin(a)), height - thick + OVERLAP, splay)
        legs.append((foot, top))
        s.add(f"leg_{i}", frustum(foot, top, radius * 0.6, radius))
    if rng.random() < 0.35:
        z = rng.uniform(0.12, 0.45 * height)
        at = _along(*legs[0], z)
        shelf_r = float(np.hypot(at[0] / rx, at[1] / ry))
        s.add("shelf", disc((0, 0), z, z + 0.02, shelf_r * rx + radius, shelf_r * ry + radius))
    return s


def tripod(rng: np.random.Generator) -> OODShape:
    """Round top on a central column with three or four slanted feet, optional square support plate."""
    s = OODShape("table", "tripod")
    height, thick = rng.uniform(0.55, 0.76), rng.uniform(0.02, 0.04)
    r = rng.uniform(0.3, 0.5)
    s.add("top", disc((0, 0), height - thick, height, r, r))
    column_r = rng.uniform(0.03, 0.07)
    under = height - thick
    if rng.random() < 0.5:
        plate = rng.uniform(0.12, 0.2)
        s.add("plate", block((-plate, -plate, under - 0.025), (plate, plate, under + OVERLAP)))
        under -= 0.025
    knee = rng.uniform(0.12, 0.28)
    s.add("column", disc((0, 0), knee - 0.03, under + OVERLAP, column_r, column_r, sections=20))
    n, reach = int(rng.choice([3, 4])), rng.uniform(0.28, 0.42)
    for i, a in enumerate(np.pi / 2 + np.arange(n) * 2 * np.pi / n):
        direction = np.array([np.cos(a), np.sin(a), 0.0])
        s.add(
            f"foot_{i}",
            slanted_bar(
                direction * 0.5 * column_r + (0, 0, knee),
                direction * reach + (0, 0, 0.02),
                0.018,
                0.02,
                across=(-direction[1], direction[0], 0),
            ),
        )
    return s


def x_base(rng: np.random.Generator) -> OODShape:
    """Rectangular top on two X frames of crossed slanted boards joined by a long stretcher."""
    s = OODShape("table", "x_base")
    w, d = rng.uniform(1.2, 2.0), rng.uniform(0.7, 1.0)
    height, thick = rng.uniform(0.72, 0.77), rng.uniform(0.03, 0.05)
    s.add("top", block((-w / 2, -d / 2, height - thick), (w / 2, d / 2, height)))
    x = w / 2 - rng.uniform(0.12, 0.25)
    half_w, half_t = rng.uniform(0.025, 0.045), rng.uniform(0.015, 0.025)
    y = 0.4 * d
    under = height - thick + OVERLAP
    for side, sx in (("left", -x), ("right", x)):
        s.add(f"board_{side}_a", slanted_bar((sx, -y, 0.02), (sx, y, under - 0.01), half_w, half_t))
        s.add(f"board_{side}_b", slanted_bar((sx, y, 0.02), (sx, -y, under - 0.01), half_w, half_t))
    z = (0.02 + under - 0.01) / 2
    s.add("stretcher", block((-x, -0.025, z - 0.025), (x, 0.025, z + 0.025)))
    return s


def desk(rng: np.random.Generator) -> OODShape:
    """Writing desk: top, a drawer pedestal with knobs on one side, a panel or two legs on the other, modesty panel."""
    s = OODShape("table", "desk")
    w, d = rng.uniform(1.1, 1.7), rng.uniform(0.55, 0.8)
    height, thick = rng.uniform(0.72, 0.77), rng.uniform(0.025, 0.04)
    under = height - thick
    s.add("top", block((-w / 2, -d / 2, under), (w / 2, d / 2, height)))
    pw = rng.uniform(0.35, 0.45)
    side = rng.choice([-1, 1])
    x0, x1 = sorted((side * (w / 2 - 0.02), side * (w / 2 - 0.02 - pw)))
    front = -d / 2 + 0.03
    s.add("pedestal", block((x0, front, 0.0), (x1, d / 2 - 0.03, under + OVERLAP)))
    n = int(rng.integers(2, 5))
    edges = np.linspace(0.05, under - 0.01, n + 1)
    for i in range(n):
        s.add(
            f"drawer_{i}",
            block((x0 + 0.005, front - 0.018, edges[i] + 0.004), (x1 - 0.005, front + OVERLAP, edges[i + 1] - 0.004)),
        )
        s.add(f"knob_{i}", knob((x0 + x1) / 2, (edges[i] + edges[i + 1]) / 2, front - 0.018, 0.012))
    other = -side * (w / 2 - 0.05)
    if rng.random() < 0.5:
        a, b = sorted((other, other + side * 0.03))
        s.add("panel_leg", block((a, -d / 2 + 0.05, 0.0), (b, d / 2 - 0.05, under + OVERLAP)))
    else:
        for end, y in (("front", -d / 2 + 0.06), ("back", d / 2 - 0.06)):
            s.add(f"leg_{end}", disc((other, y), 0.0, under + OVERLAP, 0.022, 0.022, sections=14))
    if rng.random() < 0.5:
        inner = sorted((other, side * (w / 2 - 0.02 - pw)))
        s.add(
            "modesty_panel",
            block((inner[0], d / 2 - 0.07, under - rng.uniform(0.25, 0.4)), (inner[1], d / 2 - 0.05, under + OVERLAP)),
        )
    return s


def console(rng: np.random.Generator) -> OODShape:
    """Tall narrow console table on four thin legs, an apron drawer and an optional lower shelf."""
    s = OODShape("table", "console")
    w, d = rng.uniform(0.9, 1.4), rng.uniform(0.28, 0.4)
    height, thick = rng.uniform(0.76, 0.86), rng.uniform(0.02, 0.035)
    under = height - thick
    s.add("top", block((-w / 2, -d / 2, under), (w / 2, d / 2, height)))
    r, inset = rng.uniform(0.012, 0.02), rng.uniform(0.02, 0.05)
    tapered = rng.random() < 0.5
    xs, ys = (-w / 2 + inset + r, w / 2 - inset - r), (-d / 2 + inset + r, d / 2 - inset - r)
    for name, x, y in ((f"leg_{i}{j}", x, y) for i, x in enumerate(xs) for j, y in enumerate(ys)):
        mesh = (
            frustum((x, y, 0.0), (x, y, under + OVERLAP), r * 0.6, r)
            if tapered
            else rod((x, y, 0.0), (x, y, under + OVERLAP), r)
        )
        s.add(name, mesh)
    apron_h = rng.uniform(0.08, 0.14)
    s.add("apron", block((xs[0], ys[0] - r, under - apron_h), (xs[1], ys[1] + r, under + OVERLAP)))
    s.add(
        "drawer",
        block((-0.3 * w, ys[0] - r - 0.016, under - apron_h + 0.01), (0.3 * w, ys[0] - r + OVERLAP, under - 0.01)),
    )
    s.add("knob", knob(0.0, under - apron_h / 2, ys[0] - r - 0.016, 0.01))
    if rng.random() < 0.6:
        z = rng.uniform(0.12, 0.25)
        s.add("shelf", block((xs[0] - r, ys[0] - r, z), (xs[1] + r, ys[1] + r, z + 0.02)))
    return s


# -- storage ---------------------------------------------------------------------------------------
def bookshelf(rng: np.random.Generator) -> OODShape:
    """Tall open bookshelf with unevenly spaced shelves, optional back, plinth and one vertical divider."""
    s = OODShape("storage", "bookshelf")
    w, d, h = rng.uniform(0.6, 1.2), rng.uniform(0.24, 0.38), rng.uniform(1.2, 2.0)
    p = rng.uniform(0.016, 0.03)
    s.add("side_left", block((-w / 2, -d / 2, 0.0), (-w / 2 + p, d / 2, h)))
    s.add("side_right", block((w / 2 - p, -d / 2, 0.0), (w / 2, d / 2, h)))
    s.add("top", block((-w / 2 - 0.01, -d / 2 - 0.01, h - OVERLAP), (w / 2 + 0.01, d / 2, h + p)))
    kick = rng.uniform(0.05, 0.1) if rng.random() < 0.6 else 0.0
    inner = (-w / 2 + p - OVERLAP, w / 2 - p + OVERLAP)
    if kick:
        s.add("plinth", block((inner[0], -d / 2 + 0.01, 0.0), (inner[1], -d / 2 + 0.01 + p, kick + OVERLAP)))
    s.add("bottom", block((inner[0], -d / 2, kick), (inner[1], d / 2, kick + p)))
    n = int(rng.integers(3, 7))
    free = h - kick - p - (n + 1) * 0.16
    if free <= 0:
        n = max(1, int((h - kick - p) // 0.16) - 1)
        free = max(h - kick - p - (n + 1) * 0.16, 0.0)
    gaps = 0.16 + rng.dirichlet(np.full(n + 1, 0.8)) * free
    z = kick + p
    for i in range(n):
        z += gaps[i]
        s.add(f"shelf_{i}", block((inner[0], -d / 2 + 0.01, z - p), (inner[1], d / 2, z)))
    if rng.random() < 0.6:
        s.add("back", block((-w / 2 + OVERLAP, d / 2 - 0.006, kick), (w / 2 - OVERLAP, d / 2 + 0.002, h)))
    if n >= 2 and rng.random() < 0.4:
        lo = kick + p + gaps[0]
        s.add("divider", block((-p / 2, -d / 2 + 0.01, lo - OVERLAP), (p / 2, d / 2, lo + gaps[1] - p + OVERLAP)))
    return s


def ladder_shelf(rng: np.random.Generator) -> OODShape:
    """Leaning ladder shelf: two slanted rails, shelves that get shallower towards the top."""
    s = OODShape("storage", "ladder_shelf")
    h, w = rng.uniform(1.4, 1.9), rng.uniform(0.5, 0.9)
    d_bottom = rng.uniform(0.35, 0.5)
    half_w, half_t = rng.uniform(0.012, 0.02), rng.uniform(0.02, 0.03)
    foot, head = np.array([0.0, -d_bottom / 2, 0.0]), np.array([0.0, d_bottom / 2 - 0.05, h])
    for side, x in (("left", -w / 2), ("right", w / 2)):
        s.add(f"rail_{side}", slanted_bar(foot + (x, 0, 0), head + (x, 0, 0), half_w, half_t))
    n = int(rng.integers(3, 6))
    heights = np.sort(rng.uniform(0.12, h - 0.25, n))
    heights = heights[np.r_[True, np.diff(heights) > 0.18]]
    for i, z in enumerate(heights):
        y = float(_along(foot, head, z)[1])
        s.add(
            f"shelf_{i}",
            block((-w / 2 - half_w + OVERLAP, y - 0.03, z), (w / 2 + half_w - OVERLAP, d_bottom / 2, z + 0.02)),
        )
    return s


def _legs(s: OODShape, rng: np.random.Generator, w: float, d: float, z_top: float) -> None:
    """Four slightly splayed tapered legs under a body of width ``w`` and depth ``d``."""
    r = rng.uniform(0.015, 0.025)
    for name, sx, sy in (("front_left", -1, -1), ("front_right", 1, -1), ("back_left", -1, 1), ("back_right", 1, 1)):
        top = np.array([sx * (w / 2 - 0.06), sy * (d / 2 - 0.06), z_top + OVERLAP])
        foot = top * (1 + 0.08 / max(w, d), 1 + 0.08 / max(w, d), 0.0)
        s.add(f"leg_{name}", frustum(foot, top, 0.6 * r, r))


def sideboard(rng: np.random.Generator) -> OODShape:
    """Low, wide sideboard on tapered legs: two to four bays of doors or drawer stacks, each front with a knob."""
    s = OODShape("storage", "sideboard")
    w, d = rng.uniform(1.3, 2.0), rng.uniform(0.4, 0.5)
    leg_h, body_h = rng.uniform(0.12, 0.25), rng.uniform(0.5, 0.7)
    s.add("body", block((-w / 2, -d / 2, leg_h), (w / 2, d / 2, leg_h + body_h)))
    _legs(s, rng, w, d, leg_h)
    bays = int(rng.integers(2, 5))
    edges = np.linspace(-w / 2 + 0.01, w / 2 - 0.01, bays + 1)
    z0, z1 = leg_h + 0.02, leg_h + body_h - 0.02
    for b in range(bays):
        x0, x1 = edges[b] + 0.003, edges[b + 1] - 0.003
        if rng.random() < 0.45:
            rows = int(rng.integers(2, 4))
            zs = np.linspace(z0, z1, rows + 1)
            for r in range(rows):
                s.add(
                    f"drawer_{b}_{r}",
                    block((x0, -d / 2 - 0.018, zs[r] + 0.003), (x1, -d / 2 + OVERLAP, zs[r + 1] - 0.003)),
                )
                s.add(f"knob_{b}_{r}", knob((x0 + x1) / 2, (zs[r] + zs[r + 1]) / 2, -d / 2 - 0.018, 0.01))
        else:
            s.add(f"door_{b}", block((x0, -d / 2 - 0.018, z0), (x1, -d / 2 + OVERLAP, z1)))
            s.add(f"knob_{b}", knob(x1 - 0.04 if b % 2 == 0 else x0 + 0.04, z1 - 0.1, -d / 2 - 0.018, 0.01))
    return s


def chest(rng: np.random.Generator) -> OODShape:
    """Chest of drawers with graduated drawer heights, an overhanging top, a plinth or bun feet, round knobs."""
    s = OODShape("storage", "chest")
    w, d, h = rng.uniform(0.7, 1.1), rng.uniform(0.4, 0.55), rng.uniform(0.8, 1.3)
    bun = rng.random() < 0.5
    z0 = rng.uniform(0.05, 0.1)
    s.add("carcass", block((-w / 2, -d / 2, z0), (w / 2, d / 2, h)))
    over = rng.uniform(0.01, 0.03)
    s.add("top", block((-w / 2 - over, -d / 2 - over - 0.02, h - OVERLAP), (w / 2 + over, d / 2 + over, h + 0.03)))
    if bun:
        for name, sx, sy in (
            ("front_left", -1, -1),
            ("front_right", 1, -1),
            ("back_left", -1, 1),
            ("back_right", 1, 1),
        ):
            s.add(
                f"foot_{name}",
                disc((sx * (w / 2 - 0.05), sy * (d / 2 - 0.05)), 0.0, z0 + OVERLAP, 0.04, 0.04, sections=16),
            )
    else:
        s.add("plinth", block((-w / 2 + 0.01, -d / 2 + 0.01, 0.0), (w / 2 - 0.01, d / 2 - 0.01, z0 + OVERLAP)))
    n = int(rng.integers(3, 6))
    growth = rng.uniform(1.05, 1.3)
    heights = growth ** np.arange(n)[::-1]  # the lowest drawer is the tallest
    edges = z0 + 0.01 + np.r_[0.0, np.cumsum(heights)] / heights.sum() * (h - z0 - 0.02)
    for i in range(n):
        top_row = i == n - 1 and rng.random() < 0.5
        spans = [(-w / 2 + 0.01, -0.003), (0.003, w / 2 - 0.01)] if top_row else [(-w / 2 + 0.01, w / 2 - 0.01)]
        for j, (x0, x1) in enumerate(spans):
            name = f"drawer_{i}" + (f"_{j}" if top_row else "")
            s.add(name, block((x0, -d / 2 - 0.02, edges[i] + 0.003), (x1, -d / 2 + OVERLAP, edges[i + 1] - 0.003)))
            s.add(f"knob_{name[7:]}", knob((x0 + x1) / 2, (edges[i] + edges[i + 1]) / 2, -d / 2 - 0.02, 0.013))
    return s


def wardrobe(rng: np.random.Generator) -> OODShape:
    """Tall wardrobe: plinth, carcass, overhanging crown, two or three doors with bar handles, optional drawers."""
    s = OODShape("storage", "wardrobe")
    w, d, h = rng.uniform(0.9, 1.6), rng.uniform(0.5, 0.62), rng.uniform(1.8, 2.2)
    plinth = rng.uniform(0.06, 0.12)
    s.add("plinth", block((-w / 2 + 0.02, -d / 2 + 0.02, 0.0), (w / 2 - 0.02, d / 2 - 0.02, plinth + OVERLAP)))
    s.add("carcass", block((-w / 2, -d / 2, plinth), (w / 2, d / 2, h)))
    s.add(
        "crown",
        block((-w / 2 - 0.03, -d / 2 - 0.05, h - OVERLAP), (w / 2 + 0.03, d / 2 + 0.01, h + rng.uniform(0.04, 0.08))),
    )
    drawers = int(rng.integers(0, 3))
    drawer_h = 0.18
    z_doors = plinth + 0.01 + drawers * drawer_h
    for i in range(drawers):
        z = plinth + 0.01 + i * drawer_h
        s.add(
            f"drawer_{i}",
            block((-w / 2 + 0.01, -d / 2 - 0.02, z + 0.003), (w / 2 - 0.01, -d / 2 + OVERLAP, z + drawer_h - 0.003)),
        )
        s.add(
            f"handle_drawer_{i}",
            block(
                (-0.08, -d / 2 - 0.045, z + drawer_h / 2 - 0.008),
                (0.08, -d / 2 - 0.02 + OVERLAP, z + drawer_h / 2 + 0.008),
            ),
        )
    n = 3 if w > 1.3 and rng.random() < 0.6 else 2
    edges = np.linspace(-w / 2 + 0.01, w / 2 - 0.01, n + 1)
    for i in range(n):
        x0, x1 = edges[i] + 0.003, edges[i + 1] - 0.003
        s.add(f"door_{i}", block((x0, -d / 2 - 0.02, z_doors + 0.003), (x1, -d / 2 + OVERLAP, h - 0.01)))
        x = x1 - 0.04 if i < n / 2 else x0 + 0.04
        zc = z_doors + 0.45 * (h - z_doors)
        s.add(
            f"handle_door_{i}",
            block((x - 0.008, -d / 2 - 0.045, zc - 0.12), (x + 0.008, -d / 2 - 0.02 + OVERLAP, zc + 0.12)),
        )
    return s


FAMILIES = {
    "chair": {"windsor": windsor, "club": club, "tulip": tulip, "bar_stool": bar_stool, "bench": bench},
    "table": {"splayed_round": splayed_round, "tripod": tripod, "x_base": x_base, "desk": desk, "console": console},
    "storage": {
        "bookshelf": bookshelf,
        "ladder_shelf": ladder_shelf,
        "sideboard": sideboard,
        "chest": chest,
        "wardrobe": wardrobe,
    },
}


def generate(category: str, seed: int, index: int) -> OODShape:
    """Shape ``index`` of ``category`` for ``seed``; families cycle with the index so every family is present."""
    if category not in FAMILIES:
        raise ValueError(f"unknown category {category!r}; choose from {CATEGORIES}")
    families = list(FAMILIES[category].values())
    rng = np.random.default_rng([_SALT, seed, CATEGORIES.index(category), index])
    return families[index % len(families)](rng)


def to_scene(shape: OODShape) -> trimesh.Scene:
    """A glTF-frame (Y up) scene with one node per part, named after the part."""
    scene = trimesh.Scene()
    for name, mesh in shape.parts.items():
        node_mesh = mesh.copy()
        node_mesh.apply_transform(Z_UP_TO_Y_UP)
        scene.add_geometry(node_mesh, node_name=name, geom_name=name)
    return scene


def write_glb(shape: OODShape, path: Path) -> Path:
    """Write ``shape`` as a .glb with one node per part; the same shape gives the same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(to_scene(shape).export(file_type="glb"))
    return path
