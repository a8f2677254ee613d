import numpy as np
from helpers import chair_parts

from backend.geometry.boxes import boxes_from_points
from backend.geometry.connectivity import (
    find_contacts,
    joint_constraint_matrix,
    joint_gaps,
    null_space_basis,
    points_near_triangles,
)
from backend.geometry.sampling import sample_surface


def sampled(parts, count=20000, seed=0):
    meshes = list(parts.values())
    points, labels = [], []
    for k, mesh in enumerate(meshes):
        n = max(200, int(count * mesh.area / sum(m.area for m in meshes)))
        p, _ = sample_surface(mesh.vertices, mesh.faces, n, np.random.default_rng(seed + k))
        points.append(np.concatenate([p, mesh.vertices]))
        labels.append(np.full(len(points[-1]), k))
    return np.concatenate(points), np.concatenate(labels)


def chair_constraints():
    parts = chair_parts()
    points, labels = sampled(parts)
    names = list(parts)
    boxes = boxes_from_points(points, labels, len(names))
    contacts = find_contacts(points, labels, len(names), tolerance=0.01)
    return names, boxes, contacts


def test_contacts_of_a_chair():
    names, _, contacts = chair_constraints()
    found = {tuple(sorted((names[a], names[b]))) for a, b in contacts.pairs}
    expected = {tuple(sorted(("seat", f"leg{i}"))) for i in range(4)} | {("back", "seat")}
    assert found == expected
    # Each leg's joint sits on the leg's top face, below the seat.
    for (a, b), p in zip(contacts.pairs, contacts.joint_points):
        if "leg" in names[a] + names[b]:
            assert abs(p[2] - 0.425) < 0.01


def test_parts_apart_are_not_connected():
    parts = {"a": chair_parts()["leg0"], "b": chair_parts()["leg3"]}
    points, labels = sampled(parts)
    assert len(find_contacts(points, labels, 2, tolerance=0.01).pairs) == 0


def test_null_space_holds_exactly_the_joint_keeping_deformations():
    _, boxes, contacts = chair_constraints()
    constraint = joint_constraint_matrix(boxes, contacts.pairs, contacts.joint_points, 1e-4)
    basis = null_space_basis(constraint, boxes.size)
    np.testing.assert_allclose(basis.T @ basis, np.eye(basis.shape[1]), atol=1e-10)
    assert np.abs(constraint @ boxes.reshape(-1)).max() < 1e-9  # the rest pose satisfies B x = 0
    rng = np.random.default_rng(3)
    edited = boxes + np.c_[rng.normal(0, 0.05, (len(boxes), 3)), rng.normal(0, 0.02, (len(boxes), 3))]
    before = joint_gaps(boxes, edited, contacts.pairs, contacts.joint_points, 1e-4)
    projected = (basis @ (basis.T @ edited.reshape(-1))).reshape(edited.shape)
    after = joint_gaps(boxes, projected, contacts.pairs, contacts.joint_points, 1e-4)
    assert before.max() > 0.02
    assert after.max() < 1e-9
    # B x is the difference of where the two parts carry each joint.
    carried = (constraint @ edited.reshape(-1)).reshape(-1, 3)
    np.testing.assert_allclose(np.linalg.norm(carried, axis=1), before, atol=1e-12)


def test_points_near_triangles_matches_dense_sampling():
    rng = np.random.default_rng(7)
    triangles = rng.normal(size=(5, 3, 3))
    points = rng.normal(size=(400, 3)) * 2
    dense = []
    for tri in triangles:
        p, _ = sample_surface(tri, np.array([[0, 1, 2]]), 20000, rng)
        dense.append(np.concatenate([p, tri]))
    dense = np.concatenate(dense)
    brute = np.linalg.norm(points[:, None] - dense[None], axis=2).min(axis=1)
    tolerance = 0.5
    near = points_near_triangles(points, triangles, tolerance, chunk=64)
    clear = np.abs(brute - tolerance) > 0.02  # dense sampling is within 0.02 of exact
    assert near[clear].tolist() == (brute[clear] <= tolerance).tolist()
    assert 20 < near.sum() < 380
    assert points_near_triangles(triangles[0], triangles[:1], 1e-12).all()  # vertices lie on their triangle


def test_small_part_on_a_sparsely_sampled_face_is_found():
    """A handle on a large door: the door's samples are far apart, the contact is exact."""
    from helpers import box

    door = box((1.0, 0.02, 2.0), (0, 0, 1.0))
    handle = box((0.01, 0.02, 0.1), (0.3, -0.02, 1.0))
    meshes = [door, handle]
    vertices = np.concatenate([door.vertices, handle.vertices])
    faces = np.concatenate([door.faces, handle.faces + len(door.vertices)])
    face_labels = np.repeat([0, 1], [len(door.faces), len(handle.faces)])
    points = np.concatenate([vertices, door.vertices.mean(axis=0, keepdims=True)])  # almost no samples
    labels = np.r_[np.repeat([0, 1], [len(m.vertices) for m in meshes]), 0]
    loose = find_contacts(points, labels, 2, tolerance=0.01)
    exact = find_contacts(points, labels, 2, 0.01, triangles=vertices[faces], triangle_labels=face_labels, spacing=2.0)
    assert len(loose.pairs) == 0
    assert exact.pairs.tolist() == [[0, 1]]
