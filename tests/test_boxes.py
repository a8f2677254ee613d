import numpy as np

from backend.geometry.boxes import boxes_from_points, deform_points, union_box


def test_boxes_from_points_are_tight():
    rng = np.random.default_rng(0)
    points = rng.uniform(-1, 1, (500, 3))
    labels = (points[:, 0] > 0).astype(int)
    boxes = boxes_from_points(points, labels, 2)
    for k in range(2):
        sel = points[labels == k]
        np.testing.assert_allclose(boxes[k, :3] - boxes[k, 3:], sel.min(axis=0))
        np.testing.assert_allclose(boxes[k, :3] + boxes[k, 3:], sel.max(axis=0))


def test_deformation_maps_box_onto_new_box():
    box = np.array([[1.0, 2.0, 3.0, 0.5, 0.25, 1.0]])
    new = np.array([[0.0, -1.0, 2.0, 1.0, 0.5, 0.1]])
    corners = box[0, :3] + box[0, 3:] * np.array([[-1, -1, -1], [1, 1, 1], [1, -1, 1]])
    moved = deform_points(corners, np.zeros(3, int), box, new)
    expected = new[0, :3] + new[0, 3:] * np.array([[-1, -1, -1], [1, 1, 1], [1, -1, 1]])
    np.testing.assert_allclose(moved, expected)


def test_deformation_is_an_object_transform_about_the_box_centre():
    rng = np.random.default_rng(1)
    box = np.r_[rng.normal(size=3), rng.uniform(0.1, 1, 3)]
    new = np.r_[rng.normal(size=3), rng.uniform(0.1, 1, 3)]
    location, scale = new[:3], new[3:] / box[3:]
    # An object with origin at the box centre, at `location` with `scale`:
    points = rng.normal(size=(20, 3))
    as_object = location + (points - box[:3]) * scale
    np.testing.assert_allclose(as_object, deform_points(points, np.zeros(20, int), box[None], new[None]))


def test_flat_part_does_not_divide_by_zero():
    box = np.array([[0, 0, 0, 1.0, 1.0, 0.0]])
    new = np.array([[0, 0, 1.0, 2.0, 2.0, 0.0]])
    out = deform_points(np.array([[0.5, 0.5, 0.0]]), np.zeros(1, int), box, new)
    np.testing.assert_allclose(out, [[1.0, 1.0, 1.0]])


def test_union_box():
    boxes = np.array([[0, 0, 0, 1, 1, 1], [3, 0, 0, 1, 2, 1.0]])
    np.testing.assert_allclose(union_box(boxes), [1.5, 0, 0, 2.5, 2, 1])
