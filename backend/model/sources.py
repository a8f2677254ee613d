"""A library's sources as padded tensors, in each source's normalised frame."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from backend.library.source import Source
from backend.model.geometry import PARAMS


@dataclass
class SourceTensors:
    """S sources padded to K parts and D null-space dimensions.

    Attributes:
        points: (S, N, 3) float32 surface samples, normalised frame.
        labels: (S, N) long part of each sample.
        boxes: (S, K, 6) boxes, normalised frame (padded parts: zero centre, unit half-size).
        part_mask: (S, K) bool, real parts.
        basis: (S, 6K, D) orthonormal null-space bases (zero rows/columns as padding).
        mirror: (S, K) long mirror part, -1 for none.
        axis: (S,) long symmetry axis, -1 for none.
        centre: (S, 3) world centre of each source's box, metres.
        scale: (S,) world diagonal of each source's box, metres.
        min_half: (S,) smallest half-size allowed, normalised frame.
    """

    points: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor
    part_mask: torch.Tensor
    basis: torch.Tensor
    mirror: torch.Tensor
    axis: torch.Tensor
    centre: torch.Tensor
    scale: torch.Tensor
    min_half: torch.Tensor

    def __len__(self) -> int:
        return self.points.shape[0]

    def select(self, index: torch.Tensor) -> SourceTensors:
        """Rows ``index`` (any shape of indices flattens to a batch)."""
        flat = index.reshape(-1)
        return SourceTensors(*(getattr(self, f)[flat] for f in self.__dataclass_fields__))

    def first_points(self, count: int) -> SourceTensors:
        """The same sources with only their first ``count`` samples (samples
        are in random order, so these are a uniform subset)."""
        values = {f: getattr(self, f) for f in self.__dataclass_fields__}
        values["points"], values["labels"] = self.points[:, :count], self.labels[:, :count]
        return SourceTensors(**values)

    def to(self, device) -> SourceTensors:
        return SourceTensors(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def stack_sources(sources: list[Source], max_parts: int = 16, n_points: int | None = None) -> SourceTensors:
    """Pad and stack sources; every source moves into its normalised frame.

    The normalised frame is centred at the centre of the union of part boxes
    and scaled by its diagonal, so boxes map to boxes: centres as points,
    half-sizes by the scale alone.
    """
    n_points = n_points or min(len(s.points) for s in sources)
    dims = max(s.null_basis.shape[1] for s in sources)
    count = len(sources)
    out = {
        "points": np.zeros((count, n_points, 3), np.float32),
        "labels": np.zeros((count, n_points), np.int64),
        "boxes": np.zeros((count, max_parts, PARAMS), np.float32),
        "part_mask": np.zeros((count, max_parts), bool),
        "basis": np.zeros((count, PARAMS * max_parts, dims), np.float32),
        "mirror": np.full((count, max_parts), -1, np.int64),
        "axis": np.full(count, -1, np.int64),
        "centre": np.zeros((count, 3), np.float32),
        "scale": np.ones(count, np.float32),
        "min_half": np.zeros(count, np.float32),
    }
    out["boxes"][:, :, 3:] = 1.0
    for i, source in enumerate(sources):
        k = source.n_parts
        if k > max_parts:
            raise ValueError(f"source has {k} parts, more than {max_parts}")
        lo, hi = source.bounds
        centre, scale = (lo + hi) / 2, float(np.linalg.norm(hi - lo))
        out["points"][i] = (source.points[:n_points] - centre) / scale
        out["labels"][i] = source.point_labels[:n_points]
        out["boxes"][i, :k, :3] = (source.boxes[:, :3] - centre) / scale
        out["boxes"][i, :k, 3:] = source.boxes[:, 3:] / scale
        out["part_mask"][i, :k] = True
        basis = source.null_basis
        out["basis"][i, : PARAMS * k, : basis.shape[1]] = basis
        out["mirror"][i, :k] = source.part_mirror
        out["axis"][i] = source.symmetry_axis
        out["centre"][i], out["scale"][i] = centre, scale
        out["min_half"][i] = source.min_half_size / scale
    return SourceTensors(**{k: torch.from_numpy(v) for k, v in out.items()})
