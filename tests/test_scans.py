"""Single-view scans of out-of-distribution furniture: the placement-ranking diagnostic of bench/ood.py."""

import numpy as np
import pytest
from helpers import bench_module

from backend.fitting import DEFAULT_CHECKPOINT, Fitter
from backend.library import build_index
from backend.render import Camera
from training.data.ood import FAMILIES, generate, write_glb
from training.data.views import partial_cloud

ood = bench_module("bench_ood_scans", "ood.py")


@pytest.fixture(scope="module")
def storage_library(tmp_path_factory):
    """One storage model of every OOD family, indexed, and a Fitter on it."""
    folder = tmp_path_factory.mktemp("ood_scans")
    shapes = {}
    for i in range(len(FAMILIES["storage"])):
        shapes[f"storage_{i}.glb"] = generate("storage", 0, i)
        write_glb(shapes[f"storage_{i}.glb"], folder / "library" / f"storage_{i}.glb")
    build_index(folder / "library", folder / "index")
    return shapes, Fitter.open(DEFAULT_CHECKPOINT, folder / "index", device="cpu"), ood.load_library(folder / "index")


def test_placement_ranking_finds_a_scanned_library_model(storage_library):
    """A scan of a library model stretched per axis: the diagnostic ranks that model first and returns its placement
    on the scan's box in world units, which is the per-axis oracle (near the sampling floor). Broken variants: the
    scanner's direction dropped (plain chamfer) ranks the chest first (it charges the wardrobe's unseen back); the
    boxes left in the cloud's normalised frame (no return to world units) measure over 20 times worse.

    (The chest's own scan from here is the reverse case, a misranking of the scan objective that docs/ood.md's
    "Scans, round 3" reports: with the direction it ranks the wardrobe first, 0.013 against the chest's 0.008.)"""
    shapes, fitter, library = storage_library
    name = "storage_4.glb"  # wardrobe: a closed piece, one side seen
    row = next(i for i, r in enumerate(fitter.index.sources) if r.path == name)
    target = generate("storage", 0, 0)
    target.parts = {n: m.copy().apply_scale((1.2, 0.8, 1.1)) for n, m in shapes[name].parts.items()}
    rng = np.random.default_rng(3)
    camera = Camera(azimuth=25.0, elevation=20.0)
    scan = partial_cloud(target, 4096, rng, camera=camera)
    towards_scanner = -camera.view(np.zeros(3), 1.0)[0][2]
    vertices, faces = target.mesh_arrays()
    truth = ood.sample_surface(vertices, faces, ood.TRUTH_POINTS, np.random.default_rng(4))[0]
    diagonal = float(np.linalg.norm(vertices.max(0) - vertices.min(0)))

    fit = ood.placement_ranking_fit(fitter, scan, towards_scanner)
    assert fit.row == row
    value = ood.dense_chamfer(ood.fitted_surface(library, fit), truth, diagonal)
    assert value < 0.02, value
    assert ood.placement_ranking_fit(fitter, scan, None).row != row

    normalised = ood.Fit(fit.row, fit.boxes / diagonal, fit.yaw)  # broken variant: still in the cloud's frame
    assert ood.dense_chamfer(ood.fitted_surface(library, normalised), truth, diagonal) > 20 * value


@pytest.mark.parametrize("name", ["storage_0.glb", "storage_4.glb"])
def test_visible_ranking_finds_a_scanned_library_model(storage_library, name):
    """The ``--visible-ranking`` diagnostic: a library model stretched per axis, seen from one camera, is ranked
    first by what that camera sees of each placed source against what it sees of the truth, and the per-axis oracle
    is it. The chest (``storage_0``) is the case the scan objective misranks from this camera (test above's
    docstring). A camera sees part of a closed piece; the views from all round see more, and what no view sees is
    counted in ``oracle_vs_exterior``. Broken variant, run by hand: sources left unscaled in their file frame
    (``placed_mesh`` without ``scaled_per_axis``) still rank the chest first here, but its exterior measures 0.136
    (the assertion's bound 0.02)."""
    shapes, fitter, library = storage_library
    row = next(i for i, r in enumerate(fitter.index.sources) if r.path == name)
    shape = generate("storage", 0, 0)
    shape.parts = {n: m.copy().apply_scale((1.2, 0.8, 1.1)) for n, m in shapes[name].parts.items()}
    vertices, faces = shape.mesh_arrays()
    bounds = np.stack([vertices.min(0), vertices.max(0)])
    diagonal = float(np.linalg.norm(bounds[1] - bounds[0]))
    truth = ood.sample_surface(vertices, faces, ood.TRUTH_POINTS, np.random.default_rng(4))[0]
    camera = Camera(azimuth=25.0, elevation=20.0)
    target = ood.Target("storage", 0, "", truth, bounds, diagonal, 0.0, cameras={"scan": camera})
    target.mesh = (vertices, faces)

    rng = np.random.default_rng(5)
    one = ood.seen_samples(vertices, faces, bounds, (camera,), rng, 8192)
    around = ood.seen_samples(vertices, faces, bounds, ood.ANYWHERE, rng, 8192)
    assert len(one) < 0.7 * 8192 < len(around), (len(one), len(around))

    values, oracle_row = ood.per_axis_oracle(library, truth, bounds)
    assert oracle_row == row
    fit, extras = ood.visible_ranking(library, target, oracle_row)
    assert fit.row == row and extras["visible_rank_of_oracle"] == 0
    assert ood.dense_chamfer(ood.fitted_surface(library, fit), truth, diagonal) < 0.02
    assert extras["exterior_oracle"] < 0.02 and extras["exterior_chamfer"] == extras["exterior_oracle"]
