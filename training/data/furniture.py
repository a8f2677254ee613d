"""Procedural part-structured furniture: chairs, tables, storage.

Every shape is in Blender's frame: metres, Z up, front facing -Y, resting on
z = 0. Each part is a separate named mesh; parts meant to touch share a face
plane or overlap, parts not meant to touch are kept well apart, and every
intended contact is recorded so tests can check the indexer finds exactly
those. Shapes are deterministic functions of the random generator they get.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import trimesh

from training.data.primitives import bar, box, cushion, cylinder, tapered_leg

CATEGORIES = ("chair", "table", "storage")
MAX_PARTS = 16
# Parts not meant to touch are at least this far apart (metres): well over
# the indexer's contact tolerance (1% of a shape's diagonal, under 2.5 cm).
CLEARANCE = 0.04


@dataclass
class Furniture:
    """A generated shape.

    Attributes:
        category: one of ``CATEGORIES``.
        structure: e.g. ``"chair/four_legs/slatted/arms"``: the part layout.
        parts: name -> mesh, in creation order.
        contacts: unordered name pairs that are meant to touch.
        small: names of parts meant to be merged by the indexer (handles, casters).
    """

    category: str
    structure: str
    parts: dict[str, trimesh.Trimesh] = field(default_factory=dict)
    contacts: set[frozenset[str]] = field(default_factory=set)
    small: set[str] = field(default_factory=set)

    def add(self, name: str, mesh: trimesh.Trimesh, touches=(), small: bool = False) -> str:
        if name in self.parts:
            raise ValueError(f"duplicate part name {name}")
        self.parts[name] = mesh
        for other in touches:
            self.contacts.add(frozenset((name, other)))
        if small:
            self.small.add(name)
        return name

    @property
    def n_parts(self) -> int:
        """Parts that are not meant to be merged away."""
        return len(self.parts) - len(self.small)

    def bounds(self) -> np.ndarray:
        v = np.concatenate([m.vertices for m in self.parts.values()])
        return np.stack([v.min(axis=0), v.max(axis=0)])


def _leg(rng, style: str, xy, z0: float, z1: float, half: float) -> trimesh.Trimesh:
    if style == "round":
        return cylinder(xy, z0, z1, half, sections=16)
    if style == "tapered":
        return tapered_leg(xy, z0, z1, half * rng.uniform(0.45, 0.75), half)
    return box((xy[0] - half, xy[1] - half, z0), (xy[0] + half, xy[1] + half, z1), bevel=half * 0.2)


def _slab(rng, lo, hi, soft: bool) -> trimesh.Trimesh:
    if soft:
        return cushion(lo, hi, roundness=rng.uniform(0.25, 0.5))
    return box(lo, hi, bevel=rng.choice([0.0, rng.uniform(0.002, 0.008)]))


def chair(rng: np.random.Generator) -> Furniture:
    width, depth = rng.uniform(0.40, 0.62), rng.uniform(0.38, 0.56)
    height, thick = rng.uniform(0.38, 0.50), rng.uniform(0.03, 0.08)
    base = rng.choice(["four_legs", "pedestal", "sled", "solid"], p=[0.55, 0.15, 0.15, 0.15])
    stool = rng.random() < 0.12
    back = "none" if stool else str(rng.choice(["solid", "slatted", "frame"], p=[0.45, 0.3, 0.25]))
    arms = (not stool) and base != "solid" and rng.random() < 0.3
    arm_h, arm_t = rng.uniform(0.17, 0.25), rng.uniform(0.025, 0.04)
    seat_bottom = height - thick
    soft_seat = base == "solid" or rng.random() < 0.3
    radius = 0.5 * thick if soft_seat else 0.0

    f = Furniture("chair", "")
    f.add("seat", _slab(rng, (-width / 2, -depth / 2, seat_bottom), (width / 2, depth / 2, height), soft_seat))
    back_thick = rng.uniform(0.025, 0.06)
    back_height = rng.uniform(0.3, 0.6)
    if arms:  # the back's top rail (up to 9 cm) stays clear above the armrests
        back_height = max(back_height, arm_h + arm_t + 0.09 + CLEARANCE + 0.01)
    back_y0 = depth / 2 - back_thick
    top = height + back_height
    post_half = rng.uniform(0.018, 0.03)
    rear_posts_are_legs = False

    if base == "four_legs":
        half = rng.uniform(0.015, 0.03)
        inset = rng.uniform(radius + 0.005, radius + 0.05)
        style = str(rng.choice(["square", "round", "tapered"]))
        xs = (-width / 2 + inset + half, width / 2 - inset - half)
        ys = (-depth / 2 + inset + half, depth / 2 - inset - half)
        rear_posts_are_legs = (
            back in ("slatted", "frame") and not soft_seat and style == "square" and rng.random() < 0.5
        )
        if rear_posts_are_legs:
            # Rear legs run up to the top of the back and are its posts.
            ys = (ys[0], depth / 2 - half)
            post_half = half
        legs = {}
        for name, x, y in [
            ("leg_front_left", xs[0], ys[0]),
            ("leg_front_right", xs[1], ys[0]),
            ("leg_back_left", xs[0], ys[1]),
            ("leg_back_right", xs[1], ys[1]),
        ]:
            z1 = top if rear_posts_are_legs and "back" in name else seat_bottom
            legs[name] = f.add(name, _leg(rng, style, (x, y), 0.0, z1, half), touches=["seat"])
        stretchers = str(rng.choice(["none", "h", "box"], p=[0.5, 0.25, 0.25]))
        if stretchers != "none":
            z = rng.uniform(0.08, min(0.25, seat_bottom - CLEARANCE - 0.03))
            s = min(half * 0.6, 0.012)
            for side, x in (("left", xs[0]), ("right", xs[1])):
                f.add(
                    f"stretcher_{side}",
                    box((x - s, ys[0], z - s), (x + s, ys[1], z + s)),
                    touches=[f"leg_front_{side}", f"leg_back_{side}"],
                )
            if stretchers == "h":
                y = (ys[0] + ys[1]) / 2
                f.add(
                    "stretcher_middle",
                    box((xs[0], y - s, z - s), (xs[1], y + s, z + s)),
                    touches=["stretcher_left", "stretcher_right"],
                )
            else:
                for end, y in (("front", ys[0]), ("back", ys[1])):
                    f.add(
                        f"stretcher_{end}",
                        box((xs[0], y - s, z - s), (xs[1], y + s, z + s)),
                        touches=[f"leg_{end}_left", f"leg_{end}_right", "stretcher_left", "stretcher_right"],
                    )
        base_name = f"four_legs_{style}" + ("" if stretchers == "none" else f"_{stretchers}")
    elif base == "pedestal":
        column_r = rng.uniform(0.022, 0.04)
        spread = rng.uniform(0.24, 0.33)
        foot_h = rng.uniform(0.03, 0.05)
        caster_h = rng.uniform(0.04, 0.06) if rng.random() < 0.6 else 0.0
        plate = rng.uniform(0.015, 0.03)
        f.add("mechanism", box((-0.08, -0.08, seat_bottom - plate), (0.08, 0.08, seat_bottom)), touches=["seat"])
        spokes = [
            bar(
                (0, 0, caster_h + foot_h / 2),
                (spread * np.cos(a), spread * np.sin(a), caster_h + foot_h / 2),
                foot_h / 2,
            )
            for a in np.pi / 2 + np.arange(5) * 2 * np.pi / 5
        ]
        f.add("star_base", trimesh.util.concatenate(spokes))
        f.add(
            "column",
            cylinder((0, 0), caster_h + foot_h / 2, seat_bottom - plate, column_r),
            touches=["star_base", "mechanism"],
        )
        if caster_h:
            for i, a in enumerate(np.pi / 2 + np.arange(5) * 2 * np.pi / 5):
                end = (spread - foot_h) * np.array([np.cos(a), np.sin(a)])
                f.add(
                    f"caster_{i}",
                    cylinder(end, 0.0, caster_h, caster_h * 0.45, sections=10),
                    touches=["star_base"],
                    small=True,
                )
        base_name = "pedestal_star" + ("_casters" if caster_h else "")
    elif base == "sled":
        half = rng.uniform(0.01, 0.018)
        x_in = rng.uniform(0.0, 0.04)
        for side, x in (("left", -width / 2 + x_in + half), ("right", width / 2 - x_in - half)):
            y0, y1 = -depth / 2 + half, depth / 2 - half
            runner = f.add(f"runner_{side}", box((x - half, y0 - half, 0.0), (x + half, y1 + half, 2 * half)))
            f.add(
                f"upright_{side}_front",
                box((x - half, y0 - half, 2 * half), (x + half, y0 + half, seat_bottom)),
                touches=[runner, "seat"],
            )
            f.add(
                f"upright_{side}_back",
                box((x - half, y1 - half, 2 * half), (x + half, y1 + half, seat_bottom)),
                touches=[runner, "seat"],
            )
        base_name = "sled"
    else:
        inset = rng.uniform(radius + 0.01, radius + 0.06)
        f.add(
            "base_block",
            box(
                (-width / 2 + inset, -depth / 2 + inset, 0.0),
                (width / 2 - inset, depth / 2 - inset, seat_bottom),
                bevel=0.005,
            ),
            touches=["seat"],
        )
        base_name = "solid"

    back_names: list[str] = []
    if back == "solid":
        soft = rng.random() < 0.4 and not arms
        y0 = back_y0 if not soft_seat else min(back_y0, depth / 2 - radius - back_thick)
        inset = radius if soft_seat else 0.0
        back_names.append(
            f.add(
                "back",
                _slab(rng, (-width / 2 + inset, y0, height), (width / 2 - inset, y0 + back_thick, top), soft),
                touches=["seat"],
            )
        )
    elif back in ("slatted", "frame"):
        inset = radius
        rail_h = rng.uniform(0.04, 0.09)
        posts = []
        for side, x in (("left", -width / 2 + inset + post_half), ("right", width / 2 - inset - post_half)):
            if rear_posts_are_legs:
                posts.append(f"leg_back_{side}")
                continue
            y = depth / 2 - post_half - inset
            posts.append(
                f.add(
                    f"back_post_{side}",
                    box((x - post_half, y - post_half, height), (x + post_half, y + post_half, top)),
                    touches=["seat"],
                )
            )
        x_in = -width / 2 + inset + 2 * post_half
        x_out = width / 2 - inset - 2 * post_half
        y_rail = (depth / 2 - post_half - inset) if not rear_posts_are_legs else (depth / 2 - post_half)
        rail_t = min(post_half, back_thick / 2)
        f.add("back_top_rail", box((x_in, y_rail - rail_t, top - rail_h), (x_out, y_rail + rail_t, top)), touches=posts)
        back_names = posts
        if back == "slatted":
            slat_w = rng.uniform(0.02, 0.06)
            span = x_out - x_in
            n = int(np.clip(rng.integers(2, 6), 1, max(1, int((span + CLEARANCE) // (slat_w + CLEARANCE)) - 1)))
            n = min(n, MAX_PARTS - f.n_parts - (4 if arms else 0))
            gap = (span - n * slat_w) / (n + 1)
            if n >= 1 and gap >= CLEARANCE:
                for i in range(n):
                    x0 = x_in + gap + i * (slat_w + gap)
                    f.add(
                        f"back_slat_{i}",
                        box((x0, y_rail - rail_t * 0.8, height), (x0 + slat_w, y_rail + rail_t * 0.8, top - rail_h)),
                        touches=["seat", "back_top_rail"],
                    )
            else:
                back = "frame"
        if back == "frame":
            mid = height + rng.uniform(0.35, 0.55) * (back_height - rail_h)
            clear_of_arms = (
                not arms or mid > height + arm_h + arm_t + CLEARANCE or mid + 0.04 < height + arm_h - CLEARANCE
            )
            if clear_of_arms and mid - height > CLEARANCE + 0.02 and top - rail_h - (mid + 0.04) > CLEARANCE:
                f.add(
                    "back_mid_rail",
                    box((x_in, y_rail - rail_t, mid), (x_out, y_rail + rail_t, mid + 0.04)),
                    touches=posts,
                )
            else:
                back = "frame_top"

    if arms:
        arm_w = 2 * post_half if back in ("slatted", "frame", "frame_top") else rng.uniform(0.035, 0.06)
        inset = radius
        for i, side in enumerate(("left", "right")):
            sign = -1 if side == "left" else 1
            x_outer = sign * (width / 2 - inset)
            x_inner = x_outer - sign * arm_w
            lo_x, hi_x = sorted((x_outer, x_inner))
            if back == "solid":
                y_end, touching = back_y0, back_names
            else:
                y_end, touching = (
                    (depth / 2 - 2 * post_half - inset) if not rear_posts_are_legs else depth / 2 - 2 * post_half,
                    [back_names[i]],
                )
            y_front = -depth / 2 + inset + rng.uniform(0.0, 0.05)
            rest = f.add(
                f"armrest_{side}",
                box((lo_x, y_front, height + arm_h), (hi_x, y_end, height + arm_h + arm_t)),
                touches=touching,
            )
            support = min(arm_w / 2, 0.02)
            cx = (lo_x + hi_x) / 2
            f.add(
                f"arm_support_{side}",
                box((cx - support, y_front, height), (cx + support, y_front + 2 * support, height + arm_h)),
                touches=[rest, "seat"],
            )

    f.structure = f"chair/{base_name}/{'stool' if stool else back}" + ("/arms" if arms else "")
    return f


def table(rng: np.random.Generator) -> Furniture:
    kind = rng.choice(["dining", "coffee", "desk"], p=[0.5, 0.25, 0.25])
    height = {"dining": rng.uniform(0.70, 0.78), "coffee": rng.uniform(0.38, 0.50), "desk": rng.uniform(0.70, 0.78)}[
        kind
    ]
    round_top = rng.random() < 0.25
    base = str(
        rng.choice(["pedestal", "four_legs"], p=[0.6, 0.4])
        if round_top
        else rng.choice(["four_legs", "trestle", "pedestal", "panel"], p=[0.5, 0.18, 0.12, 0.2])
    )
    thick = rng.uniform(0.02, 0.06)
    under = height - thick
    f = Furniture("table", "")
    if round_top:
        r = rng.uniform(0.35, 0.6)
        width = depth = 2 * r
        f.add("top", cylinder((0, 0), under, height, r, sections=40))
    else:
        width = rng.uniform(0.7, 1.8) if kind != "coffee" else rng.uniform(0.7, 1.3)
        depth = min(rng.uniform(0.5, 1.0), width)
        f.add(
            "top", box((-width / 2, -depth / 2, under), (width / 2, depth / 2, height), bevel=rng.choice([0.0, 0.004]))
        )

    extras = ""
    if base == "four_legs":
        half = rng.uniform(0.018, 0.04)
        style = str(rng.choice(["square", "round", "tapered"]))
        if round_top:
            d = (width / 2 - half) * rng.uniform(0.45, 0.65)
            xs, ys = (-d, d), (-d, d)
        else:
            inset = rng.uniform(0.0, 0.08)
            xs = (-width / 2 + inset + half, width / 2 - inset - half)
            ys = (-depth / 2 + inset + half, depth / 2 - inset - half)
        names = {}
        for name, x, y in [
            ("leg_front_left", xs[0], ys[0]),
            ("leg_front_right", xs[1], ys[0]),
            ("leg_back_left", xs[0], ys[1]),
            ("leg_back_right", xs[1], ys[1]),
        ]:
            names[name] = f.add(name, _leg(rng, style, (x, y), 0.0, under, half), touches=["top"])
        lower = str(rng.choice(["none", "apron", "stretchers", "shelf"], p=[0.3, 0.3, 0.2, 0.2]))
        s = min(half * 0.7, 0.015)
        if lower == "apron":
            apron_h = rng.uniform(0.05, 0.1)
            for end, y in (("front", ys[0]), ("back", ys[1])):
                f.add(
                    f"apron_{end}",
                    box((xs[0], y - s, under - apron_h), (xs[1], y + s, under)),
                    touches=["top", f"leg_{end}_left", f"leg_{end}_right"],
                )
        elif lower == "stretchers":
            z = rng.uniform(0.08, 0.2)
            for side, x in (("left", xs[0]), ("right", xs[1])):
                f.add(
                    f"stretcher_{side}",
                    box((x - s, ys[0], z - s), (x + s, ys[1], z + s)),
                    touches=[f"leg_front_{side}", f"leg_back_{side}"],
                )
        elif lower == "shelf" and under > 0.3:
            z = rng.uniform(0.08, min(0.25, under - 0.15))
            f.add("shelf", box((xs[0], ys[0], z), (xs[1], ys[1], z + rng.uniform(0.015, 0.03))), touches=list(names))
        else:
            lower = "none"
        base = f"four_legs_{style}" + ("" if lower == "none" else f"_{lower}")
    elif base == "trestle":
        half = rng.uniform(0.025, 0.045)
        foot_h = rng.uniform(0.03, 0.06)
        x = width / 2 - rng.uniform(0.08, 0.2)
        y_half = depth / 2 - rng.uniform(0.02, 0.08)
        bar_h = rng.uniform(0.03, 0.05)
        for side, cx in (("left", -x), ("right", x)):
            foot = f.add(f"foot_{side}", box((cx - half, -y_half, 0.0), (cx + half, y_half, foot_h), bevel=0.004))
            cap = f.add(
                f"cap_{side}", box((cx - half, -y_half, under - bar_h), (cx + half, y_half, under)), touches=["top"]
            )
            f.add(
                f"upright_{side}",
                box((cx - half, -half * 1.5, foot_h), (cx + half, half * 1.5, under - bar_h)),
                touches=[foot, cap],
            )
        z = rng.uniform(foot_h + CLEARANCE + 0.02, under - bar_h - CLEARANCE - 0.02)
        f.add("stretcher", box((-x, -0.015, z - 0.02), (x, 0.015, z + 0.02)), touches=["upright_left", "upright_right"])
    elif base == "pedestal":
        column_r = rng.uniform(0.04, 0.09)
        foot = str(rng.choice(["disk", "cross"]))
        foot_h = rng.uniform(0.02, 0.05)
        reach = min(width, depth) / 2 * rng.uniform(0.5, 0.8)
        if foot == "disk":
            f.add("foot", cylinder((0, 0), 0.0, foot_h, reach, sections=32))
        else:
            f.add(
                "foot",
                trimesh.util.concatenate(
                    [box((-reach, -0.03, 0.0), (reach, 0.03, foot_h)), box((-0.03, -reach, 0.0), (0.03, reach, foot_h))]
                ),
            )
        f.add(
            "column",
            cylinder((0, 0), foot_h, under, column_r, top_radius=column_r * rng.uniform(0.7, 1.2)),
            touches=["foot", "top"],
        )
        base = f"pedestal_{foot}"
    else:
        panel_t = rng.uniform(0.02, 0.05)
        inset = rng.uniform(0.0, 0.06)
        y_half = depth / 2 - rng.uniform(0.0, 0.05)
        for side, sign in (("left", -1), ("right", 1)):
            outer = sign * (width / 2 - inset)
            lo_x, hi_x = sorted((outer, outer - sign * panel_t))
            f.add(f"panel_{side}", box((lo_x, -y_half, 0.0), (hi_x, y_half, under)), touches=["top"])
        x_in = width / 2 - inset - panel_t
        if rng.random() < 0.5:
            f.add(
                "modesty_panel",
                box((-x_in, y_half - 0.02, under * 0.4), (x_in, y_half, under)),
                touches=["top", "panel_left", "panel_right"],
            )
            base = "panel_back"
        if rng.random() < 0.4 and under > 0.3:
            z = rng.uniform(0.05, 0.2)
            f.add(
                "shelf",
                box((-x_in, -y_half + 0.05, z), (x_in, y_half - 0.03, z + 0.02)),
                touches=["panel_left", "panel_right"],
            )
            extras = "_shelf"
    f.structure = f"table/{base}{extras}/{'round' if round_top else 'rect'}"
    return f


def storage(rng: np.random.Generator) -> Furniture:
    width = rng.uniform(0.4, 1.6)
    depth = rng.uniform(0.3, 0.6)
    body_h = rng.uniform(0.4, 1.9)
    p = rng.uniform(0.016, 0.03)
    base = str(rng.choice(["plinth", "legs", "none"], p=[0.4, 0.35, 0.25]))
    layout = str(rng.choice(["shelves", "doors", "drawers", "mixed"], p=[0.3, 0.25, 0.25, 0.2]))
    f = Furniture("storage", "")
    z0 = {"plinth": rng.uniform(0.05, 0.12), "legs": rng.uniform(0.1, 0.25), "none": 0.0}[base]
    z_top = z0 + body_h
    f.add("side_left", box((-width / 2, -depth / 2, z0), (-width / 2 + p, depth / 2, z_top)))
    f.add("side_right", box((width / 2 - p, -depth / 2, z0), (width / 2, depth / 2, z_top)))
    f.add(
        "top",
        box((-width / 2, -depth / 2, z_top), (width / 2, depth / 2, z_top + p), bevel=rng.choice([0.0, 0.003])),
        touches=["side_left", "side_right"],
    )
    has_back = rng.random() < 0.85 or layout == "shelves"
    back_y = depth / 2 - (p if has_back else 0.0)
    f.add(
        "bottom",
        box((-width / 2 + p, -depth / 2, z0), (width / 2 - p, back_y, z0 + p)),
        touches=["side_left", "side_right"],
    )
    if has_back:
        f.add(
            "back",
            box((-width / 2 + p, back_y, z0), (width / 2 - p, depth / 2, z_top)),
            touches=["side_left", "side_right", "top", "bottom"],
        )
    if base == "plinth":
        # Recessed at the front (a kick space), so it never meets the fronts.
        front_inset = rng.uniform(CLEARANCE, 0.08)
        f.add(
            "plinth",
            box((-width / 2, -depth / 2 + front_inset, 0.0), (width / 2, depth / 2, z0)),
            touches=["side_left", "side_right", "bottom"] + (["back"] if has_back else []),
        )
    elif base == "legs":
        # Wider than a panel, so a leg under a side always meets the bottom too;
        # set back from the front and the back panel.
        half = rng.uniform(p / 2 + 0.005, max(p / 2 + 0.006, 0.03))
        style = str(rng.choice(["square", "round", "tapered"]))
        y_leg = depth / 2 - p - CLEARANCE - half
        for name, x, y in [
            ("leg_front_left", -1, -1),
            ("leg_front_right", 1, -1),
            ("leg_back_left", -1, 1),
            ("leg_back_right", 1, 1),
        ]:
            cx, cy = x * (width / 2 - half), y * y_leg
            f.add(
                name,
                _leg(rng, style, (cx, cy), 0.0, z0, half),
                touches=["side_left" if x < 0 else "side_right", "bottom"],
            )

    inner_w = width - 2 * p
    interior_lo, interior_hi = z0 + p, z_top

    def shelves(z_lo: float, z_hi: float, count: int, front_inset: float) -> int:
        made = 0
        step = (z_hi - z_lo) / (count + 1)
        if step < CLEARANCE + 0.04:
            return 0
        for i in range(count):
            z = z_lo + step * (i + 1) - p / 2
            touches = ["side_left", "side_right"] + (["back"] if has_back else [])
            f.add(
                f"shelf_{i}",
                box(
                    (-width / 2 + p, -depth / 2 + front_inset, z),
                    (width / 2 - p, depth / 2 - (p if has_back else 0.0), z + p),
                ),
                touches=touches,
            )
            made += 1
        return made

    def handle(name: str, front: str, x: float, z: float, vertical: bool) -> None:
        length = 0.1 if vertical else min(0.12, inner_w * 0.3)
        hx, hz = (0.006, length / 2) if vertical else (length / 2, 0.006)
        f.add(
            name,
            box((x - hx, -depth / 2 - p - 0.025, z - hz), (x + hx, -depth / 2 - p, z + hz)),
            touches=[front],
            small=True,
        )

    def drawers(z_lo: float, z_hi: float, count: int, touches_below: str, touches_above: str) -> list[str]:
        h = (z_hi - z_lo) / count
        names = []
        for i in range(count):
            lo, hi = z_lo + i * h, z_lo + (i + 1) * h
            touches = ["side_left", "side_right"] + ([names[-1]] if names else [touches_below])
            if i == count - 1:
                touches.append(touches_above)
            name = f.add(
                f"drawer_{i}",
                box((-width / 2, -depth / 2 - p, lo), (width / 2, -depth / 2, hi)),
                touches=[t for t in touches if t],
            )
            handle(f"handle_drawer_{i}", name, 0.0, (lo + hi) / 2, vertical=False)
            names.append(name)
        return names

    def doors(z_lo: float, z_hi: float, touches_below: str, touches_above: str) -> None:
        two = width > 0.7
        spans = [(-width / 2, 0.0, "left"), (0.0, width / 2, "right")] if two else [(-width / 2, width / 2, "single")]
        for lo_x, hi_x, tag in spans:
            touches = [t for t in (touches_below, touches_above) if t]
            touches += ["side_left"] if lo_x < -width / 2 + p else []
            touches += ["side_right"] if hi_x > width / 2 - p else []
            if two:
                touches += ["door_right"] if tag == "left" else []
            name = f.add(f"door_{tag}", box((lo_x, -depth / 2 - p, z_lo), (hi_x, -depth / 2, z_hi)), touches=touches)
            hx = hi_x - 0.04 if tag != "right" else lo_x + 0.04
            handle(f"handle_door_{tag}", name, hx, (z_lo + z_hi) / 2, vertical=True)

    # Fronts span the bottom panel's front edge up to the top panel's.
    if layout == "shelves":
        n = shelves(interior_lo, interior_hi, int(rng.integers(1, 6)), front_inset=rng.uniform(0.0, 0.03))
        detail = f"shelves{n}"
    elif layout == "doors":
        n = shelves(interior_lo, interior_hi, int(rng.integers(0, 3)), front_inset=CLEARANCE + 0.01)
        doors(z0, z_top + p, "bottom", "top")
        detail = "doors"
    elif layout == "drawers":
        count = int(np.clip(rng.integers(2, 7), 2, max(2, int(body_h // 0.12))))
        drawers(z0, z_top + p, count, "bottom", "top")
        detail = f"drawers{count}"
    else:
        split = z0 + body_h * rng.uniform(0.55, 0.75)
        f.add(
            "divider",
            box((-width / 2 + p, -depth / 2, split), (width / 2 - p, depth / 2 - (p if has_back else 0.0), split + p)),
            touches=["side_left", "side_right"] + (["back"] if has_back else []),
        )
        count = int(rng.integers(1, 3)) if z_top + p - (split + p) > 0.25 else 1
        drawers(split + p, z_top + p, count, "divider", "top")
        doors(z0, split + p, "bottom", "divider")
        # The lowest drawer and the doors meet at the divider's top face.
        for door in [n for n in f.parts if n.startswith("door_")]:
            f.contacts.add(frozenset((door, "drawer_0")))
        detail = f"mixed{count}"
    f.structure = f"storage/{base}/{detail}" + ("" if has_back else "/open_back")
    return f


GENERATORS = {"chair": chair, "table": table, "storage": storage}


def generate(category: str, seed: int, index: int) -> Furniture:
    """Shape ``index`` of ``category`` for a data-set ``seed``: the same three
    numbers always give the same shape."""
    if category not in GENERATORS:
        raise ValueError(f"unknown category {category!r}; choose from {CATEGORIES}")
    rng = np.random.default_rng([seed, CATEGORIES.index(category), index])
    while True:  # rejection keeps every shape within MAX_PARTS, deterministically
        shape = GENERATORS[category](rng)
        if 2 <= shape.n_parts <= MAX_PARTS:
            return shape
