"""Joint training end to end on a tiny generated data set: run, resume, two processes."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.model.checkpoint import load_checkpoint
from backend.model.geometry import project
from backend.model.networks import JointModel
from training.baselines import mds_space, train_mds_retrieval
from training.data.dataset import DatasetSpec, write_dataset
from training.joint.data import augment_sources, in_families, prepare
from training.joint.objectives import cross_modal_loss, ranking_alignment_loss
from training.joint.train import TrainConfig, oracle_chamfer, placement_candidates, target_batch, train

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "training" / "configs" / "smoke.toml"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    write_dataset(folder, DatasetSpec(per_category=8, views=1, seed=3))
    return folder


def steps_logged(run: Path) -> list[int]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if r["phase"] != "validation"]


def test_train_then_resume(dataset, tmp_path):
    run = tmp_path / "run"
    config = TrainConfig.from_toml(SMOKE, data=str(dataset), out=str(run))
    best = train(config)
    assert best.exists() and (run / "last.pt").exists()
    assert steps_logged(run) == list(range(12))
    phases = {json.loads(line)["phase"] for line in (run / "log.jsonl").read_text().splitlines()}
    assert phases == {"warmup", "deformation", "retrieval", "validation"}
    model, extra, state = load_checkpoint(run / "last.pt")
    assert extra["step"] == 11 and state is not None
    # Resume: a longer run continues from step 12, it does not start over.
    train(TrainConfig.from_toml(SMOKE, data=str(dataset), out=str(run), steps=16))
    assert steps_logged(run) == list(range(16))


def test_uniform_sampling_ablation_runs(dataset, tmp_path):
    best = train(TrainConfig.from_toml(SMOKE, data=str(dataset), out=str(tmp_path / "u"), sampling="uniform", steps=6))
    assert best.exists()


def test_unknown_option_is_an_error():
    with pytest.raises(ValueError, match="unknown training options"):
        TrainConfig.from_toml(SMOKE, stepz=3)


def test_training_improves_the_fit(dataset, tmp_path):
    """A short run lowers its objective, the deformed fit over (source, target)
    pairs of the training targets, well below the untrained model's."""
    config = TrainConfig.from_toml(
        SMOKE,
        data=str(dataset),
        out=str(tmp_path / "r"),
        steps=60,
        warmup=60,
        lr=3e-3,
        val_every=1000,
        modalities=["points"],
        partial=0.0,
    )
    data = prepare(dataset, config.source_fraction, config.val_fraction, config.model.source_points)
    torch.manual_seed(0)
    before = oracle_chamfer(
        JointModel(config.model), data.sources, data.train, "points", config.model.n_points, reduce="mean"
    )
    train(config, data)
    model, _, _ = load_checkpoint(tmp_path / "r" / "last.pt")
    after = oracle_chamfer(model, data.sources, data.train, "points", config.model.n_points, reduce="mean")
    assert after < 0.9 * before


def test_two_processes_with_gloo(dataset, tmp_path):
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "training.joint",
            "train",
            "--config",
            str(SMOKE),
            "--data",
            str(dataset),
            "--out",
            str(run),
            "--steps",
            "8",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run / "best.pt").exists()
    assert steps_logged(run) == list(range(8))  # rank 0 logs; both ranks stepped together


def test_scanned_targets_see_one_side():
    from backend.model.viewpoint import visible_from
    from training.joint.data import Targets
    from training.joint.train import target_batch

    # the surface of a closed cube, 0.5 on a side
    g = torch.stack(
        torch.meshgrid(torch.linspace(-0.25, 0.25, 24), torch.linspace(-0.25, 0.25, 24), indexing="ij"), -1
    ).reshape(-1, 2)
    side = torch.full((len(g), 1), 0.25)
    faces = [torch.cat([side * s, g], 1)[:, order] for s in (-1, 1) for order in ([0, 1, 2], [1, 0, 2], [1, 2, 0])]
    cube = torch.cat(faces).unsqueeze(0)
    front_face = cube[0, :, 1] < -0.249
    back_face = cube[0, :, 1] > 0.249
    seen = visible_from(cube, torch.tensor([[0.0, -1.0, 0.0]]))[0]
    assert seen[front_face].all() and not seen[back_face].any()
    directions = torch.nn.functional.normalize(torch.randn(20, 3), dim=-1)
    fraction = visible_from(cube.expand(20, -1, -1), directions).float().mean(1)
    assert torch.all((fraction > 0.15) & (fraction < 0.6))

    targets = Targets(["cube"], cube, None)
    rows = torch.zeros(16, dtype=torch.long)

    def coverage_gap(partial: float) -> float:
        inputs, truth = target_batch(
            targets, rows, "points", 512, 0.0, torch.Generator().manual_seed(0), partial=partial
        )
        # how far the true surface is from what the input shows (frames match)
        return float(torch.cdist(truth, inputs).min(dim=2).values.mean())

    assert coverage_gap(1.0) > 5 * coverage_gap(0.0)


