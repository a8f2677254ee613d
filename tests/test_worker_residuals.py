"""Per-part residuals (backend/residuals.py): where a fit is poor, and when no source fits at all."""

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import trimesh
from helpers import tiny_checkpoint

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
    for category, count in (("chair", 6), ("storage", 3)):
        for i in range(count):
            shutil.copy(
                DEMO / "library" / category / f"{category}_{i:02d}.glb", folder / "library" / f"{category}_{i}.glb"
            )
    build_index(folder / "library", folder / "index")
    return Fitter.open(tiny_checkpoint(folder / "model.pt"), folder / "index")


def turned_chair() -> np.ndarray:
    """The demo chair scan turned 70 degrees and moved: the fit's yaw and pivot matter."""
    points = np.load(DEMO / "targets" / "chair_full.npy").astype(np.float64)
    return points @ rotation_z(np.radians(70)).T + [1.5, -0.5, 0.2]


def test_the_misplaced_part_is_the_worst(fitter):
    target = turned_chair()
    result = fitter.fit_points(target, FitOptions(top_k=2))
    best = result.candidates[0]
    good = candidate_residuals(fitter.index, target, [best])[0]
    k = len(best.fitted_boxes)
    assert len(good["parts_x100"]) == len(good["share"]) == k
    assert sum(good["share"]) == pytest.approx(1.0)
    # most parts lie on the scan (a few small ones the scan's chair does not have stick out)
    assert quality.typical_distance(float(np.median(good["parts_x100"]))) < quality.FAIR, good
    # the user drags one part off the chair by a third of its size: that part, and only it, is now poor
    diagonal = np.linalg.norm(target.max(0) - target.min(0))
    wrong = int(np.argmax(good["share"]))  # the part that explains most of the scan (the seat)
    assert int(np.argmax(good["parts_x100"])) != wrong, good
    boxes = best.fitted_boxes.copy()
    boxes[wrong, :3] += rotation_z(best.yaw) @ np.array([0.0, 0.0, 0.35 * diagonal])
    edited = dataclasses.replace(best, fitted_boxes=boxes)
    bad = candidate_residuals(fitter.index, target, [edited])[0]
    assert int(np.argmax(bad["parts_x100"])) == wrong, bad
    assert quality.rating(bad["parts_x100"][wrong]) == "poor", bad
    others = [r for j, r in enumerate(bad["parts_x100"]) if j != wrong]
    assert max(others) < bad["parts_x100"][wrong] / 4, bad
    assert bad["share"][wrong] < good["share"][wrong]  # the others now explain the target it had


def ood_cloud(category: str, index: int) -> np.ndarray:
    """4,096 surface samples of a shape of the second generator (families the library's models never have)."""
    shape = ood.generate(category, 1, index)
    mesh = trimesh.util.concatenate(list(shape.parts.values()))
    return np.asarray(trimesh.sample.sample_surface(mesh, 4096, seed=index)[0])


def test_no_close_match_for_a_category_absent_from_the_library(fitter):
    """The library holds chairs and storage: tables (a round top on splayed legs, a console) fit poorly and the
    panel's note says so; chairs of families the library does not have (windsor, tulip) still fit."""
    absent = [fitter.fit_points(ood_cloud("table", i), FitOptions(top_k=3)) for i in (0, 4)]
    present = [fitter.fit_points(ood_cloud("chair", i), FitOptions(top_k=3)) for i in (0, 2)]
    measured = [[[c.measured_chamfer * 100 for c in r.candidates] for r in fits] for fits in (absent, present)]
    assert all(quality.no_close_match(chamfers) for chamfers in measured[0]), measured
    assert not any(quality.no_close_match(chamfers) for chamfers in measured[1]), measured
