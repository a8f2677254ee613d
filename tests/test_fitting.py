"""Retrieve and fit: the inference API, the cache of source codes, export, CLI."""

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from helpers import TINY_MODEL

from backend.export import export_fit
from backend.fitting import FitError, FitOptions, Fitter
from backend.geometry.connectivity import joint_gaps
from backend.geometry.frames import rotation_z
from backend.library import build_index, load_index
from backend.model.checkpoint import save_checkpoint
from backend.model.geometry import chamfer_distance
from backend.model.networks import JointModel

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "backend" / "demo"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fit")
    library = folder / "library"
    for category in ("chair", "table", "storage"):
        for i in range(3):
            (library / category).mkdir(parents=True, exist_ok=True)
            shutil.copy(DEMO / "library" / category / f"{category}_{i:02d}.glb", library / category)
    build_index(library, folder / "index")
    torch.manual_seed(0)
    model = JointModel(TINY_MODEL)
    with torch.no_grad():  # a non-trivial deformation, so tests see parts move
        model.deformation.part_mlp[-1].bias.copy_(torch.tensor([0.01, 0.0, 0.02, 0.01, -0.01, 0.02]))
    save_checkpoint(folder / "model.pt", model)
    return folder


def unturned(candidate, boxes):
    """``boxes`` (K, 6) of a candidate in its own frame: centres turned back by ``-yaw`` about the pivot."""
    c, s = np.cos(-candidate.yaw), np.sin(-candidate.yaw)
    out = boxes.copy()
    out[:, :3] = (boxes[:, :3] - candidate.pivot) @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T + candidate.pivot
    return out


def chair_target():
    return np.load(DEMO / "targets" / "chair_full.npy")


def test_fit_points_ranks_by_measured_chamfer_and_keeps_joints(setup):
    fitter = Fitter.open(setup / "model.pt", setup / "index")
    result = fitter.fit_points(chair_target(), FitOptions(top_k=4, refine_steps=40))
    assert result.modality == "points" and len(result.candidates) == 4
    measured = [c.measured_chamfer for c in result.candidates]
    assert measured == sorted(measured)
    index = load_index(setup / "index")
    for candidate in result.candidates:
        source = index.load_source(candidate.source_index)
        np.testing.assert_allclose(candidate.source_boxes, source.boxes, atol=1e-5)
        # The joints, carried from the source onto the target like the boxes (a per-axis
        # scaling, in the candidate's unturned frame), stay attached.
        orig, fitted = unturned(candidate, candidate.original_boxes), unturned(candidate, candidate.fitted_boxes)
        scale = orig[0, 3:] / source.boxes[0, 3:]
        np.testing.assert_allclose(orig[:, 3:], source.boxes[:, 3:] * scale, rtol=1e-4)
        joints = source.joint_points * scale + (orig[0, :3] - source.boxes[0, :3] * scale)
        gaps = joint_gaps(orig, fitted, source.joint_pairs, joints, 1e-6)
        assert gaps.max(initial=0) < 1e-4
        assert not np.allclose(fitted, orig)
        assert np.all(candidate.fitted_boxes[:, 3:] > 0)
    # boxes are in the target's frame: the fit overlaps the target's box
    lo, hi = chair_target().min(axis=0), chair_target().max(axis=0)
    fit = result.candidates[0].fitted_boxes
    assert np.all((fit[:, :3] > lo - 0.2) & (fit[:, :3] < hi + 0.2))


def test_refinement_lowers_the_chamfer(setup):
    fitter = Fitter.open(setup / "model.pt", setup / "index")
    plain = fitter.fit_points(chair_target(), FitOptions(top_k=2, refine=False))
    refined = fitter.fit_points(chair_target(), FitOptions(top_k=2, refine=True, refine_steps=60))
    assert refined.candidates[0].measured_chamfer < plain.candidates[0].measured_chamfer


