"""One home for where a fitted part lies (``backend.geometry.frames.part_nodes``): the .glb, the thumbnail and the
residuals all carry a source's parts by it, so a fit of a turned target must land on that target in each."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from backend.export import export_fit, part_colours, render_thumbnail
from backend.fitting import FitOptions, Fitter
from backend.geometry.frames import Z_UP_TO_Y_UP, rotation_z
from backend.library import build_index
from backend.model.geometry import chamfer_distance
from backend.render import DEFAULT_ALBEDO, thumbnail
from backend.residuals import deformed_samples

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "backend" / "demo"
TURN = 0.7  # radians: no symmetry of a chair maps it onto itself


@pytest.fixture(scope="module")
def turned_fit(tmp_path_factory):
    folder = tmp_path_factory.mktemp("frames")
    for name in ("chair/chair_00.glb", "chair/chair_01.glb", "table/table_00.glb"):
        (folder / "library" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(DEMO / "library" / name, folder / "library" / name)
    build_index(folder / "library", folder / "index")
    fitter = Fitter.open(ROOT / "backend" / "checkpoints" / "default.pt", folder / "index")
    target = np.load(DEMO / "targets" / "chair_full.npy") @ rotation_z(TURN).T + np.array([0.4, -0.3, 0.2])
    result = fitter.fit_points(target, FitOptions(top_k=1, refine_steps=40, viewpoint=None))
    return fitter, target, result.candidates[0], folder


def normalised_chamfer(points: np.ndarray, target: np.ndarray) -> float:
    """Chamfer x1e-2 on coordinates divided by the target's box diagonal."""
    low, high = target.min(0), target.max(0)
    diagonal = np.linalg.norm(high - low)
    a = torch.from_numpy((points - low) / diagonal).float()[None]
    b = torch.from_numpy((target - low) / diagonal).float()[None]
    return float(chamfer_distance(a, b)) * 100


def test_the_exported_glb_of_a_turned_fit_lies_on_the_target(turned_fit):
    fitter, target, candidate, folder = turned_fit
    assert abs(np.sin(candidate.yaw)) > 0.3, "the fit found no turn: this test would not see the yaw"
    scene = trimesh.load_scene(str(export_fit(fitter.index, candidate, folder / "fit.glb")))
    mesh = scene.to_geometry() if hasattr(scene, "to_geometry") else scene.dump(concatenate=True)
    surface = trimesh.sample.sample_surface(mesh, 4096, seed=0)[0] @ Z_UP_TO_Y_UP[:3, :3]  # Y-up back to Z-up
    fitted = normalised_chamfer(surface, target)
    unturned = normalised_chamfer(surface, (target - target.mean(0)) @ rotation_z(TURN) + target.mean(0))
    assert fitted < 0.08 and unturned > 0.5, (fitted, unturned)  # measured 0.036 and 1.24


def test_residual_samples_and_thumbnail_follow_the_same_parts(turned_fit):
    fitter, target, candidate, folder = turned_fit
    row = candidate.source_index
    points = fitter.sources.points[row].double().numpy() * float(fitter.sources.scale[row])
    points = points + fitter.sources.centre[row].double().numpy()
    labels = fitter.sources.labels[row].numpy()
    samples = deformed_samples(points, labels, candidate.source_boxes, candidate.fitted_boxes, candidate.yaw)
    assert normalised_chamfer(samples, target) < 0.08
    # the thumbnail shows the parts where the .glb (checked on the target above) puts them in the fit's frame
    scene = trimesh.load_scene(str(export_fit(fitter.index, candidate, folder / "thumb.glb")))
    vertices, faces, colours, offset = [], [], [], 0
    for k, colour in enumerate(part_colours(fitter.index, row)):
        transform, name = scene.graph.get(f"part_{k:02d}", frame_from="fit")
        mesh = scene.geometry[name]
        y_up = np.asarray(mesh.vertices) @ transform[:3, :3].T + transform[:3, 3]
        vertices.append(y_up @ Z_UP_TO_Y_UP[:3, :3])
        faces.append(np.asarray(mesh.faces) + offset)
        colours.append(np.tile(colour[:3] if colour is not None else DEFAULT_ALBEDO, (len(mesh.faces), 1)))
        offset += len(mesh.vertices)
    from_glb = thumbnail(np.concatenate(vertices), np.concatenate(faces), np.concatenate(colours), 96)
    picture = render_thumbnail(fitter.index, candidate)
    assert (picture < 250).any(axis=-1).mean() > 0.05  # something is drawn
    assert np.abs(picture.astype(int) - from_glb.astype(int)).max(axis=-1).mean() < 0.01  # the same picture
