"""Torch geometry, losses and checkpoints of the joint model."""

import dataclasses
import json
import math
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import chair_parts, write_scene

from backend.geometry.boxes import deform_points as deform_points_np
from backend.geometry.connectivity import joint_gaps
from backend.library import IndexOptions, build_source, load_model
from backend.model.checkpoint import load_checkpoint, save_checkpoint
from backend.model.geometry import box_symmetry_loss, chamfer_distance, deform_points, project
from backend.model.inference import network_boxes
from backend.model.networks import JointModel, ModelConfig, deformed_points
from backend.model.placement import box_placement, target_extent
from backend.model.scoring import partial_chamfer
from backend.model.sources import SourceTensors, stack_sources
from training.joint.objectives import (
    cross_modal_loss,
    deformation_loss,
    embedding_loss,
    ranking_alignment_loss,
    sample_candidates,
    soft_probabilities,
)
from training.joint.train import TrainConfig

ROOT = Path(__file__).resolve().parent.parent


def test_chamfer_matches_brute_force_and_its_gradient():
    a = torch.randn(3, 50, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 70, 3, dtype=torch.float64)
    d = ((a[:, :, None] - b[:, None]) ** 2).sum(-1)
    brute = d.min(2).values.mean(1) + d.min(1).values.mean(1)
    fast = chamfer_distance(a, b)
    torch.testing.assert_close(fast, brute)
    (g_fast,) = torch.autograd.grad(fast.sum(), a)
    (g_brute,) = torch.autograd.grad(brute.sum(), a)
    torch.testing.assert_close(g_fast, g_brute)
    assert float(chamfer_distance(b, b).abs().max()) < 1e-12


def test_neighbour_searches_match_brute_force_in_both_directions():
    """The scan objective and the viewpoint hypotheses find neighbours each way with their own product (fast on the
    CPU); their values must be the brute-force ones, the slow axis included (targets and sources of other sizes)."""
    from backend.model.viewpoint import hypothesis_scores, visible_from

    torch.manual_seed(0)
    points = torch.rand(4, 96, 3, dtype=torch.float64) - 0.5
    targets = torch.rand(4, 64, 3, dtype=torch.float64) - 0.5
    direction = torch.nn.functional.normalize(torch.tensor([1.0, -0.5, 0.3], dtype=torch.float64), dim=0)
    d = ((targets[:, :, None] - points[:, None]) ** 2).sum(-1)  # (P, M, N)
    seen = visible_from(points, direction.expand(4, 3), grid=8, tolerance=0.04).double()
    to_target = (d.min(1).values * seen).sum(1) / seen.sum(1)
    brute = d.min(2).values.mean(1) + to_target
    sources = SourceTensors(
        points=points,
        labels=torch.zeros(4, 96, dtype=torch.long),
        boxes=torch.tensor([[[0.0, 0, 0, 0.5, 0.5, 0.5]]], dtype=torch.float64).expand(4, 1, 6),
        part_mask=torch.ones(4, 1, dtype=torch.bool),
        basis=torch.eye(6, dtype=torch.float64).expand(4, 6, 6),
        mirror=torch.full((4, 1), -1),
        axis=torch.full((4,), -1),
        centre=torch.zeros(4, 3, dtype=torch.float64),
        scale=torch.ones(4, dtype=torch.float64),
        min_half=torch.full((4,), 1e-4, dtype=torch.float64),
    )
    torch.testing.assert_close(partial_chamfer(sources, sources.boxes, targets, direction), brute)
    scores = hypothesis_scores(points, targets, direction.expand(4, 1, 3), grid=8, tolerance=0.04, neighbours=96)
    full = d.min(2).values.mean(1) + d.min(1).values.mean(1)
    torch.testing.assert_close(scores[:, 0], full)