def test_bad_point_input(setup):
    fitter = Fitter.open(setup / "model.pt", setup / "index")
    points = chair_target().astype(np.float64)
    points[:10] = np.nan
    result = fitter.fit_points(points, FitOptions(top_k=1, refine=False))
    assert any("dropped 10" in w for w in result.warnings)
    with pytest.raises(FitError, match="NaN or infinite"):
        fitter.fit_points(np.full((100, 3), np.nan))
    with pytest.raises(FitError, match="at least 64"):
        fitter.fit_points(points[10:40])
    with pytest.raises(FitError, match="N x 3"):
        fitter.fit_points(np.zeros((100, 2)))
    with pytest.raises(FitError, match="same place"):
        fitter.fit_points(np.ones((100, 3)))


def test_fit_image(setup):
    from PIL import Image

    fitter = Fitter.open(setup / "model.pt", setup / "index")
    image = np.asarray(Image.open(DEMO / "targets" / "chair.png"))
    result = fitter.fit_image(image, FitOptions(top_k=3, refine=True))
    assert len(result.candidates) == 3 and result.candidates[0].measured_chamfer is None
    fit = result.candidates[0].fitted_boxes
    assert abs((fit[:, 2] - fit[:, 5]).min()) < 1e-6  # rests on the floor
    with pytest.raises(FitError, match="H x W x 3"):
        fitter.fit_image(np.zeros((10, 10)))


def generated_chair(index: int = 3):
    """A chair with a back (not a stool), from the training generator, as a full cloud."""
    from training.data.furniture import generate
    from training.data.views import full_cloud

    shape = generate("chair", 4321, index)
    assert "stool" not in shape.structure
    return full_cloud(shape, 4096, np.random.default_rng(index), noise=0.002)


def turn(points, angle):
    pivot = (points.min(axis=0) + points.max(axis=0)) / 2
    return ((points - pivot) @ rotation_z(angle).T + pivot).astype(np.float32)


@pytest.mark.parametrize("degrees", [90.0, 37.0])
def test_a_turned_target_fits_as_well_as_unturned(setup, degrees):
    fitter = Fitter.open(setup / "model.pt", setup / "index")
    points = generated_chair()
    options = FitOptions(top_k=1, refine=False)
    plain = fitter.fit_points(points, options).candidates[0]
    found = fitter.fit_points(turn(points, np.radians(degrees)), options).candidates[0]
    # The heading is found: the fit is as good as unturned, and turned by the same angle.
    assert found.measured_chamfer <= 1.1 * plain.measured_chamfer
    gap = (found.yaw - plain.yaw - np.radians(degrees) + np.pi) % (2 * np.pi) - np.pi
    assert abs(gap) < np.radians(3)


# (8, 20): the ring (every 45 degrees) misses the true heading; (1, 0): the ring's one heading is the footprint's, so
# every source is pooled twice at the same heading and must come back once.
@pytest.mark.parametrize(("ring", "degrees"), [(8, 20.0), (1, 0.0)])
def test_a_ring_heading_that_wins_only_on_the_coarse_score_does_not_replace_the_footprint_s(
    setup, monkeypatch, ring, degrees
):
    """The fine ring of headings replaces a pooled source's footprint heading on a coarse score of 256 points; the
    footprint heading stays in the pool, and the measured fits decide (a tripod table of the OOD set was fitted 5
    degrees off, 0.0086 against 0.0063 at its true heading). Here the ring always wins the coarse comparison: the fit
    must still land on the footprint's heading, each source returned once."""
    import backend.model.inference as inference

    fitter = Fitter.open(setup / "model.pt", setup / "index")
    true_heading = np.radians(degrees)
    cloud = torch.from_numpy(turn(np.load(DEMO / "targets" / "storage_full.npy"), true_heading))
    headings = torch.tensor([true_heading], dtype=torch.float32)
    monkeypatch.setattr(inference, "RING_MARGIN", 1e9)
    fit = inference.fit_cloud(
        None, fitter.sources, None, cloud, headings, top_k=5, pool=5, refine=False, fine_headings=8
    )
    assert len(set(fit.rows.tolist())) == len(fit.rows) == 5
    assert abs(float(fit.yaw[0]) - true_heading) < 1e-4, np.degrees(float(fit.yaw[0]))
    plain = inference.fit_cloud(None, fitter.sources, None, cloud, headings, top_k=1, pool=5, refine=False)
    assert float(fit.chamfer[0]) <= float(plain.chamfer[0]) + 1e-6


