"""Training data: a generated data set indexed like a user's library.

The ``train`` split is indexed with ``backend.library.build_index`` (the same
path a user's library takes) and divided, by a hash of each shape's name,
into the source pool, the training targets and the validation targets
(used for model selection). The ``test`` split is left to evaluation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from backend.library import build_index, load_index
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
    """

    names: list[str]
    points: torch.Tensor
    images: torch.Tensor | None

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


def prepare(
    dataset: Path,
    source_fraction: float = 0.35,
    val_fraction: float = 0.1,
    source_points: int = 512,
    views: int = 0,
    jobs: int = 2,
    build: bool = True,
) -> TrainingData:
    """Index ``dataset/train`` (incrementally, unless ``build`` is false) and
    split it into sources and targets."""
    dataset = Path(dataset)
    index_dir = dataset / "index-train"
    if build:
        build_index(dataset / "train", index_dir, jobs=jobs)
    index = load_index(index_dir)
    sources, source_names = [], []
    groups: dict[str, tuple[list, list, list]] = {"train": ([], [], []), "val": ([], [], [])}
    for i, record in enumerate(index.sources):
        name = Path(record.path).stem
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
