"""Networks of the joint retrieval and deformation model.

Two modules, trained in alternation (paper, Sec. 2.1):

- Retrieval: target encoders into the retrieval space R, a source encoder
  into R, and the per-source scale sigma(s).
- Deformation: target encoders into a deformation code t_D, a source
  encoder giving a global code and one code per part, and the part MLP P
  (512, 256, 6) over [global, part, target] (paper, Sec. 2.2).

Sources are encoded from their points and part boxes (amortised), so a
library the model never saw is encoded like any other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from backend.model.geometry import PARAMS, deform_points, project
from backend.model.sources import SourceTensors


@dataclass(frozen=True)
class ModelConfig:
    point_width: int = 128
    image_width: int = 16
    global_code: int = 256
    part_code: int = 32
    target_code: int = 256
    embedding: int = 128
    max_parts: int = 16
    n_points: int = 1024
    source_points: int = 512
    image_size: int = 128
    # Retrieval space: embeddings on a sphere of this radius (0: unbounded,
    # as in checkpoints made before it existed). With the paper's sigma0 = 100
    # a radius of 200 lets -d^2/sigma0^2 span [-16, 0], so P_R can be anything
    # from uniform to one-hot, yet cannot go uniform by the embedding shrinking.
    embedding_radius: float = 200.0
    # sigma(s) of P_fit, in chamfer units (normalised shapes), bounded to
    # [sigma_min, sigma_max] (sigma_max 0: unbounded softplus, the old
    # behaviour) so that L_emb cannot be met by flattening P_fit to uniform.
    sigma_init: float = 0.004
    sigma_min: float = 0.002
    sigma_max: float = 0.008
    # Sources are placed in R by the same PointNet that places point targets
    # (a Siamese retrieval space), so R starts out geometry-aware: similar
    # shapes land close before any training (False: a separate source encoder).
    shared_point_encoder: bool = True
    # The deformation is predicted on top of the per-axis placement of the source on the target's
    # box (``backend.model.placement.box_placement``, a legal start that keeps every joint): a
    # point target's deformation code ends with its box size (3), each source is placed on it and
    # the part MLP, also given the placement's log scale per axis, predicts offsets from there.
    # Image targets (box unknown) keep the source's own boxes as the base. False: offsets are
    # added to the source's boxes (checkpoints made before it existed).
    placement_base: bool = False

    def to_json(self) -> dict:
        return asdict(self)


def mlp(*sizes: int, final_activation: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2 or final_activation:
            layers.append(nn.LayerNorm(sizes[i + 1]))
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class PointFeatures(nn.Module):
    """Shared per-point MLP of PointNet: (B, N, 3) -> (B, N, F)."""

    def __init__(self, width: int, extra: int = 0):
        super().__init__()
        self.net = mlp(3 + extra, width // 2, width, 2 * width, final_activation=True)
        self.out_features = 2 * width

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.net(points)


class PointNetEncoder(nn.Module):
    """PointNet: per-point MLP, max pool, MLP head. (B, N, 3) -> (B, out)."""

    def __init__(self, width: int, out: int):
        super().__init__()
        self.features = PointFeatures(width)
        self.head = mlp(self.features.out_features, 2 * width, out)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(points).max(dim=1).values)


class ImageEncoder(nn.Module):
    """A small CNN: (B, 3, H, W) in [0, 1] -> (B, out). Five stride-2 stages."""

    def __init__(self, width: int, out: int):
        super().__init__()
        channels = [3, width, 2 * width, 4 * width, 8 * width, 8 * width]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers += [
                nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
        self.conv = nn.Sequential(*layers)
        self.head = mlp(channels[-1], 2 * channels[-1], out)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(images * 2 - 1).mean(dim=(2, 3)))


class SourceEncoder(nn.Module):
    """Global code and per-part codes of sources from their points and boxes."""

    def __init__(self, width: int, global_code: int, part_code: int):
        super().__init__()
        # Each point also sees its part's box, so parts are told apart.
        self.features = PointFeatures(width, extra=PARAMS)
        feats = self.features.out_features
        self.global_head = mlp(feats, 2 * width, global_code)
        self.part_head = mlp(feats + feats + PARAMS, 2 * width, part_code)

    def forward(self, points, labels, boxes, part_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """(S, N, 3), (S, N), (S, K, 6), (S, K) -> global (S, G), parts (S, K, P)."""
        point_box = torch.gather(boxes, 1, labels.unsqueeze(-1).expand(-1, -1, PARAMS))
        feats = self.features(torch.cat([points, point_box], dim=-1))
        pooled = feats.max(dim=1).values
        k = boxes.shape[1]
        # Max over each part's points; a part with no sample pools to zero.
        index = labels.unsqueeze(-1).expand(-1, -1, feats.shape[-1])
        part_pool = feats.new_zeros(feats.shape[0], k, feats.shape[-1])
        part_pool = part_pool.scatter_reduce(1, index, feats, reduce="amax", include_self=False)
        part_in = torch.cat([part_pool, pooled.unsqueeze(1).expand(-1, k, -1), boxes], dim=-1)
        parts = self.part_head(part_in) * part_mask.unsqueeze(-1)
        return self.global_head(pooled), parts


class RetrievalModule(nn.Module):
    """Embeds targets and sources into R; predicts each source's sigma(s)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.points = PointNetEncoder(config.point_width, config.embedding)
        self.images = ImageEncoder(config.image_width, config.embedding)
        if not config.shared_point_encoder:
            self.source = SourceEncoder(config.point_width, config.embedding, 8)
        self.config = config
        self.sigma_head = mlp(config.embedding, 64, 1)
        nn.init.zeros_(self.sigma_head[-1].weight)
        if config.sigma_max > 0:
            share = (config.sigma_init - config.sigma_min) / (config.sigma_max - config.sigma_min)
            start = torch.logit(torch.tensor(share).clamp(1e-4, 1 - 1e-4))
        else:
            start = torch.log(torch.expm1(torch.tensor(config.sigma_init)))  # inverse softplus
        nn.init.constant_(self.sigma_head[-1].bias, float(start))

    def forward(
        self, target: torch.Tensor, modality: str, sources: SourceTensors
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Target embeddings (B, E), source embeddings (S, E) and sigma (S,)."""
        return (self.embed_target(target, modality), *self.embed_sources(sources))

    def _place(self, code: torch.Tensor) -> torch.Tensor:
        radius = self.config.embedding_radius
        return radius * nn.functional.normalize(code, dim=-1) if radius > 0 else code

    def embed_target(self, target: torch.Tensor, modality: str) -> torch.Tensor:
        """(B, E) positions in R."""
        return self._place(self.points(target) if modality == "points" else self.images(target))

    def embed_sources(self, sources: SourceTensors) -> tuple[torch.Tensor, torch.Tensor]:
        """(S, E) positions in R and (S,) sigma(s) (chamfer units)."""
        if self.config.shared_point_encoder:
            code = self.points(sources.points)
        else:
            code, _ = self.source(sources.points, sources.labels, sources.boxes, sources.part_mask)
        raw = self.sigma_head(code).squeeze(-1)
        low, high = self.config.sigma_min, self.config.sigma_max
        sigma = low + (high - low) * torch.sigmoid(raw) if high > 0 else nn.functional.softplus(raw) + 1e-6
        return self._place(code), sigma


class DeformationModule(nn.Module):
    """Predicts per-part boxes of sources deformed towards targets."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.points = PointNetEncoder(config.point_width, config.target_code)
        self.images = ImageEncoder(config.image_width, config.target_code)
        self.source = SourceEncoder(config.point_width, config.global_code, config.part_code)
        self.placement_base = config.placement_base
        placement_inputs = 6 if config.placement_base else 0  # the target's box size, the placement's log scale
        self.part_mlp = nn.Sequential(
            nn.Linear(config.global_code + config.part_code + config.target_code + placement_inputs, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, 256),
            nn.ReLU(inplace=True),
            nn.Linear(256, PARAMS),
        )
        # Start from the identity deformation.
        nn.init.zeros_(self.part_mlp[-1].weight)
        nn.init.zeros_(self.part_mlp[-1].bias)

    def forward(
        self,
        target: torch.Tensor,
        modality: str,
        sources: SourceTensors,
        pair_source: torch.Tensor,
        pair_target: torch.Tensor,
    ) -> torch.Tensor:
        """Deformed boxes (P, K, 6) for P pairs of (source row, target row).

        Args:
            target: (B, ...) targets; sources: S sources;
            pair_source, pair_target: (P,) long rows of each pair.
        """
        target_code = self.encode_target(target, modality)
        global_code, part_code = self.encode_sources(sources)
        return self.predict_boxes(
            sources.select(pair_source), global_code[pair_source], part_code[pair_source], target_code[pair_target]
        )

    def encode_target(self, target: torch.Tensor, modality: str) -> torch.Tensor:
        """(B, T) deformation codes of B targets; with ``placement_base`` (B, T + 3): a point
        target's code ends with its box size (normalised frame), an image's with zeros (unknown)."""
        if modality == "points":
            code = self.points(target)
            extent = target.max(dim=1).values - target.min(dim=1).values
        else:
            code = self.images(target)
            extent = code.new_zeros(len(code), 3)
        return torch.cat([code, extent], dim=-1) if self.placement_base else code

    def encode_sources(self, sources: SourceTensors) -> tuple[torch.Tensor, torch.Tensor]:
        return self.source(sources.points, sources.labels, sources.boxes, sources.part_mask)

    def predict_boxes(
        self, sources: SourceTensors, global_code: torch.Tensor, part_code: torch.Tensor, target_code: torch.Tensor
    ) -> torch.Tensor:
        """Deformed boxes (P, K, 6) of P (source, target) pairs, projected onto
        each source's connectivity-preserving subspace.

        With ``placement_base`` the offsets are added to each source placed per axis on the
        target's box (the box size ending ``target_code``; an all-zero size, an image target's,
        keeps the source's boxes).

        Args:
            sources: the P sources (one row per pair).
            global_code: (P, G); part_code: (P, K, C); target_code: (P, T) (``encode_target``).
        """
        k = sources.boxes.shape[1]
        base, features = sources.boxes, [global_code.unsqueeze(1).expand(-1, k, -1), part_code]
        features.append(target_code.unsqueeze(1).expand(-1, k, -1))
        if self.placement_base:
            from backend.model.placement import box_placement  # placement builds on this module (through scoring)

            extent = target_code[:, -3:]
            known = (extent > 0).all(dim=-1)
            placed = box_placement(sources, torch.where(known.unsqueeze(-1), extent, torch.ones_like(extent)))
            base = torch.where(known.view(-1, 1, 1), placed, sources.boxes)
            ratio = base[..., 3:].clamp_min(1e-6) / sources.boxes[..., 3:].clamp_min(1e-6)
            features.append(torch.log(ratio) * sources.part_mask.unsqueeze(-1))
        offset = self.part_mlp(torch.cat(features, dim=-1)) * sources.part_mask.unsqueeze(-1)
        return project(base + offset, sources.basis)


def deformed_points(sources: SourceTensors, boxes: torch.Tensor) -> torch.Tensor:
    """(P, N, 3) the sources' samples carried by deformed ``boxes`` (P, K, 6)."""
    safe = torch.cat([boxes[..., :3], boxes[..., 3:].clamp_min(1e-4)], dim=-1)
    return deform_points(sources.points, sources.labels, sources.boxes, safe)


class JointModel(nn.Module):
    """Both modules and their configuration."""

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = config or ModelConfig()
        self.retrieval = RetrievalModule(self.config)
        self.deformation = DeformationModule(self.config)