def test_a_source_pooled_at_two_headings_is_returned_once_at_its_better_one():
    from backend.model.inference import _first_of_each

    ranked_rows = torch.tensor([7, 3, 7, 1, 3, 9])  # pool entries, best first: source 7 at two headings, 3 too
    assert _first_of_each(ranked_rows).tolist() == [True, True, False, True, False, True]


def test_codes_are_cached_per_checkpoint_and_refreshed(setup, tmp_path):
    index = tmp_path / "index"
    shutil.copytree(setup / "index", index)
    Fitter.open(setup / "model.pt", index)
    caches = list(index.glob("model-*.npz"))
    assert len(caches) == 1
    stamp = caches[0].stat().st_mtime_ns
    Fitter.open(setup / "model.pt", index)
    assert caches[0].stat().st_mtime_ns == stamp  # reused
    other = JointModel(TINY_MODEL)
    save_checkpoint(tmp_path / "other.pt", other)
    fitter = Fitter.open(tmp_path / "other.pt", index)
    assert [p.name for p in index.glob("model-*.npz")] == [f"model-{fitter.model_id}.npz"] != [caches[0].name]
    expected = fitter.encode_sources(fitter.sources)["embedding"]
    torch.testing.assert_close(fitter.codes["embedding"], expected)


def test_export_glb_parts_are_the_fitted_boxes(setup, tmp_path):
    fitter = Fitter.open(setup / "model.pt", setup / "index")
    candidate = fitter.fit_points(chair_target(), FitOptions(top_k=1, yaw_search=2, refine=False)).candidates[0]
    path = export_fit(fitter.index, candidate, tmp_path / "fit.glb")
    scene = trimesh.load_scene(str(path))
    nodes = sorted(n for n in scene.graph.nodes_geometry)
    assert len(nodes) == len(candidate.fitted_boxes)
    to_z_up = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0.0]])
    for node, box in zip(nodes, candidate.fitted_boxes):
        transform, name = scene.graph[node]
        vertices = scene.geometry[name].vertices @ transform[:3, :3].T + transform[:3, 3]
        vertices = vertices @ to_z_up.T
        # the deformed part fills its fitted box (turned by the yaw about the pivot)
        c, s = np.cos(-candidate.yaw), np.sin(-candidate.yaw)
        local = (vertices - candidate.pivot) @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T
        centre = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ (box[:3] - candidate.pivot)
        np.testing.assert_allclose((local.min(0) + local.max(0)) / 2, centre, atol=1e-4)
        np.testing.assert_allclose((local.max(0) - local.min(0)) / 2, box[3:], atol=1e-4)


