"""Training data: a generated data set indexed like a user's library.

The ``train`` split is indexed with ``backend.library.build_index`` (the same
path a user's library takes) and divided, by a hash of each shape's name,
into the source pool, the training targets and the validation targets
(used for model selection). The ``test`` split is left to evaluation.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from backend.library import build_index, load_index
from backend.model.geometry import deform_points, project_positive
from backend.model.sources import SourceTensors, stack_sources


def _fraction(name: str, salt: str) -> float:
    return int.from_bytes(hashlib.sha256(f"{salt}/{name}".encode()).digest()[:8], "little") / 2**64


@dataclass
class Targets:
    """T target shapes.

    Attributes:
        names: shape names.
        points: (T, P, 3) float32 clean surface samples, each in its own normalised frame.
        images: (T, V, 3, H, W) uint8 rendered views, or None.
        render: ``(rows (B,), generator) -> (B, 3, H, W)`` uint8 fresh views of those rows' shapes
            (``with_randomised_views``), used instead of ``images`` when set.
    """

    names: list[str]
    points: torch.Tensor
    images: torch.Tensor | None
    render: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.names)


@dataclass
class TrainingData:
    sources: SourceTensors
    source_names: list[str]
    train: Targets
    val: Targets


def _normalise(points: np.ndarray) -> np.ndarray:
    lo, hi = points.min(axis=0), points.max(axis=0)
    return ((points - (lo + hi) / 2) / max(np.linalg.norm(hi - lo), 1e-9)).astype(np.float32)


def _images(folder: Path, name: str, views: int) -> np.ndarray | None:
    from PIL import Image

    paths = [folder / f"{name}_{v}.png" for v in range(views)]
    if not all(p.exists() for p in paths):
        return None
    return np.stack([np.asarray(Image.open(p).convert("RGB")).transpose(2, 0, 1) for p in paths])


def in_families(structure: str, families: tuple[str, ...] | list[str]) -> bool:
    """Whether a shape's ``structure`` (``meta.json``, e.g. ``chair/sled/slatted``) is one of
    ``families`` or below one of them (``chair/sled`` holds every sled chair)."""
    return any(structure == f or structure.startswith(f.rstrip("/") + "/") for f in families)


def prepare(
    dataset: Path,
    source_fraction: float = 0.35,
    val_fraction: float = 0.1,
    source_points: int = 512,
    views: int = 0,
    jobs: int = 2,
    build: bool = True,
    held_out_structures: tuple[str, ...] = (),
) -> TrainingData:
    """Index ``dataset/train`` (incrementally, unless ``build`` is false) and
    split it into sources and targets; shapes of the ``held_out_structures``
    families (``in_families``) are in neither."""
    dataset = Path(dataset)
    index_dir = dataset / "index-train"
    if build:
        build_index(dataset / "train", index_dir, jobs=jobs)
    index = load_index(index_dir)
    structure = {}
    if held_out_structures:
        meta = json.loads((dataset / "meta.json").read_text())["shapes"]
        structure = {row["name"]: row["structure"] for row in meta}
        unknown = [f for f in held_out_structures if not any(in_families(s, [f]) for s in structure.values())]
        if unknown:
            raise ValueError(f"held_out_structures {unknown} match no shape of {dataset}")
    sources, source_names = [], []
    groups: dict[str, tuple[list, list, list]] = {"train": ([], [], []), "val": ([], [], [])}
    for i, record in enumerate(index.sources):
        name = Path(record.path).stem
        if held_out_structures and in_families(structure[name], held_out_structures):
            continue
        source = index.load_source(i)
        if _fraction(name, "source") < source_fraction:
            sources.append(source)
            source_names.append(name)
            continue
        group = groups["val" if _fraction(name, "val") < val_fraction else "train"]
        group[0].append(name)
        group[1].append(_normalise(source.points))
        group[2].append(_images(dataset / "images", name, views) if views else None)
    if not sources:
        raise ValueError(f"no sources in {dataset}: generate more shapes or raise source_fraction")

    def targets(names, points, images) -> Targets:
        have_images = views > 0 and all(im is not None for im in images) and images
        return Targets(
            names,
            torch.from_numpy(np.stack(points)) if points else torch.zeros(0, 1, 3),
            torch.from_numpy(np.stack(images)) if have_images else None,
        )

    return TrainingData(
        stack_sources(sources, n_points=source_points), source_names, targets(*groups["train"]), targets(*groups["val"])
    )


def with_randomised_views(targets: Targets, dataset: Path, size: int, seed: int) -> Targets:
    """``targets`` whose image views are rendered afresh for every batch with domain randomisation
    (``training.data.randomise``): each shape is generated again from ``dataset/meta.json``'s generator seed
    and its name (``<category>_<index>``)."""
    from training.data.furniture import generate
    from training.data.randomise import view_renderer

    generator_seed = json.loads((Path(dataset) / "meta.json").read_text())["spec"]["seed"]
    shapes = []
    for name in targets.names:
        category, index = name.rsplit("_", 1)
        shapes.append(generate(category, generator_seed, int(index)))
    return replace(targets, render=view_renderer(shapes, size, seed))


def target_sources(dataset: Path, names: list[str], source_points: int = 512) -> SourceTensors:
    """The shapes ``names`` of ``dataset/index-train`` as sources (part boxes, labelled samples), in that order:
    what the source encoder needs to place a training target where it would place it in a library."""
    index = load_index(Path(dataset) / "index-train")
    rows = {Path(record.path).stem: i for i, record in enumerate(index.sources)}
    return stack_sources([index.load_source(rows[name]) for name in names], n_points=source_points)


def log_uniform(shape: tuple[int, ...], limit: float, generator: torch.Generator) -> torch.Tensor:
    """Factors in [1 / limit, limit], uniform in log (``limit`` 1: all ones)."""
    return torch.exp((torch.rand(shape, generator=generator) * 2 - 1) * math.log(max(limit, 1.0)))


def augment_sources(
    sources: SourceTensors, generator: torch.Generator, axis_scale: float = 1.0, part_jitter: float = 1.0
) -> SourceTensors:
    """Sources as a library made elsewhere might hold them (training for transfer).

    Each part's half-sizes are multiplied per axis by a factor in [1/part_jitter, part_jitter]
    (mirror parts alike), the boxes projected back onto the source's connectivity subspace with
    half-sizes of at least ``min_half`` (``project_positive``: every joint stays attached) and the
    samples carried along; then the whole source is scaled per axis by a factor in
    [1/axis_scale, axis_scale] and renormalised (box centre 0, diagonal 1). Both keep every
    joint constraint, which is per axis, so the null-space bases stay valid.

    Args:
        sources: S sources (normalised frames); factors log-uniform, drawn from ``generator`` (CPU).

    Returns:
        S sources, same fields; ``centre`` and ``scale`` (world frame) are left as they were.
    """
    values = {f.name: getattr(sources, f.name) for f in fields(SourceTensors)}
    boxes, mask = sources.boxes, sources.part_mask.unsqueeze(-1)
    count, parts = boxes.shape[:2]
    device = boxes.device
    points = sources.points
    if part_jitter > 1.0:
        factor = log_uniform((count, parts, 3), part_jitter, generator).to(device)
        partner = sources.mirror.clamp_min(0).unsqueeze(-1).expand(-1, -1, 3)
        paired = (sources.mirror >= 0).unsqueeze(-1)
        factor = torch.where(paired, (factor * torch.gather(factor, 1, partner)).sqrt(), factor)
        jittered = torch.cat([boxes[..., :3], boxes[..., 3:] * torch.where(mask, factor, 1.0)], dim=-1)
        jittered = project_positive(jittered, sources.basis, sources.min_half, sources.part_mask)
        jittered = torch.where(mask, jittered, boxes)
        points = deform_points(points, sources.labels, boxes, jittered)
        boxes = jittered
    if axis_scale > 1.0:
        scale = log_uniform((count, 1, 3), axis_scale, generator).to(device)
        points = points * scale
        boxes = torch.where(mask, boxes * torch.cat([scale, scale], dim=-1), boxes)
    centre_k, half_k = boxes[..., :3], boxes[..., 3:]
    lo = torch.where(mask, centre_k - half_k, torch.full_like(centre_k, math.inf)).min(dim=1).values
    hi = torch.where(mask, centre_k + half_k, torch.full_like(centre_k, -math.inf)).max(dim=1).values
    centre, diagonal = (lo + hi) / 2, (hi - lo).norm(dim=-1).clamp_min(1e-9)
    values["points"] = (points - centre.unsqueeze(1)) / diagonal.view(-1, 1, 1)
    moved = torch.cat(
        [(centre_k - centre.unsqueeze(1)) / diagonal.view(-1, 1, 1), half_k / diagonal.view(-1, 1, 1)], -1
    )
    values["boxes"] = torch.where(mask, moved, boxes)
    values["min_half"] = sources.min_half / diagonal
    return SourceTensors(**values)