def test_image_alignment_fits_image_codes_to_point_codes(dataset, tmp_path):
    """After the main steps, each module's image encoder is fitted to the code
    its point encoder gives the same shape (the retrieval one also to its
    ranking of the sources); nothing else changes, and a rerun of the
    finished run does no more steps."""
    config = TrainConfig.from_toml(
        SMOKE,
        data=str(dataset),
        out=str(tmp_path / "a"),
        steps=6,
        warmup=2,
        lr=3e-3,
        val_every=1000,
        image_alignment_steps=40,
    )
    data = prepare(dataset, config.source_fraction, config.val_fraction, config.model.source_points, config.views)
    config_before = TrainConfig.from_toml(
        SMOKE, data=str(dataset), out=str(tmp_path / "b"), steps=6, warmup=2, lr=3e-3, val_every=1000
    )
    train(config_before, data)
    train(config, data)
    before, after = load_checkpoint(tmp_path / "b" / "last.pt")[0], load_checkpoint(tmp_path / "a" / "last.pt")[0]

    @torch.no_grad()
    def gaps(model: JointModel) -> tuple[float, float, float]:
        points = data.train.points[:, : config.model.n_points]
        images = data.train.images[:, 0].float() / 255.0
        r, d = model.eval().retrieval, model.deformation
        image_code, point_code = r.embed_target(images, "images"), r.embed_target(points, "points")
        return (
            float(cross_modal_loss(image_code, point_code)),
            float(cross_modal_loss(d.encode_target(images, "images"), d.encode_target(points, "points"))),
            float(ranking_alignment_loss(image_code, point_code, r.embed_sources(data.sources)[0], config.sigma0)),
        )

    (r0, d0, rank0), (r1, d1, rank1) = gaps(before), gaps(after)
    assert r1 < 0.5 * r0 and d1 < 0.5 * d0 and rank1 < 0.5 * rank0
    for name, value in after.state_dict().items():  # same seed and steps: only image encoders moved
        if ".images." not in name:
            torch.testing.assert_close(value, before.state_dict()[name], msg=name)
    assert steps_logged(tmp_path / "a") == list(range(46))
    train(config, data)
    assert steps_logged(tmp_path / "a") == list(range(46))


def test_baseline_r_gets_image_only_steps_after_its_regression(dataset):
    """R's image encoder gets the joint methods' image alignment budget as
    image-only steps after its regression: they bring image codes closer to
    their MDS goal and leave the point encoder as it was."""
    config = TrainConfig.from_toml(SMOKE, data=str(dataset))
    data = prepare(dataset, config.source_fraction, config.val_fraction, config.model.source_points, config.views)
    common = dict(
        sources=data.sources,
        targets=data.train,
        config=config.model,
        modalities=["points", "images"],
        steps=6,
        lr=3e-3,
        seed=0,
    )
    plain, coordinates = train_mds_retrieval(**common)
    aligned, same_coordinates = train_mds_retrieval(**common, image_steps=60)
    torch.testing.assert_close(coordinates, same_coordinates)
    _, goal = mds_space(data.sources, data.train, config.model.n_points)
    images = data.train.images[:, 0].float() / 255.0

    @torch.no_grad()
    def image_error(model: JointModel) -> float:
        return float((model.retrieval.embed_target(images, "images") - goal).square().sum(-1).mean())

    assert image_error(aligned) < 0.5 * image_error(plain)
    for name, value in aligned.retrieval.points.state_dict().items():
        torch.testing.assert_close(value, plain.retrieval.points.state_dict()[name], msg=name)