def test_fit_command(setup, tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "backend",
            "fit",
            "--index",
            str(setup / "index"),
            "--points",
            str(DEMO / "targets" / "table_partial.npy"),
            "--checkpoint",
            str(setup / "model.pt"),
            "--top-k",
            "3",
            "--no-refine",
            "--out",
            str(tmp_path / "r.json"),
            "--export",
            str(tmp_path / "f.glb"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    data = json.loads((tmp_path / "r.json").read_text())
    assert len(data["candidates"]) == 3 and (tmp_path / "f.glb").stat().st_size > 0
    first = data["candidates"][0]
    assert first["measured_chamfer_x100"] > 0 and first["parts"][0].keys() == {
        "index",
        "source_box",
        "original_box",
        "fitted_box",
    }
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "backend",
            "fit",
            "--index",
            str(setup / "index"),
            "--image",
            str(tmp_path / "r.json"),
            "--checkpoint",
            str(setup / "model.pt"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "cannot read image" in bad.stderr


def test_refit_keeps_edited_parts_and_improves_the_rest(setup):
    fitter = Fitter.open(setup / "model.pt", setup / "index")
    points = chair_target()
    candidate = fitter.fit_points(points, FitOptions(top_k=1, refine=False)).candidates[0]
    edited = candidate.fitted_boxes.copy()
    edited[0, 3:] *= 1.2  # the user scaled part 0
    locked = np.zeros(len(edited), bool)
    locked[0] = True
    result = fitter.refit(points, candidate.source_index, edited, locked, options=FitOptions(refine_steps=80))
    refit = result.candidates[0]
    np.testing.assert_allclose(refit.fitted_boxes[0], edited[0], atol=1e-4)
    assert not np.allclose(refit.fitted_boxes[1:], edited[1:], atol=1e-4)
    with pytest.raises(FitError, match="parts"):
        fitter.refit(points, candidate.source_index, edited[:2], locked[:2])


def test_progress_is_reported_and_raising_in_it_cancels(setup):
    fitter = Fitter.open(setup / "model.pt", setup / "index")
    seen = []
    fitter.fit_points(chair_target(), FitOptions(top_k=1, refine_steps=20), progress=lambda *a: seen.append(a))
    assert seen and all(isinstance(d, int) and isinstance(t, int) and isinstance(x, str) for d, t, x in seen)
    assert seen[-1][0] == seen[-1][1]

    class Stop(Exception):
        pass

    def cancel(done, total, text):
        raise Stop

    for call in (
        lambda: fitter.fit_points(chair_target(), progress=cancel),
        lambda: fitter.fit_image(np.zeros((32, 32, 3), np.uint8), progress=cancel),
        lambda: fitter.refit(
            chair_target(),
            0,
            np.zeros((fitter.index.sources[0].n_parts, 6)),
            np.zeros(fitter.index.sources[0].n_parts, bool),
            progress=cancel,
        ),
    ):
        with pytest.raises(Stop):
            call()


def fitted_surface(index, candidate):
    """(N, 3) the candidate's source samples carried by its fitted boxes, in the target's frame."""
    source = index.load_source(candidate.source_index)
    boxes, labels = unturned(candidate, candidate.fitted_boxes), source.point_labels
    points = (
        boxes[labels, :3] + (source.points - source.boxes[labels, :3]) * boxes[labels, 3:] / source.boxes[labels, 3:]
    )
    return (points - candidate.pivot) @ rotation_z(candidate.yaw).T + candidate.pivot


def error_to(points, truth):
    """Chamfer x100 between (N, 3) and the (T, 3) truth, in units of the truth's box diagonal."""
    diagonal = np.linalg.norm(truth.max(axis=0) - truth.min(axis=0))
    a, b = (torch.from_numpy(np.asarray(x, np.float32) / diagonal).unsqueeze(0) for x in (points, truth))
    return float(chamfer_distance(a, b)[0]) * 100


CHEAP = FitOptions(top_k=1, rerank_pool=2, refine_steps=60)


@pytest.mark.parametrize("category,index", [("chair", 0), ("table", 0)])
def test_refined_parts_keep_plausible_sizes(setup, category, index):
    from training.data.furniture import generate
    from training.data.views import full_cloud

    fitter = Fitter.open(setup / "model.pt", setup / "index")
    truth = full_cloud(generate(category, 555, index), 4096, np.random.default_rng(index))
    result = fitter.fit_points(truth, CHEAP)
    candidate = result.candidates[0]
    # No part grows or shrinks more than 3x against its source part (chamfer barely sees small parts).
    assert candidate.share_over_3x == 0 and candidate.scale_factor_p95 < 2.5
    data = result.to_json()["candidates"][0]["plausibility"]
    assert data == {"scale_factor_p95": pytest.approx(candidate.scale_factor_p95), "share_over_3x": 0.0}


@pytest.mark.parametrize("category", ["chair", "storage"])
def test_a_scan_with_its_viewpoint_fits_the_whole_shape(setup, category):
    """A one-sided scan of a library model: with the scanner's viewpoint the fit recovers the whole
    model; plain chamfer squashes the source into the scan's visible half (or picks another)."""
    from backend.render import Camera
    from training.data.demo import DEMO_SEED
    from training.data.furniture import generate
    from training.data.views import full_cloud, partial_cloud

    fitter = Fitter.open(setup / "model.pt", setup / "index")
    shape, rng = generate(category, DEMO_SEED, 1), np.random.default_rng(1)  # the library's {category}_01
    truth = full_cloud(shape, 4096, rng)
    scan = partial_cloud(shape, 4096, rng, camera=Camera(azimuth=20.0, elevation=25.0), noise=0.002)
    a, e = np.radians(20.0), np.radians(25.0)
    towards_scanner = (np.sin(a) * np.cos(e), -np.cos(a) * np.cos(e), np.sin(e))
    index = load_index(setup / "index")
    plain = fitter.fit_points(scan, replace(CHEAP, viewpoint=None)).candidates[0]
    aware = fitter.fit_points(scan, replace(CHEAP, viewpoint=towards_scanner)).candidates[0]
    assert aware.source_path == f"{category}/{category}_01.glb"
    aware_error, plain_error = (
        error_to(fitted_surface(index, aware), truth),
        error_to(fitted_surface(index, plain), truth),
    )
    assert aware_error < 0.15 and aware_error < 0.5 * plain_error


def test_the_ranking_charges_placements_that_stretch_a_source_beyond_3x(setup):
    """``placement_factor`` is what ``part_scale_factors`` reports for every part of the per-axis placement (1 for
    a placement on the source's own normalised box, 4 for one axis stretched 4x against the others), and
    ``proportion_charge`` leaves placements up to ``IMPLAUSIBLE_FACTOR`` alone, then grows as ``(factor / 3) ** 4``.
    Fails with 4a3e884's measure (one axis against the geometric mean of the three: 4 ** (2 / 3) = 2.5 for the 4x
    stretch, so no charge)."""
    from backend.model.placement import box_placement, placement_factor, proportion_charge, source_extent
    from backend.model.plausibility import part_scale_factors

    sources = Fitter.open(setup / "model.pt", setup / "index").sources
    own = source_extent(sources)
    np.testing.assert_allclose(placement_factor(sources, own).numpy(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(proportion_charge(sources, own).numpy(), 1.0)
    stretched = own * torch.tensor([1.0, 1.0, 4.0])
    reported = part_scale_factors(box_placement(sources, stretched), sources)
    np.testing.assert_allclose(placement_factor(sources, stretched).numpy(), 4.0, rtol=1e-4)
    np.testing.assert_allclose(torch.nanquantile(reported, 1.0, dim=1).numpy(), 4.0, rtol=1e-4)
    np.testing.assert_allclose(proportion_charge(sources, stretched).numpy(), (4 / 3) ** 4, rtol=1e-4)
    np.testing.assert_allclose(proportion_charge(sources, own * torch.tensor([1.0, 2.9, 1.0])).numpy(), 1.0)


def test_a_scan_that_sees_only_the_front_is_not_charged_for_its_shallow_box(tmp_path):
    """A wardrobe of another seed scanned from the front at eye level: its box is as deep as its doors (a few
    centimetres), so every source's placement shrinks its depth several times. That is no evidence of implausible
    proportions (only growth is charged for a scan, ``placement_factor(lower_bound=True)``): the fit is as close as
    with no charge at all. Fails with the charge both ways for scans (best one-sided chamfer 0.0022, where 0.0008
    is reached)."""
    from backend.fitting import DEFAULT_CHECKPOINT
    from backend.model.placement import placement_factor, target_extent
    from backend.render import Camera
    from training.data.ood import FAMILIES, generate, write_glb
    from training.data.views import partial_cloud

    for i in range(len(FAMILIES["storage"])):
        write_glb(generate("storage", 0, i), tmp_path / "library" / f"storage_{i}.glb")
    build_index(tmp_path / "library", tmp_path / "index")
    fitter = Fitter.open(DEFAULT_CHECKPOINT, tmp_path / "index", device="cpu")
    camera = Camera(azimuth=0, elevation=0)
    scan = partial_cloud(generate("storage", 1, 4), 4096, np.random.default_rng(3), camera=camera)
    points = torch.from_numpy(scan).float()
    extent = target_extent(((points - points.mean(0)) / (points.max(0).values - points.min(0).values).norm())[None])
    assert placement_factor(fitter.sources, extent[0]).min() > 2  # shallow: every source squashed in depth
    towards = tuple(float(v) for v in -camera.view(np.zeros(3), 1.0)[0][2])
    best = min(c.measured_chamfer for c in fitter.fit_points(scan, FitOptions(top_k=5, viewpoint=towards)).candidates)
    assert best < 0.0012, best


def test_refinement_may_not_make_a_plausible_part_implausible(setup):
    """``implausible_growth`` is 0 for any part within 3x of its source size and for a part its reference (the
    placement) had already taken beyond 3x, and grows with the excess otherwise. Fails if the allowance ignores the
    reference (a placement the target demands would be pulled back) or is measured against the reference alone (a
    plausible placement's part could grow to 4.5x: 3x its reference at 1.5x)."""
    from backend.model.plausibility import implausible_growth

    sources = Fitter.open(setup / "model.pt", setup / "index").sources
    own = sources.boxes

    def sized(factor: float, part: int = 0) -> torch.Tensor:
        boxes = own.clone()
        boxes[:, part, 3:] = own[:, part, 3:] * factor
        return boxes

    assert torch.all(implausible_growth(own, own, sources) == 0)
    assert torch.all(implausible_growth(sized(2.9), own, sources) == 0)
    assert torch.all(implausible_growth(sized(1 / 2.9), own, sources) == 0)
    assert torch.all(implausible_growth(sized(4.0), sized(4.0), sources) == 0)  # the placement was there already
    assert torch.all(implausible_growth(sized(4.5), sized(1.5), sources) > 0)
    grown, more = implausible_growth(sized(4.0), own, sources), implausible_growth(sized(6.0), own, sources)
    assert torch.all(grown > 0) and torch.all(more > grown)


@pytest.mark.parametrize("name", ["chair_00.glb", "table_00.glb", "storage_01.glb"])
def test_a_full_cloud_keeps_refinement_only_where_it_measures_better(setup, name):
    """A library source's own surface, freshly sampled: its per-axis placement is exact, and every candidate of the
    refined fit measures at most what the same source measures unrefined (its better start), because refinement on
    few points fits the sampling as well as the shape and then the start is returned (``REFINE_GAIN``). Fails with
    ``REFINE_GAIN = inf`` where refinement makes a candidate worse (seen once in the storage_01 fit, source 5 at
    0.002451 refined against 0.002447 unrefined; on another machine refinement helped every candidate, so the next
    test makes it worse on purpose)."""
    from backend.export import part_meshes

    fitter = Fitter.open(setup / "model.pt", setup / "index")
    row = [s.path for s in fitter.index.sources].index(f"{name.split('_')[0]}/{name}")
    mesh = trimesh.util.concatenate(part_meshes(fitter.index, row))
    cloud = np.asarray(trimesh.sample.sample_surface(mesh, 4096, seed=7)[0])
    options = FitOptions(top_k=5, rerank_pool=5, viewpoint=None)
    plain = {
        c.source_index: c.measured_chamfer for c in fitter.fit_points(cloud, replace(options, refine=False)).candidates
    }
    refined = {c.source_index: c.measured_chamfer for c in fitter.fit_points(cloud, options).candidates}
    assert set(refined) == set(plain)
    assert all(refined[r] <= plain[r] * (1 + 1e-5) for r in refined), (refined, plain)


def test_a_full_cloud_returns_its_start_where_refinement_made_it_worse(setup, monkeypatch):
    """Refinement made worse on purpose (every refined shape moved off by its own diagonal): a full cloud's fit
    returns each candidate's unrefined start, measured as the unrefined fit measures it. Fails with
    ``REFINE_GAIN = inf`` (refined boxes always kept), which the natural case above cannot show where refinement
    always helps."""
    import backend.model.inference as inference
    from backend.export import part_meshes

    real = inference.refine_boxes

    def worse(*args, **kwargs):
        boxes = real(*args, **kwargs).clone()
        boxes[..., 0] += 1.0  # normalised frame: one diagonal along x
        return boxes

    fitter = Fitter.open(setup / "model.pt", setup / "index")
    row = [s.path for s in fitter.index.sources].index("table/table_00.glb")
    mesh = trimesh.util.concatenate(part_meshes(fitter.index, row))
    cloud = np.asarray(trimesh.sample.sample_surface(mesh, 4096, seed=7)[0])
    options = FitOptions(top_k=5, rerank_pool=5, viewpoint=None)
    plain = fitter.fit_points(cloud, replace(options, refine=False)).candidates
    monkeypatch.setattr(inference, "refine_boxes", worse)
    refined = fitter.fit_points(cloud, options).candidates
    assert [c.source_index for c in refined] == [c.source_index for c in plain]
    for a, b in zip(refined, plain):
        assert a.measured_chamfer == pytest.approx(b.measured_chamfer, rel=1e-6)
        np.testing.assert_allclose(a.fitted_boxes, b.fitted_boxes, atol=1e-6)


def test_fits_training_and_evaluation_rank_placements_alike(setup):
    """One home for the ranking (``placement_scores``): on a chair stretched 5x upwards, where the proportion charge
    reorders the library (asserted), ``fit_cloud``'s coarse scores, training's pairs (``placement_candidates``) and
    the evaluation's ranking (``evaluate_pipeline``, for recall@k) are the charged score. Fails with training's or
    the evaluation's ranking on the uncharged coarse chamfer (their code before this test)."""
    from backend.model.inference import PREFILTER_POINTS, fit_cloud
    from backend.model.placement import placement_scores, target_extent
    from training.evaluate import evaluate_pipeline
    from training.joint.data import Targets
    from training.joint.train import placement_candidates, target_batch

    sources = Fitter.open(setup / "model.pt", setup / "index").sources
    stretched = sources.points[:1] * torch.tensor([1.0, 1.0, 5.0])
    lo, hi = stretched.min(dim=1).values, stretched.max(dim=1).values
    targets = Targets(["stretched chair"], (stretched - (lo + hi) / 2) / (hi - lo).norm(), None)
    n = len(sources)
    # evaluate_pipeline's own draw of its first target
    target, _ = target_batch(targets, torch.tensor([0]), "points", 1024, 0.0, torch.Generator().manual_seed(0))
    extent, every = target_extent(target)[0], target.expand(n, -1, -1)
    plain, charged = placement_scores(sources, extent, every)
    assert not torch.equal(torch.argsort(plain), torch.argsort(charged))
    few_plain, few_charged = placement_scores(sources, extent, every, n_points=PREFILTER_POINTS)
    assert not torch.equal(torch.argsort(few_plain), torch.argsort(few_charged))

    assert torch.equal(placement_candidates(sources, target, n)[0], torch.argsort(few_charged))
    ranking = evaluate_pipeline(sources, targets, 1024, pool=1, steps=1)["ranking"][0]
    np.testing.assert_array_equal(ranking, torch.argsort(charged).numpy())
    fit = fit_cloud(None, sources, None, target[0], torch.zeros(1), top_k=n, pool=n, refine=False)
    np.testing.assert_allclose(fit.coarse.numpy(), charged[fit.rows].numpy(), rtol=1e-4)


def test_a_full_clouds_leader_is_refined_again_on_finer_points_where_that_measures_better(setup, monkeypatch):
    """The leader's second refinement on finer points (``REFINE_POLISH_SHARE``) is kept only where it measures
    better: the leader is the same source with and without it, and measures at most what it measures without it,
    strictly less on at least one of the clouds (the demo chair, a generated one, library sources' own surfaces,
    whose exact placement refinement can only make worse in the measure). Fails with the polish kept
    unconditionally and with it never kept (each checked on these clouds)."""
    import backend.model.inference as inference
    from backend.export import part_meshes

    fitter = Fitter.open(setup / "model.pt", setup / "index")
    paths = [s.path for s in fitter.index.sources]
    clouds = [chair_target(), generated_chair(0)]
    for name in ("chair/chair_00.glb", "table/table_00.glb", "storage/storage_01.glb"):
        mesh = trimesh.util.concatenate(part_meshes(fitter.index, paths.index(name)))
        clouds.append(np.asarray(trimesh.sample.sample_surface(mesh, 4096, seed=7)[0]))
    options = FitOptions(top_k=2, rerank_pool=3, viewpoint=None, refine_steps=60)
    gains = []
    for cloud in clouds:
        polished = fitter.fit_points(cloud, options).candidates[0]
        monkeypatch.setattr(inference, "REFINE_POLISH_SHARE", 0.0)
        plain = fitter.fit_points(cloud, options).candidates[0]
        monkeypatch.undo()
        assert polished.source_index == plain.source_index
        gains.append(plain.measured_chamfer / polished.measured_chamfer)
    assert min(gains) >= 1 - 1e-6 and max(gains) > 1.01, gains
