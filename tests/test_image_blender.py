"""Image fits on pictures nobody here rendered: out-of-distribution furniture rendered by Blender's Cycles.

The library and the targets come from the second, independent generator (``training.data.ood``), the pictures
from ``bpy`` (bench/blender_renders.py's ``render_blender``: grey principled material, sun, white world, a 50 mm
lens), none of it from our rasteriser or the silhouettes' point splatting.
"""

import importlib.util

import numpy as np
import pytest
import torch
from conftest import require_tool
from helpers import bench_module
from test_silhouettes import shape_tensors, within_one_step

from backend.model.geometry import chamfer_distance
from backend.render import Camera
from backend.silhouettes import SilhouetteBank, ViewGrid, match_image, silhouettes
from training.data.ood import CATEGORIES, generate

PER_CATEGORY = 30  # library models per category (seed 0)
TARGETS = 3  # per category (seed 1: never in the library)


@pytest.fixture(scope="module")
def library():
    """The library's sources (``PER_CATEGORY`` out-of-distribution models per category) and their bank."""
    sources = shape_tensors([generate(c, 0, i) for c in CATEGORIES for i in range(PER_CATEGORY)])
    return sources, SilhouetteBank.build(sources.points)


@pytest.fixture(scope="module")
def scene(library, tmp_path_factory):
    """The library's sources and bank, and every target's Blender render, camera and 3D chamfer to each source."""
    require_tool(importlib.util.find_spec("bpy") is not None, "the bpy wheel", "pip install -e '.[bpy]'")
    renders = bench_module("blender_renders", "blender_renders.py")
    folder = tmp_path_factory.mktemp("renders")
    sources, bank = library
    rng = np.random.default_rng(21)
    targets = []
    for c, category in enumerate(CATEGORIES):
        for i in range(TARGETS):
            shape = generate(category, 1, i)
            side = float(rng.choice([-1.0, 1.0]))
            camera = Camera(side * float(rng.uniform(20, 55)), float(rng.uniform(20, 35)), fov=renders.LENS_FOV)
            image = renders.render_blender(shape.parts, camera, folder / f"{category}_{i}.png", size=128, samples=8)
            truth = shape_tensors([shape], 2048).points[0]  # normalised frame, as the sources
            chamfer = chamfer_distance(sources.points, truth.expand(len(sources), -1, -1))
            targets.append((c, image, camera, chamfer))
    return sources, bank, targets


def test_the_closest_shape_in_3d_comes_first_and_the_view_is_found(scene):
    """Top-1 within 10% of the 3D-closest library shape's chamfer for 7 of 9 targets (the IoU ranking alone,
    ``shortlist=1``, gets 6), the right category for all, and the view within one grid step of the camera for
    6 of 9 (a round or three-legged table looks the same from many azimuths)."""
    sources, bank, targets = scene
    close = category = views = 0
    for c, image, camera, chamfer in targets:
        match = match_image(image, sources, bank, top_k=1)
        row = int(match.order[0])
        close += bool(chamfer[row] <= 1.1 * chamfer.min())
        category += row // PER_CATEGORY == c
        views += within_one_step(ViewGrid(), (match.azimuth, match.elevation), (camera.azimuth, camera.elevation))
    assert category == len(targets)
    assert close >= 7, close
    assert views >= 6, views


def test_the_estimated_view_points_at_the_camera(scene):
    """``ImageMatch.view`` (``FitResult.view`` of an image fit) is the direction from the object to the camera in
    the source's frame, as ``backend.render.Camera`` places it: within 15 degrees for 5 of the 6 chairs and
    cabinets and within 25 for all (a ladder shelf seen from 27 degrees looks much like one seen from 45)."""
    sources, bank, targets = scene
    errors = []
    for c, image, camera, _ in targets:
        if CATEGORIES[c] == "table":  # round and three-legged tops: the azimuth is ambiguous
            continue
        view = match_image(image, sources, bank, top_k=1).view
        _, eye, _ = camera.view(np.zeros(3), 1.0)
        truth = eye / np.linalg.norm(eye)
        direction = np.asarray(view["direction"])
        assert abs(np.linalg.norm(direction) - 1) < 1e-6 and view["estimated"] and view["fov_deg"] > 0
        assert view["azimuth_deg"] == pytest.approx(np.degrees(np.arctan2(direction[1], direction[0])))
        assert view["elevation_deg"] == pytest.approx(np.degrees(np.arcsin(direction[2])), abs=1e-6)
        errors.append(float(np.degrees(np.arccos(np.clip(direction @ truth, -1, 1)))))
    assert sum(e < 15 for e in errors) >= 5 and max(errors) < 25, errors


@pytest.mark.parametrize("hypotheses", [None, pytest.param(1, marks=pytest.mark.xfail(strict=True, reason="one view"))])
def test_a_wrong_consensus_view_is_undone_by_the_view_hypotheses(library, hypotheses):
    """When the five best sources' IoU agree on a wrong view (a chair seen from 55/20 and a table from 48/20, both
    taken for views from the other side), the mask distance choosing among the consensus' next views finds the
    camera and, for the chair, the closest shape in 3D (one view, ``hypotheses=1``: the chair's azimuth 130 degrees
    off; with ``SWITCH_MARGIN`` 0.002 the table's is 42 off). The outline is the targets' own surface samples
    projected, not a Blender render: on these 90 models the renders of docs/images.md's failures came out right
    with one view as well."""
    sources, bank = library
    for category, seed, camera, close in [("chair", 3, (55.0, 20.0), True), ("table", 5, (48.0, 20.0), False)]:
        shape = generate(category, 1, seed)
        outline = shape_tensors([shape], 8192).points  # dense enough for a 64 x 64 mask without holes
        mask = silhouettes(outline, torch.tensor([camera], dtype=torch.float64), 64)[0, 0].numpy()
        options = {} if hypotheses is None else {"hypotheses": hypotheses}  # None: as shipped
        match = match_image(None, sources, bank, top_k=1, mask=mask, **options)
        assert abs((match.azimuth - camera[0] + 180) % 360 - 180) <= 15, (category, match.azimuth)
        if close:
            truth = shape_tensors([shape], 2048).points[0]
            chamfer = chamfer_distance(sources.points, truth.expand(len(sources), -1, -1))
            assert chamfer[int(match.order[0])] <= 1.1 * chamfer.min(), category
