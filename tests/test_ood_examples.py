"""The OOD examples picture (bench/ood_examples.py): its meshes are the fits the metric measures."""

import numpy as np
from helpers import bench_module
from scipy.spatial import cKDTree

from backend.library import build_index
from training.data.ood import generate, write_glb

ood = bench_module("bench_ood", "ood.py")
examples = bench_module("bench_ood_examples", "ood_examples.py")


def test_a_pictured_fit_is_the_measured_fit_turned_and_stretched(tmp_path):
    """A fit turned by a yaw and stretched per axis (a sideboard: drawers, knobs, splayed legs): every vertex of the
    pictured mesh lies on the surface the metric samples (``fitted_surface``); with the picture's turn left out (the
    broken variant) most do not."""
    write_glb(generate("storage", 0, 2), tmp_path / "library" / "sideboard.glb")
    write_glb(generate("chair", 0, 0), tmp_path / "library" / "windsor.glb")
    build_index(tmp_path / "library", tmp_path / "index")
    library = ood.load_library(tmp_path / "index")
    row = library.paths.index("sideboard.glb")
    lo, hi = library.bounds[row].numpy()
    bounds = np.stack([lo, lo + (hi - lo) * np.array([1.3, 0.8, 1.1])]) + np.array([0.5, -0.2, 0.0])
    fit = ood._oracle_fit(library, row, bounds)
    pivot = bounds.mean(axis=0)
    turned = ood.Fit(row, fit.boxes.copy(), yaw=0.7)
    turned.boxes[:, :3] = (fit.boxes[:, :3] - pivot) @ ood.rotation_z(0.7).T + pivot

    surface = cKDTree(ood.fitted_surface(library, turned))
    scale = float(np.linalg.norm(bounds[1] - bounds[0]))
    vertices, faces, colours = examples.fitted_mesh(library, turned)
    assert len(faces) == len(colours) and faces.max() < len(vertices)
    assert np.quantile(surface.query(vertices)[0], 0.99) < 0.03 * scale

    unturned, _, _ = examples.fitted_mesh(library, ood.Fit(row, turned.boxes, yaw=0.0))
    assert np.quantile(surface.query(unturned)[0], 0.99) > 0.09 * scale
