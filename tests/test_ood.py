"""The out-of-distribution generator (training/data/ood.py) and the check's metric and oracle (bench/ood.py)."""

import numpy as np
import pytest
from helpers import bench_module

from backend.library import build_index, load_index
from training.data import furniture
from training.data.ood import CATEGORIES, FAMILIES, generate, write_glb

ood = bench_module("bench_ood", "ood.py")


def test_same_seed_same_bytes(tmp_path):
    for category in CATEGORIES:
        a = write_glb(generate(category, 3, 7), tmp_path / "a.glb").read_bytes()
        b = write_glb(generate(category, 3, 7), tmp_path / "b.glb").read_bytes()
        c = write_glb(generate(category, 3, 12), tmp_path / "c.glb").read_bytes()  # same family, other shape
        assert a == b and a != c


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """One model of every family, indexed the way a user's library is."""
    folder = tmp_path_factory.mktemp("ood")
    shapes = {}
    for category in CATEGORIES:
        for i in range(len(FAMILIES[category])):
            shape = generate(category, 0, i)
            write_glb(shape, folder / "library" / f"{category}_{i}.glb")
            shapes[f"{category}_{i}.glb"] = shape
    build_index(folder / "library", folder / "index")
    return shapes, load_index(folder / "index"), folder


def test_every_family_is_part_structured_after_indexing(indexed):
    shapes, index, _ = indexed
    assert len(index) == len(shapes) and not index.skipped
    for i, record in enumerate(index.sources):
        shape = shapes[record.path]
        source = index.load_source(i)
        assert record.piece_kind == "nodes" and sorted(source.node_names) == sorted(shape.parts), record.path
        assert source.n_parts >= 3, (record.path, source.n_parts)
        # Joined parts: the joint graph connects every part (each overlaps the one it rests on).
        reached, frontier = {0}, [0]
        while frontier:
            part = frontier.pop()
            for a, b in source.joint_pairs.tolist():
                other = b if a == part else a if b == part else None
                if other is not None and other not in reached:
                    reached.add(other)
                    frontier.append(other)
        assert len(reached) == source.n_parts, (record.path, shape.family)
        lo, hi = source.bounds
        assert abs(lo[2]) < 0.01 and np.allclose(source.bounds, shape.bounds(), atol=1e-6), record.path  # Z up


def test_differs_from_the_training_generator():
    """Shapes the training generator never makes: seating 1.6 m wide or with a seat 0.7 m high, and legs that
    are not vertical (a leg part whose top and foot differ in x or y)."""
    training = [furniture.generate("chair", 0, i) for i in range(60)]
    widest = max(float(np.ptp(s.bounds()[:, 0])) for s in training)
    highest_seat = max(float(s.parts["seat"].vertices[:, 2].max()) for s in training)
    assert widest < 0.7 and highest_seat < 0.55
    ours = [generate("chair", 0, i) for i in range(30)]
    assert max(float(np.ptp(s.bounds()[:, 0])) for s in ours) > 1.5
    assert max(float(s.parts["seat"].vertices[:, 2].max()) for s in ours if "seat" in s.parts) > 0.65

    def splayed(shape) -> bool:
        for name, mesh in shape.parts.items():
            if name.startswith("leg"):
                v = mesh.vertices
                foot, top = v[v[:, 2] < v[:, 2].min() + 1e-3].mean(0), v[v[:, 2] > v[:, 2].max() - 1e-3].mean(0)
                if np.linalg.norm((foot - top)[:2]) > 0.015:
                    return True
        return False

    assert not any(splayed(s) for s in training)
    assert sum(splayed(s) for s in ours) >= 8


def _scaled_copy(shape, factors):
    """``shape`` stretched per axis about the origin, as a new shape."""
    copy = generate(shape.category, 0, 0)
    copy.parts = {n: m.copy().apply_scale(factors) for n, m in shape.parts.items()}
    return copy


