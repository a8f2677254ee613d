"""Per-part residuals (backend/residuals.py): where a fit is poor, and when no source fits at all."""

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import trimesh

from backend import DEFAULT_CHECKPOINT
from backend.export import part_meshes
from backend.fitting import FitOptions, Fitter
from backend.geometry.frames import rotation_z
from backend.library import build_index
from backend.residuals import candidate_residuals
from blender_addon import quality
from training.data import ood

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "backend" / "demo"


@pytest.fixture(scope="module")
def fitter(tmp_path_factory):
    folder = tmp_path_factory.mktemp("residuals")
    (folder / "library").mkdir()
    for category in ("table", "storage"):  # the demo library without its chairs
        for path in sorted((DEMO / "library" / category).glob("*.glb")):
            shutil.copy(path, folder / "library" / path.name)
    build_index(folder / "library", folder / "index", jobs=2)
    # the bundled model: its measured chamfer (on the model's own number of target points) is what the panel rates
    return Fitter.open(DEFAULT_CHECKPOINT, folder / "index")


def test_the_misplaced_part_is_the_worst(fitter):
    """A library table scanned (fresh surface samples), turned 70 degrees and moved, with its source placed
    exactly on it: every part lies on the scan; dragging one part off makes that part, and only it, poor."""
    row = [s.path for s in fitter.index.sources].index("table_01.glb")
    mesh = trimesh.util.concatenate(part_meshes(fitter.index, row))
    turn, offset = rotation_z(np.radians(70)), np.array([1.5, -0.5, 0.2])
    target = np.asarray(trimesh.sample.sample_surface(mesh, 4096, seed=3)[0]) @ turn.T + offset
    source_boxes = fitter.index_boxes(row)
    placed = np.concatenate([source_boxes[:, :3] @ turn.T + offset, source_boxes[:, 3:]], axis=1)
    fit = SimpleNamespace(source_index=row, source_boxes=source_boxes, fitted_boxes=placed, yaw=np.radians(70))
    good = candidate_residuals(fitter.sources, target, [fit])[0]
    k = len(source_boxes)
    assert len(good["parts_x100"]) == len(good["share"]) == k >= 3
    assert sum(good["share"]) == pytest.approx(1.0)
    assert max(quality.typical_distance(r) for r in good["parts_x100"]) < 0.01, good  # sampling noise only
    diagonal = np.linalg.norm(target.max(0) - target.min(0))
    wrong = int(np.argmax(good["share"]))  # the part that explains most of the scan
    boxes = placed.copy()
    boxes[wrong, :3] += [0.0, 0.0, 0.3 * diagonal]  # the user drags it up by 30% of the table's size
    bad = candidate_residuals(fitter.sources, target, [SimpleNamespace(**{**fit.__dict__, "fitted_boxes": boxes})])[0]
    assert int(np.argmax(bad["parts_x100"])) == wrong, bad
    assert quality.rating(bad["parts_x100"][wrong]) == "poor", bad
    others = [r for j, r in enumerate(bad["parts_x100"]) if j != wrong]
    assert max(others) < bad["parts_x100"][wrong] / 4, bad
    assert bad["share"][wrong] < good["share"][wrong]  # the others take over some of the scan it explained


@pytest.mark.parametrize("name", ["storage_01.glb", "table_01.glb"])
def test_a_scan_fitted_exactly_has_no_poor_part(fitter, name):
    """A one-sided scan (the camera's z-buffer of the model) with its source placed exactly on it: the backs of
    parts are not in the scan, so only what the scanner sees may count (the fit's ``view``); then no part is
    poor. Measured against every sample instead, the hidden backs make the worst part over 4x worse."""
    from backend.render import Camera
    from training.data.views import visible_points  # the scan simulator's ray test, not the product's z-buffer

    row = [s.path for s in fitter.index.sources].index(name)
    mesh = trimesh.util.concatenate(part_meshes(fitter.index, row))
    surface, faces = trimesh.sample.sample_surface(mesh, 16000, seed=5)
    azimuth, elevation = np.radians(30.0), np.radians(25.0)
    camera = Camera(azimuth=30.0, elevation=25.0)
    towards = np.array([np.sin(azimuth) * np.cos(elevation), -np.cos(azimuth) * np.cos(elevation), np.sin(elevation)])
    scan = np.asarray(surface)[
        visible_points(np.asarray(mesh.vertices), np.asarray(mesh.faces), surface, faces, camera)
    ]
    assert 1000 < len(scan) < 0.8 * len(surface)
    fit = SimpleNamespace(
        source_index=row, source_boxes=fitter.index_boxes(row), fitted_boxes=fitter.index_boxes(row), yaw=0.0
    )
    seen = candidate_residuals(fitter.sources, scan, [fit], {"direction": towards.tolist()})[0]
    ratings = [quality.rating(r) for r in seen["parts_x100"] if r is not None]
    assert ratings and "poor" not in ratings, seen
    everything = candidate_residuals(fitter.sources, scan, [fit])[0]
    worst = {
        key: max(r for r in value["parts_x100"] if r is not None)
        for key, value in (("all", everything), ("seen", seen))
    }
    assert worst["all"] > 4 * worst["seen"], (worst, everything, seen)


def ood_cloud(category: str, index: int) -> np.ndarray:
    """4,096 surface samples of a shape of the second generator (families the library's models never have)."""
    shape = ood.generate(category, 1, index)
    mesh = trimesh.util.concatenate(list(shape.parts.values()))
    return np.asarray(trimesh.sample.sample_surface(mesh, 4096, seed=index)[0])


def test_no_close_match_for_a_category_absent_from_the_library(fitter):
    """The library holds tables and storage: chairs (a windsor chair, a bench with a backrest) fit poorly and the
    panel's note says so; tables of families the library does not have (round on splayed legs, tripod) still fit.

    Judged (docs/ood.md, "Proportions"): every candidate for the bench measures 0.58-0.96 x1e-2 against its true
    surface (16,384 samples each, typical distance 7.6-9.8%: poor), so "no close match" is the truth. The "fair"
    0.235 that 4a3e884's ranking charge reported was a one-sided chamfer, not the fit's: the bench's full cloud is
    judged a scan from 60 degrees azimuth, 0 elevation (so is it here; the viewpoint estimate is left as it was),
    and that fit, a console table (table_06), measured 0.609 against the truth."""
    absent = [fitter.fit_points(ood_cloud("chair", i), FitOptions(top_k=3)) for i in (0, 4)]
    present = [fitter.fit_points(ood_cloud("table", i), FitOptions(top_k=3)) for i in (0, 1)]
    measured = [[[c.measured_chamfer * 100 for c in r.candidates] for r in fits] for fits in (absent, present)]
    assert all(quality.no_close_match(chamfers) for chamfers in measured[0]), measured
    assert not any(quality.no_close_match(chamfers) for chamfers in measured[1]), measured
