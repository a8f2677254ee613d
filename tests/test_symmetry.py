import numpy as np
from helpers import chair_parts
from test_connectivity import sampled

from backend.geometry.boxes import boxes_from_points
from backend.geometry.symmetry import NO_AXIS, detect_symmetry, reflect


def test_symmetric_chair_has_left_right_plane():
    parts = chair_parts()
    points, labels = sampled(parts)
    boxes = boxes_from_points(points, labels, len(parts))
    sym = detect_symmetry(points, boxes)
    assert sym.axis == 0 and abs(sym.offset) < 1e-6
    names = list(parts)
    pairs = {names[k]: names[m] for k, m in enumerate(sym.part_mirror)}
    assert pairs["leg0"] == "leg1" and pairs["leg2"] == "leg3" and pairs["seat"] == "seat"


def test_chair_with_one_arm_is_not_symmetric():
    parts = chair_parts(arms=True)
    points, labels = sampled(parts)
    sym = detect_symmetry(points, boxes_from_points(points, labels, len(parts)))
    assert sym.axis == NO_AXIS and not sym.found


def test_reflect_is_an_involution():
    p = np.random.default_rng(0).normal(size=(10, 3))
    np.testing.assert_allclose(reflect(reflect(p, 1, 0.3), 1, 0.3), p)