def _structures(dataset: Path) -> dict[str, str]:
    return {row["name"]: row["structure"] for row in json.loads((dataset / "meta.json").read_text())["shapes"]}


def test_held_out_structure_families_are_neither_sources_nor_targets(dataset):
    structures = _structures(dataset)
    full = prepare(dataset, 0.4, 0.2, 128)
    family = "/".join(structures[full.train.names[0]].split("/")[:2])  # e.g. "chair/sled"
    held = prepare(dataset, 0.4, 0.2, 128, held_out_structures=(family,))
    names = lambda d: d.source_names + d.train.names + d.val.names  # noqa: E731
    assert any(in_families(structures[n], [family]) for n in names(full))
    assert not any(in_families(structures[n], [family]) for n in names(held))
    assert set(names(held)) == {n for n in names(full) if not in_families(structures[n], [family])}
    assert in_families("chair/sled/slatted", ["chair/sled"]) and not in_families("chair/sled_x", ["chair/sled"])
    with pytest.raises(ValueError, match="match no shape"):
        prepare(dataset, 0.4, 0.2, 128, held_out_structures=("chair/no_such_family",))


def test_augmented_sources_keep_every_joint_and_stay_normalised(dataset):
    sources = prepare(dataset, 0.4, 0.2, 128).sources
    mask = sources.part_mask.unsqueeze(-1)
    same = augment_sources(sources, torch.Generator().manual_seed(0))
    assert torch.allclose(same.boxes, sources.boxes, atol=1e-6) and torch.allclose(
        same.points, sources.points, atol=1e-6
    )
    moved = augment_sources(sources, torch.Generator().manual_seed(0), axis_scale=1.4, part_jitter=1.25)
    # On the connectivity subspace (every joint attached), boxes of the union box 0 / diagonal 1.
    assert (project(moved.boxes, moved.basis) - moved.boxes).abs().masked_select(mask).max() < 1e-5
    lo = torch.where(mask, moved.boxes[..., :3] - moved.boxes[..., 3:], torch.inf).min(dim=1).values
    hi = torch.where(mask, moved.boxes[..., :3] + moved.boxes[..., 3:], -torch.inf).max(dim=1).values
    assert torch.allclose((hi - lo).norm(dim=-1), torch.ones(len(sources)), atol=1e-5)
    assert torch.allclose((hi + lo) / 2, torch.zeros(len(sources), 3), atol=1e-5)
    # Proportions changed, per source and per part, and the samples moved with their boxes.
    ratio = lambda b: (b[..., 3:] / b[..., 3:].amax(dim=(1, 2), keepdim=True)).masked_select(mask)  # noqa: E731
    assert (ratio(moved.boxes) - ratio(sources.boxes)).abs().mean() > 0.01
    assert not torch.allclose(moved.points, sources.points, atol=1e-3)
    box = torch.gather(moved.boxes, 1, moved.labels.unsqueeze(-1).expand(-1, -1, 6))
    inside = ((moved.points - box[..., :3]).abs() <= box[..., 3:] * 1.05 + 1e-4).all(dim=-1)
    before = torch.gather(sources.boxes, 1, sources.labels.unsqueeze(-1).expand(-1, -1, 6))
    inside_before = ((sources.points - before[..., :3]).abs() <= before[..., 3:] * 1.05 + 1e-4).all(dim=-1)
    assert inside.float().mean() >= inside_before.float().mean() - 1e-3  # each sample stays in its part's box


def test_axis_scale_stretches_point_targets_and_their_truth_alike(dataset):
    targets = prepare(dataset, 0.4, 0.2, 128, views=1).train
    rows = torch.arange(min(8, len(targets)))
    plain, _ = target_batch(targets, rows, "points", 128, 0.0, torch.Generator().manual_seed(0))
    seen, truth = target_batch(targets, rows, "points", 128, 0.0, torch.Generator().manual_seed(0), axis_scale=1.4)
    extent = lambda x: x.max(dim=1).values - x.min(dim=1).values  # noqa: E731
    assert (extent(seen) / extent(plain)).log().abs().max() > 0.05  # proportions changed
    assert torch.allclose(seen, truth, atol=1e-5)  # full clean clouds: the input is the (stretched) truth
    render = lambda scale: target_batch(targets, rows, "images", 128, 0.0, torch.Generator().manual_seed(0), 0.0, scale)  # noqa: E731
    assert torch.equal(render(1.4)[1], render(1.0)[1])  # a render's truth is not stretched: the image is not


