import numpy as np
import pytest

from backend.geometry.sampling import sample_surface, seed_from_bytes, triangle_areas


def test_samples_are_uniform_inside_a_triangle():
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0.0]])
    faces = np.array([[0, 1, 2]])
    points, _ = sample_surface(vertices, faces, 200_000, np.random.default_rng(0))
    # The centroid of a uniform density is the triangle's centroid.
    np.testing.assert_allclose(points.mean(axis=0), [1 / 3, 1 / 3, 0], atol=3e-3)
    # The corner triangle x + y < 0.5 holds a quarter of the area: a quarter of the points.
    # The biased sampler (barycentric without the sqrt) puts about 0.43 there.
    assert abs(np.mean(points[:, 0] + points[:, 1] < 0.5) - 0.25) < 0.005


def test_faces_are_drawn_by_area():
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [10, 0, 0], [13, 0, 0], [10, 3, 0.0]])
    faces = np.array([[0, 1, 2], [3, 4, 5]])
    _, face = sample_surface(vertices, faces, 100_000, np.random.default_rng(1))
    np.testing.assert_allclose(triangle_areas(vertices, faces), [0.5, 4.5])
    assert abs(np.mean(face == 1) - 0.9) < 0.005


def test_same_seed_same_samples_and_zero_area_rejected():
    vertices = np.random.default_rng(2).normal(size=(30, 3))
    faces = np.arange(30).reshape(10, 3)
    seed = seed_from_bytes(b"file content")
    a, _ = sample_surface(vertices, faces, 100, np.random.default_rng(seed))
    b, _ = sample_surface(vertices, faces, 100, np.random.default_rng(seed_from_bytes(b"file content")))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="no surface area"):
        sample_surface(np.zeros((3, 3)), np.array([[0, 1, 2]]), 10, np.random.default_rng(0))