def test_sampling_floor_is_the_distance_a_surface_point_has_to_the_nearest_sample():
    """Measured candidates lose the bias of their own sampling: on a unit square of N random samples a random point
    of the square is, on average, 1 / (pi N) (squared) from the nearest sample, and ``sampling_floor`` must say so
    from the samples alone, after a deformation too (a square stretched 3x has 3x the area per sample)."""
    from backend.model.geometry import sampling_floor, squared_distances

    torch.manual_seed(0)
    for n, stretch in ((512, 1.0), (2048, 1.0), (2048, 3.0)):
        samples = torch.cat([torch.rand(8, n, 2), torch.zeros(8, n, 1)], -1) * torch.tensor([stretch, 1.0, 1.0])
        probes = torch.cat([torch.rand(8, 4000, 2), torch.zeros(8, 4000, 1)], -1) * torch.tensor([stretch, 1.0, 1.0])
        empirical = squared_distances(probes, samples).clamp_min(0).min(dim=2).values.mean(1)
        assert abs(float(sampling_floor(samples).mean() / empirical.mean()) - 1) < 0.05
        assert abs(float(empirical.mean()) * math.pi * n / stretch - 1) < 0.1


@pytest.fixture(scope="module")
def chair_source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chair")
    path = write_scene(chair_parts(), folder / "chair.glb")
    return build_source(load_model(path, folder), IndexOptions(), seed=0)


def test_torch_deformation_matches_numpy(chair_source):
    rng = np.random.default_rng(0)
    new = chair_source.boxes + rng.normal(0, 0.02, chair_source.boxes.shape)
    expected = deform_points_np(chair_source.points, chair_source.point_labels, chair_source.boxes, new)
    got = deform_points(
        torch.from_numpy(chair_source.points).double()[None],
        torch.from_numpy(chair_source.point_labels).long()[None],
        torch.from_numpy(chair_source.boxes)[None],
        torch.from_numpy(new)[None],
    )[0]
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-9)


def test_projection_in_the_normalised_frame_keeps_joints(chair_source):
    tensors = stack_sources([chair_source], n_points=256)
    k = chair_source.n_parts
    noisy = (
        tensors.boxes.double()
        + torch.randn(tensors.boxes.shape, dtype=torch.float64) * 0.05 * tensors.part_mask[..., None]
    )
    projected = project(noisy, tensors.basis.double())[0, :k].numpy()
    lo, hi = chair_source.bounds
    centre, scale = (lo + hi) / 2, np.linalg.norm(hi - lo)
    joints = (chair_source.joint_points - centre) / scale
    before = joint_gaps(
        tensors.boxes[0, :k].double().numpy(), noisy[0, :k].numpy(), chair_source.joint_pairs, joints, 1e-6
    )
    after = joint_gaps(tensors.boxes[0, :k].double().numpy(), projected, chair_source.joint_pairs, joints, 1e-6)
    assert before.max() > 0.01 and after.max() < 1e-5


def test_symmetry_loss_zero_for_the_source_and_positive_when_broken(chair_source):
    tensors = stack_sources([chair_source], n_points=64)
    assert float(box_symmetry_loss(tensors.boxes, tensors.mirror, tensors.axis)) < 1e-10
    moved = tensors.boxes.clone()
    moved[0, 1, 2] += 0.1  # one leg longer than its mirror
    assert float(box_symmetry_loss(moved, tensors.mirror, tensors.axis)) > 1e-4


def test_probabilities_are_normalised_per_target_not_per_batch():
    distance = torch.tensor([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]])
    p = soft_probabilities(distance, 10.0)
    torch.testing.assert_close(p.sum(-1), torch.ones(2))
    # one target's probabilities do not depend on another target in the batch
    torch.testing.assert_close(soft_probabilities(distance[:1], 10.0), p[:1])
    assert p[0, 0] > p[0, 1] > p[0, 2]


def test_candidates_are_distinct_and_follow_the_distribution():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.05, 0.05]])).repeat(20000, 1)
    picks = sample_candidates(logits, 2, torch.Generator().manual_seed(0))
    assert torch.all(picks[:, 0] != picks[:, 1])
    first = torch.bincount(picks[:, 0], minlength=4).float() / len(picks)
    torch.testing.assert_close(first, torch.tensor([0.7, 0.2, 0.05, 0.05]), atol=0.015, rtol=0)


