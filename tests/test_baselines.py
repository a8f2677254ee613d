"""The MDS retrieval space of baseline R (pure numpy, no training)."""

import numpy as np

from training.baselines import classical_mds, out_of_sample


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return ((a[:, None] - b[None]) ** 2).sum(-1)


def test_mds_reproduces_euclidean_distances_and_places_new_points():
    rng = np.random.default_rng(0)
    sources, new = rng.normal(size=(40, 3)), rng.normal(size=(5, 3))
    coordinates, fit = classical_mds(squared_distances(sources, sources), dims=8)
    assert coordinates.shape == (40, 3)  # only the 3 real dimensions survive
    np.testing.assert_allclose(
        squared_distances(coordinates, coordinates), squared_distances(sources, sources), atol=1e-8
    )
    placed = out_of_sample(squared_distances(new, sources), fit)
    np.testing.assert_allclose(squared_distances(placed, coordinates), squared_distances(new, sources), atol=1e-8)


def test_non_euclidean_matrix_keeps_out_of_sample_points_bounded():
    # Chamfer-like: distances between random sets, squared; not a Euclidean matrix.
    rng = np.random.default_rng(1)
    shapes = rng.normal(size=(60, 16, 3))
    chamfer = np.array(
        [
            [
                np.sqrt(squared_distances(a, b)).min(1).mean() + np.sqrt(squared_distances(a, b)).min(0).mean()
                for b in shapes
            ]
            for a in shapes
        ]
    )
    squared = chamfer**2
    values = np.linalg.eigvalsh(-0.5 * (np.eye(60) - 1 / 60) @ squared @ (np.eye(60) - 1 / 60))
    assert values.min() < -1e-6  # the case the filter is for
    coordinates, fit = classical_mds(squared[:50, :50], dims=49)
    placed = out_of_sample(squared[50:, :50], fit)
    spread = np.linalg.norm(coordinates, axis=1).max()
    assert np.all(np.isfinite(placed)) and np.linalg.norm(placed, axis=1).max() < 10 * spread