def test_training_for_transfer_runs_and_predicts_on_the_placement(dataset, tmp_path):
    structures = _structures(dataset)
    family = "/".join(sorted(structures.values())[0].split("/")[:2])
    config = TrainConfig.from_toml(
        SMOKE,
        data=str(dataset),
        out=str(tmp_path / "t"),
        axis_scale=1.4,
        part_jitter=1.25,
        held_out_structures=[family],
        modalities=["points"],
        steps=8,
    )
    config = replace(config, model=replace(config.model, placement_base=True))
    train(config)
    model, extra, _ = load_checkpoint(tmp_path / "t" / "best.pt")
    assert model.config.placement_base and extra["config"]["held_out_structures"] == [family]
    assert extra["config"]["axis_scale"] == 1.4


def test_placement_sampling_draws_the_sources_a_fit_would_refine(dataset):
    """A target that is a source stretched per axis gets that source first (its placement is exact)."""
    sources = prepare(dataset, 0.4, 0.2, 128).sources
    rows = torch.tensor([0, 3, len(sources) - 1])
    stretched = sources.points[rows] * torch.tensor([1.3, 0.8, 1.1])
    lo, hi = stretched.min(dim=1).values, stretched.max(dim=1).values
    target = (stretched - ((lo + hi) / 2).unsqueeze(1)) / (hi - lo).norm(dim=-1).view(-1, 1, 1)
    candidates = placement_candidates(sources, target, 3)
    assert candidates.shape == (3, 3) and torch.equal(candidates[:, 0], rows)
    assert all(len(set(row.tolist())) == 3 for row in candidates)


def _box_aligned(mask: np.ndarray, size: int = 32) -> np.ndarray:
    """(size, size) bool: ``mask``'s bounding box, aspect kept, scaled into a square (nearest cell)."""
    rows, cols = np.nonzero(mask)
    top, left = rows.min(), cols.min()
    side = max(rows.max() - top, cols.max() - left) + 1
    grid = np.zeros((size, size), bool)
    cells = ((rows - top) * size // side, (cols - left) * size // side)
    grid[cells] = True
    return grid


def test_randomised_renders_differ_in_look_and_framing_but_keep_the_shape():
    """Domain randomisation: one chair in 24 looks differs in background, colour, field of view, elevation,
    size and place in the frame (some touching the border); each render's object sits where its look says, and
    its mask matches the plain render from the same camera after box alignment (the shape stays recognisable)."""
    from scipy.ndimage import binary_dilation

    from backend.render import rasterize
    from training.data.furniture import generate
    from training.data.randomise import random_look, randomised_render, render_look
    from training.data.views import mesh_arrays

    shape = generate("chair", 0, 5)
    vertices, faces, _ = mesh_arrays(shape)
    rng = np.random.default_rng(7)
    looks = [random_look(shape, rng) for _ in range(24)]
    renders = [render_look(shape, look, 128) for look in looks]
    corners = np.array([image[0, 0] for image, _ in renders], float)
    assert len({tuple(c) for c in corners}) >= 8 and (corners == 255).all(axis=1).any()
    foreground = np.array([image[mask].mean(axis=0) for image, mask in renders])
    assert foreground.std(axis=0).max() > 30  # materials and lights: mean object colour (0-255) varies
    fovs, elevations = [look.camera.fov for look in looks], [look.camera.elevation for look in looks]
    assert max(fovs) - min(fovs) > 20 and max(elevations) - min(elevations) > 25
    sides, touching, covered = [], 0, []
    for (_, mask), look in zip(renders, looks):
        rows, cols = np.nonzero(mask)
        if rows.min() == 0 or cols.min() == 0 or rows.max() == 127 or cols.max() == 127:
            touching += 1
            continue
        side = max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) / 128
        sides.append(side)
        centre = np.array([(cols.min() + cols.max() + 1) / 128 - 1, 1 - (rows.min() + rows.max() + 1) / 128])
        half = np.array([cols.max() - cols.min() + 1, rows.max() - rows.min() + 1]) / 128
        room = np.maximum(1.0 - half * 0.9, 0.0)
        np.testing.assert_allclose(side, look.fill_share, rtol=0.15)
        np.testing.assert_allclose(centre, look.offset * room, atol=0.12)
        plain = rasterize(vertices, faces, look.camera, 128, cull_back=True).face >= 0
        a, b = _box_aligned(mask), _box_aligned(plain)
        # Thin legs and slats of a small render miss cells: each mask's share within one cell of the other.
        covered.append(min((a & binary_dilation(b)).sum() / a.sum(), (b & binary_dilation(a)).sum() / b.sum()))
    assert touching >= 1 and min(sides) < 0.5 and max(sides) > 0.8
    assert min(covered) > 0.88 and np.median(covered) > 0.97, covered
    # Deterministic per seed, different across seeds.
    again = randomised_render(shape, np.random.default_rng(11))
    assert np.array_equal(again, randomised_render(shape, np.random.default_rng(11)))
    assert not np.array_equal(again, randomised_render(shape, np.random.default_rng(12)))