def test_embedding_loss_trains_sigma_and_the_embedding_but_not_the_fit():
    distance = torch.tensor([[1.0, 5.0, 9.0]], requires_grad=True)
    sigma = torch.tensor([[0.01, 0.02, 0.03]], requires_grad=True)
    fit = torch.tensor([[0.02, 0.01, 0.03]], requires_grad=True)
    loss = embedding_loss(distance * 10, fit, sigma, sigma0=100.0)
    loss.backward()
    assert distance.grad.abs().sum() > 0 and sigma.grad.abs().sum() > 0
    assert fit.grad is None
    weights = torch.tensor([[0.5, 0.5]], requires_grad=True)
    deformation_loss(weights, torch.tensor([[1.0, 2.0]], requires_grad=True)).backward()
    assert weights.grad is None


def test_untrained_model_predicts_the_identity(chair_source):
    model = JointModel(
        ModelConfig(point_width=16, image_width=8, global_code=16, part_code=4, target_code=16, embedding=8)
    )
    tensors = stack_sources([chair_source], n_points=128)
    target = tensors.points
    boxes = model.deformation(
        target, "points", tensors, torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)
    )
    k = chair_source.n_parts
    torch.testing.assert_close(boxes[:, :k], tensors.boxes[:, :k], atol=1e-5, rtol=0)
    torch.testing.assert_close(deformed_points(tensors, boxes), tensors.points, atol=1e-5, rtol=0)
    images = model.retrieval.embed_target(torch.rand(2, 3, 128, 128), "images")
    assert images.shape == (2, 8)


def test_cross_modal_loss_is_relative_and_pulls_only_the_student():
    teacher = torch.randn(4, 8, requires_grad=True)
    student = torch.randn(4, 8, requires_grad=True)
    assert float(cross_modal_loss(teacher.detach(), teacher)) == 0.0
    loss = cross_modal_loss(student, teacher)
    torch.testing.assert_close(cross_modal_loss(200 * student, 200 * teacher), loss)
    loss.backward()
    assert teacher.grad is None and float(student.grad.abs().sum()) > 0


def test_ranking_alignment_loss_counts_only_moves_that_change_the_ranking():
    sources = torch.tensor([[0.0, 0.0], [100.0, 0.0], [300.0, 0.0]])  # they differ along x only
    teacher = torch.tensor([[10.0, 0.0]])
    assert float(ranking_alignment_loss(teacher, teacher, sources, 100.0)) == 0.0
    # Two students 40 units from the teacher: along y every source is as far
    # as before (nothing to rank by), along x the student nears source 1.
    across = torch.tensor([[10.0, 40.0]])
    along = torch.tensor([[50.0, 0.0]])
    assert float(ranking_alignment_loss(across, teacher, sources, 100.0)) < 1e-6
    assert float(ranking_alignment_loss(along, teacher, sources, 100.0)) > 1e-3
    student = along.clone().requires_grad_(True)
    held = teacher.clone().requires_grad_(True)
    ranking_alignment_loss(student, held, sources, 100.0).backward()
    assert held.grad is None and float(student.grad[0, 0]) > 0  # pushed back towards source 0


def test_checkpoint_round_trip_without_pickle(tmp_path):
    config = ModelConfig(point_width=16, image_width=8, global_code=16, part_code=4, target_code=16, embedding=8)
    model = JointModel(config)
    save_checkpoint(tmp_path / "m.pt", model, {"step": 3})
    loaded, extra, state = load_checkpoint(tmp_path / "m.pt")
    assert loaded.config == config and extra == {"step": 3} and state is None
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an rfit checkpoint"):
        load_checkpoint(tmp_path / "other.pt")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"format": "rfit-checkpoint-1", "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="[Ww]eights only"):
        load_checkpoint(tmp_path / "evil.pt")


def test_exported_checkpoint_is_half_the_size_and_loads_as_float32(tmp_path):
    from backend.model.checkpoint import export_checkpoint

    model = JointModel(
        ModelConfig(point_width=16, image_width=8, global_code=16, part_code=4, target_code=16, embedding=8)
    )
    save_checkpoint(tmp_path / "full.pt", model, {"step": 1}, state={"optim": {"lr": torch.tensor(1.0)}})
    export_checkpoint(tmp_path / "full.pt", tmp_path / "small.pt")
    loaded, extra, state = load_checkpoint(tmp_path / "small.pt")
    assert state is None and extra == {"step": 1}
    assert (tmp_path / "small.pt").stat().st_size < 0.6 * (tmp_path / "full.pt").stat().st_size
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert b.dtype == a.dtype
        torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3, msg=name)


