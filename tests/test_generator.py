"""The procedural furniture generator, its files, images and point clouds."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backend.library import IndexOptions, build_source, load_model
from backend.render import Camera
from training.data.demo import write_demo
from training.data.export import write_glb
from training.data.furniture import CATEGORIES, MAX_PARTS, generate
from training.data.views import full_cloud, partial_cloud, render_image

ROOT = Path(__file__).resolve().parent.parent


def test_same_seed_same_bytes(tmp_path):
    for category in CATEGORIES:
        a = write_glb(generate(category, 3, 7), tmp_path / "a.glb").read_bytes()
        b = write_glb(generate(category, 3, 7), tmp_path / "b.glb").read_bytes()
        c = write_glb(generate(category, 3, 8), tmp_path / "c.glb").read_bytes()
        assert a == b and a != c


@pytest.mark.parametrize("category", CATEGORIES)
def test_indexer_finds_exactly_the_intended_contacts(tmp_path, category):
    for i in range(12):
        shape = generate(category, 11, i)
        path = write_glb(shape, tmp_path / f"{i}.glb")
        source = build_source(load_model(path, tmp_path), IndexOptions(), seed=0)
        part_of = dict(zip(source.piece_names, source.piece_part.tolist()))
        intended = {tuple(sorted((part_of[a], part_of[b]))) for a, b in map(tuple, shape.contacts)}
        intended = {pair for pair in intended if pair[0] != pair[1]}
        assert intended == {tuple(p) for p in source.joint_pairs.tolist()}, shape.structure
        assert min(shape.n_parts, MAX_PARTS) <= source.n_parts <= MAX_PARTS


@pytest.mark.parametrize("category, at_least", [("chair", 12), ("table", 8), ("storage", 8)])
def test_categories_vary_in_structure(category, at_least):
    shapes = [generate(category, 5, i) for i in range(40)]
    assert len({s.structure for s in shapes}) >= at_least
    assert len({s.structure.split("/")[1].split("_")[0] for s in shapes}) >= 3  # base types
    counts = [s.n_parts for s in shapes]
    assert min(counts) >= 2 and max(counts) <= MAX_PARTS and len(set(counts)) >= 4


def test_shapes_rest_on_the_floor_facing_minus_y():
    for category in CATEGORIES:
        for i in range(10):
            shape = generate(category, 1, i)
            assert abs(shape.bounds()[0, 2]) < 1e-9
    for i in range(20):
        chair = generate("chair", 2, i)
        if "back_top_rail" in chair.parts or "back" in chair.parts:
            back = chair.parts.get("back_top_rail", chair.parts.get("back"))
            assert back.bounds.mean(axis=0)[1] > chair.parts["seat"].bounds.mean(axis=0)[1]


def test_images_show_the_object():
    shape = generate("chair", 0, 0)
    rng = np.random.default_rng(0)
    image = render_image(shape, rng, size=128)
    assert image.shape == (128, 128, 3) and image.dtype == np.uint8
    covered = np.any(image < 250, axis=2)
    assert 0.05 < covered.mean() < 0.9
    rows, cols = np.nonzero(covered)
    assert abs(rows.mean() - 64) < 20 and abs(cols.mean() - 64) < 20
    # shading: the object is not a flat silhouette
    assert len(np.unique(image[covered].reshape(-1, 3), axis=0)) > 10
    other = render_image(shape, rng, size=128, random_background=True)
    assert not np.array_equal(other[0, 0], image[0, 0])


def test_partial_cloud_sees_one_side():
    shape = next(s for s in (generate("storage", 0, i) for i in range(50)) if "/doors" in s.structure)
    rng = np.random.default_rng(0)
    full = full_cloud(shape, 4000, rng)
    front = partial_cloud(shape, 4000, rng, camera=Camera(azimuth=0, elevation=5))
    back = partial_cloud(shape, 4000, rng, camera=Camera(azimuth=180, elevation=5))
    assert front.shape == (4000, 3) and front.dtype == np.float32
    assert front[:, 1].mean() < full[:, 1].mean() - 0.05 < back[:, 1].mean() - 0.1


def test_generate_command_writes_splits(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.data",
            "generate",
            "--out",
            str(tmp_path),
            "--per-category",
            "4",
            "--views",
            "1",
            "--points",
            "64",
            "--jobs",
            "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert len(meta["shapes"]) == 12
    for row in meta["shapes"]:
        assert (tmp_path / row["path"]).is_file() and row["split"] in row["path"]
        assert (tmp_path / "images" / f"{row['name']}_0.png").is_file()
        assert np.load(tmp_path / "points" / f"{row['name']}.npy").shape == (64, 3)


def test_committed_demo_library_is_what_the_generator_writes(tmp_path):
    write_demo(tmp_path)
    committed = ROOT / "backend" / "demo"
    ours = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    theirs = sorted(p.relative_to(committed) for p in committed.rglob("*") if p.is_file())
    assert ours == theirs
    for rel in ours:
        assert (tmp_path / rel).read_bytes() == (committed / rel).read_bytes(), rel