def test_randomised_views_feed_image_batches_deterministically(dataset):
    from training.joint.data import with_randomised_views

    data = prepare(dataset, 0.4, 0.2, 128, 1)
    targets = with_randomised_views(data.train, dataset, 64, seed=0)
    rows = torch.arange(4)
    first = target_batch(targets, rows, "images", 128, 0.0, torch.Generator().manual_seed(1))[0]
    second = target_batch(targets, rows, "images", 128, 0.0, torch.Generator().manual_seed(1))[0]
    other = target_batch(targets, rows, "images", 128, 0.0, torch.Generator().manual_seed(2))[0]
    assert first.shape == (4, 3, 64, 64) and 0.0 <= float(first.min()) and float(first.max()) <= 1.0
    assert torch.equal(first, second) and not torch.equal(first, other)


def test_image_finetune_moves_only_the_image_encoders(dataset, tmp_path):
    """``steps = 0`` with ``init`` and ``image_alignment_steps``: only the image encoders of the loaded
    checkpoint change, on randomised renders; every other weight and buffer is bit-identical (point fits are)."""
    from backend.model.checkpoint import save_checkpoint

    base = TrainConfig.from_toml(SMOKE, data=str(dataset))
    init = tmp_path / "init.pt"
    torch.manual_seed(5)
    save_checkpoint(init, JointModel(base.model), {"step": 0, "config": base.to_json()})
    config = TrainConfig.from_toml(
        SMOKE,
        data=str(dataset),
        out=str(tmp_path / "ft"),
        init=str(init),
        steps=0,
        warmup=0,
        views=0,
        image_alignment_steps=4,
        image_randomisation=True,
        image_teacher="source",
    )
    best = train(config)
    before, after = load_checkpoint(init)[0].state_dict(), load_checkpoint(best)[0].state_dict()
    moved = {name for name, value in after.items() if not torch.equal(value, before[name])}
    assert moved and all(".images." in name for name in moved), sorted(moved)
    assert any(name.startswith("retrieval.images.") for name in moved)
    assert any(name.startswith("deformation.images.") for name in moved)
    assert {json.loads(line)["phase"] for line in (tmp_path / "ft" / "log.jsonl").read_text().splitlines()} == {
        "alignment"
    }


def test_write_views_renders_what_the_data_set_writer_would(tmp_path):
    from PIL import Image

    from training.data.dataset import write_views

    written = tmp_path / "written"
    write_dataset(written, DatasetSpec(per_category=1, views=2, seed=4, test_fraction=0.0))
    again = tmp_path / "again"
    again.mkdir()
    (again / "meta.json").write_text((written / "meta.json").read_text())
    names = [row["name"] for row in json.loads((written / "meta.json").read_text())["shapes"]]
    assert write_views(again, names, views=2) == 2 * len(names)
    for name in names:
        for view in range(2):
            a = np.asarray(Image.open(written / "images" / f"{name}_{view}.png"))
            b = np.asarray(Image.open(again / "images" / f"{name}_{view}.png"))
            assert np.array_equal(a, b), (name, view)