def test_oracle_is_zero_for_a_library_model_scaled_per_axis(indexed):
    """A target that IS a library model stretched per axis: the per-axis oracle finds it, at about zero; a
    uniform-scale oracle (the broken variant) misses it by far; and a wrong metric unit is caught."""
    shapes, index, folder = indexed
    library = ood.load_library(folder / "index")
    row = next(i for i, r in enumerate(index.sources) if r.path == "table_2.glb")  # x_base table
    target_shape = _scaled_copy(shapes["table_2.glb"], (0.7, 1.3, 1.15))
    vertices, faces = target_shape.mesh_arrays()
    truth = ood.sample_surface(vertices, faces, ood.TRUTH_POINTS, np.random.default_rng(5))[0]
    bounds = np.stack([vertices.min(0), vertices.max(0)])
    values, best = ood.per_axis_oracle(library, truth, bounds)
    assert best == row
    assert values[row] < 0.01, values[row]  # sampling noise of 16,384 samples on each side (x100 units)
    others = np.delete(values, row)
    assert others.min() > 10 * values[row]

    # Broken variant: scale every source uniformly (by the box diagonal) instead of per axis.
    diagonal = np.linalg.norm(bounds[1] - bounds[0])
    centre = bounds.mean(0)
    lo, hi = library.bounds[row, 0].numpy(), library.bounds[row, 1].numpy()
    uniform = centre + (library.dense(row)[0].numpy() - (lo + hi) / 2) * diagonal / np.linalg.norm(hi - lo)
    assert ood.dense_chamfer(uniform, truth, diagonal) > 20 * values[row]

    # The metric is in units of the target's diagonal: measuring in metres changes it (a 2 m shape here).
    per_axis = ood.scaled_per_axis(library.dense(row)[0][None], library.bounds[row : row + 1], bounds)[0].numpy()
    assert abs(ood.dense_chamfer(per_axis, truth, 1.0) - values[row]) > 0.5 * values[row]
    # Both directions count: half of the right shape is far from a good fit (an accuracy-only metric says 0).
    half = per_axis[per_axis[:, 0] < centre[0]]
    assert ood.dense_chamfer(half, truth, diagonal) > 20 * values[row]


def test_fitted_surface_follows_boxes_and_yaw(indexed):
    """The fitted shape of a fit that IS the oracle's per-axis scaling, turned by a yaw, lands on the turned
    truth; without the turn it does not (the broken variant)."""
    shapes, index, folder = indexed
    library = ood.load_library(folder / "index")
    row = next(i for i, r in enumerate(index.sources) if r.path == "storage_0.glb")
    target_shape = _scaled_copy(shapes["storage_0.glb"], (1.2, 0.8, 0.9))
    vertices, faces = target_shape.mesh_arrays()
    bounds = np.stack([vertices.min(0), vertices.max(0)])
    target = ood.Target(
        "storage",
        0,
        "bookshelf",
        ood.sample_surface(vertices, faces, 8192, np.random.default_rng(1))[0],
        bounds,
        float(np.linalg.norm(bounds[1] - bounds[0])),
        yaw=0.9,
    )
    fit = ood._oracle_fit(library, row, bounds)
    turned = ood.Fit(row, fit.boxes.copy(), yaw=target.yaw)
    turned.boxes[:, :3] = target.turn(fit.boxes[:, :3])
    assert np.allclose(target.turn(ood.fitted_surface(library, fit)), ood.fitted_surface(library, turned), atol=1e-9)
    good = ood.dense_chamfer(ood.fitted_surface(library, turned), target.truth_for("full_turned"), target.diagonal)
    assert good < 0.015
    unturned_parts = ood.Fit(row, turned.boxes, yaw=0.0)
    bad = ood.dense_chamfer(
        ood.fitted_surface(library, unturned_parts), target.truth_for("full_turned"), target.diagonal
    )
    assert bad > 10 * good
    factors = ood.part_scale_factors(library, fit, target.diagonal)
    assert factors.max() < 1.6  # a per-axis stretch of at most 1.25x relative to the diagonal
