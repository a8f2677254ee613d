"""The paper's retrieval baseline R: MDS of the shape-to-shape chamfer matrix,
with target encoders trained to regress into it (Li et al. 2015, as in Table 1)."""

from __future__ import annotations

import numpy as np
import torch

from backend.model.geometry import chamfer_distance
from backend.model.networks import JointModel, ModelConfig
from backend.model.sources import SourceTensors
from training.joint.data import Targets
from training.joint.train import learning_rate_factor, target_batch


@torch.no_grad()
def chamfer_matrix(a: torch.Tensor, b: torch.Tensor, batch: int = 128) -> torch.Tensor:
    """(A, B) chamfer distances between every shape of ``a`` (A, N, 3) and of ``b`` (B, M, 3)."""
    rows = []
    for i in range(len(a)):
        row = [
            chamfer_distance(a[i : i + 1].expand(min(batch, len(b) - j), -1, -1), b[j : j + batch])
            for j in range(0, len(b), batch)
        ]
        rows.append(torch.cat(row))
    return torch.stack(rows)


def classical_mds(squared: np.ndarray, dims: int) -> tuple[np.ndarray, dict]:
    """Coordinates (S, d) whose distances reproduce ``squared`` distances, and
    what out-of-sample points need (Gower's formula)."""
    n = len(squared)
    centring = np.eye(n) - 1.0 / n
    gram = -0.5 * centring @ squared @ centring
    values, vectors = np.linalg.eigh(gram)
    order = np.argsort(values)[::-1][:dims]
    # A chamfer matrix is not Euclidean: many eigenvalues are ~0 or negative. Keep only clearly
    # positive ones, or out-of-sample coordinates (divided by them) blow up.
    order = order[values[order] > 1e-3 * values[order[0]]]
    values, vectors = values[order], vectors[:, order]
    coordinates = vectors * np.sqrt(values)
    return coordinates, {"coordinates": coordinates, "values": values, "column_mean": squared.mean(axis=0)}


def out_of_sample(squared_to_sources: np.ndarray, fit: dict) -> np.ndarray:
    """(T, d) MDS coordinates of new shapes from their squared distances (T, S) to the sources."""
    return 0.5 * (fit["column_mean"][None] - squared_to_sources) @ fit["coordinates"] / fit["values"][None]


def mds_space(
    sources: SourceTensors, targets: Targets, n_points: int, dims: int = 16
) -> tuple[np.ndarray, torch.Tensor]:
    """R's retrieval space: the sources' (S, d) MDS coordinates of their
    chamfer matrix and the (T, d) out-of-sample coordinates of the targets'
    clean shapes, which R's encoders regress; d <= ``dims`` (only clearly
    positive eigenvalues), at unit RMS radius."""
    n = min(n_points, targets.points.shape[1], sources.points.shape[1])
    source_points = sources.points[:, :n]
    squared = chamfer_matrix(source_points, source_points).double().square().numpy()  # MDS of chamfer distances
    coordinates, fit = classical_mds(squared, min(dims, len(sources) - 1))
    target_squared = chamfer_matrix(targets.points[:, :n], source_points).double().square().numpy()
    goal = out_of_sample(target_squared, fit)
    # Chamfer distances are ~1e-2, so the coordinates are tiny; regress them at unit scale
    # (distances, and so rankings, only scale).
    scale = float(np.sqrt((coordinates**2).sum(1).mean()))
    return coordinates / scale, torch.from_numpy(goal / scale).float()


def train_mds_retrieval(
    sources: SourceTensors,
    targets: Targets,
    config: ModelConfig,
    modalities: list[str],
    steps: int,
    batch: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
    dims: int = 16,
    noise: float = 0.01,
    partial: float = 0.0,
    lr_decay: float = 0.0,
    image_steps: int = 0,
) -> tuple[JointModel, torch.Tensor]:
    """Baseline R: returns a model whose retrieval target encoders map into the
    MDS space, and the sources' (S, d) MDS coordinates (their embeddings).

    ``noise`` and ``partial`` shape the point targets as in joint training
    (``target_batch``), and ``lr_decay`` is its learning-rate schedule, so R
    learns from the same inputs, the same way, as the other methods.
    ``image_steps`` more updates then train the image encoder alone, with
    their own falling rate: the joint methods' image alignment stage
    (``TrainConfig.image_alignment_steps``), so every image encoder gets as
    many updates."""
    torch.manual_seed(seed)
    coordinates, goal = mds_space(sources, targets, config.n_points, dims)
    dims = coordinates.shape[1]
    # MDS coordinates are unbounded: no sphere.
    model = JointModel(ModelConfig(**{**config.to_json(), "embedding": dims, "embedding_radius": 0.0}))
    optimiser = torch.optim.Adam(
        list(model.retrieval.points.parameters()) + list(model.retrieval.images.parameters()), lr=lr
    )
    generator = torch.Generator().manual_seed(seed)
    model.train()
    image_steps = image_steps if "images" in modalities else 0
    for step in range(steps + image_steps):
        aligning = step >= steps
        for group in optimiser.param_groups:
            group["lr"] = lr * (
                learning_rate_factor(step - steps, image_steps, lr_decay)
                if aligning
                else learning_rate_factor(step, steps, lr_decay)
            )
        modality = "images" if aligning else modalities[step % len(modalities)]
        rows = torch.randint(len(targets), (batch,), generator=generator)
        target, _ = target_batch(targets, rows, modality, config.n_points, noise, generator, partial)
        loss = (model.retrieval.embed_target(target, modality) - goal[rows]).square().sum(-1).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    return model, torch.from_numpy(coordinates).float()