def test_positive_projection_keeps_joints_and_half_sizes(chair_source):
    from backend.model.geometry import project_positive

    tensors = stack_sources([chair_source], n_points=64)
    k = chair_source.n_parts
    squashed = tensors.boxes.double().clone()
    squashed[0, :k, 3:] *= -0.5  # every part inside out
    out = project_positive(squashed, tensors.basis.double(), tensors.min_half.double(), tensors.part_mask)
    assert float(out[0, :k, 3:].min()) >= float(tensors.min_half[0]) - 1e-9
    torch.testing.assert_close(project(out, tensors.basis.double())[0, :k], out[0, :k], atol=1e-4, rtol=0)


def test_placement_base_predicts_on_top_of_the_per_axis_placement(chair_source):
    """An untrained placement-base model starts at the per-axis placement on a stretched target's box
    (the old option at the source's own boxes); images, whose box is unknown, at the source's boxes."""
    tensors = stack_sources([chair_source], n_points=128)
    stretched = tensors.points * torch.tensor([1.0, 0.5, 1.6])
    target = stretched / (stretched.max(1).values - stretched.min(1).values).norm(dim=-1).view(-1, 1, 1)
    k = chair_source.n_parts
    small = dict(point_width=16, image_width=8, global_code=16, part_code=4, target_code=16, embedding=8)
    placed = box_placement(tensors, target_extent(target))
    for placement_base, expected in ((True, placed), (False, tensors.boxes)):
        model = JointModel(ModelConfig(**small, placement_base=placement_base)).eval()
        global_code, part_code = model.deformation.encode_sources(tensors)
        code = model.deformation.encode_target(target, "points")
        assert code.shape[-1] == 16 + 3 * placement_base
        boxes = network_boxes(model, tensors, global_code, part_code, code)
        torch.testing.assert_close(boxes[:, :k], expected[:, :k], atol=1e-5, rtol=0)
    model = JointModel(ModelConfig(**small, placement_base=True)).eval()
    global_code, part_code = model.deformation.encode_sources(tensors)
    code = model.deformation.encode_target(target, "points")
    image_code = model.deformation.encode_target(torch.rand(1, 3, 128, 128), "images")
    boxes = network_boxes(model, tensors, global_code, part_code, image_code)
    torch.testing.assert_close(boxes[:, :k], tensors.boxes[:, :k], atol=1e-5, rtol=0)
    # The part MLP sees the placement: trained offsets differ between a stretched and a plain target.
    torch.nn.init.normal_(model.deformation.part_mlp[-1].weight, std=0.01)
    plain = network_boxes(
        model, tensors, global_code, part_code, model.deformation.encode_target(tensors.points, "points")
    )
    assert not torch.allclose(plain, network_boxes(model, tensors, global_code, part_code, code), atol=1e-3)


def test_documented_config_reproduces_the_shipped_checkpoint():
    """training/configs/default.toml names every model option, with the shipped model's values: the model it
    builds takes default.pt's weights strictly, and what it trains is exported with that config."""
    recipe = tomllib.loads((ROOT / "training" / "configs" / "default.toml").read_text())
    assert set(recipe["model"]) == {f.name for f in dataclasses.fields(ModelConfig)}
    config = TrainConfig.from_toml(ROOT / "training" / "configs" / "default.toml")
    payload = torch.load(ROOT / "backend" / "checkpoints" / "default.pt", map_location="cpu", weights_only=True)
    model = JointModel(config.model)
    model.load_state_dict(payload["model"], strict=True)
    shipped, _, _ = load_checkpoint(ROOT / "backend" / "checkpoints" / "default.pt")
    assert shipped.config == config.model
    trained = json.loads(payload["extra"])["config"]
    for option in ("steps", "warmup", "batch", "candidates", "sigma0", "lr", "partial", "views", "source_fraction"):
        assert getattr(config, option) == trained[option], option
