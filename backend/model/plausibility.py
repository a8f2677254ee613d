"""Plausible part sizes: the penalties that keep thin parts thin in refinement, and the figures reported beside
chamfer (issue 14 item 8). Boxes are ``[centre, half_size]`` per part, (P, K, 6), each in its normalised frame.
"""

from __future__ import annotations

import math

import torch

from backend.model.sources import SourceTensors

# Two sizes of a part differ "implausibly" beyond this factor on some axis (reported, and the
# dead zone of the size penalty starts well below it).
IMPLAUSIBLE_FACTOR = 3.0
SIZE_DEAD_ZONE = math.log(1.5)


def size_penalty(boxes: torch.Tensor, reference: torch.Tensor, part_mask: torch.Tensor) -> torch.Tensor:
    """(P,) how far parts' sizes left their reference sizes, beyond a 1.5x dead zone.

    Mean over real parts of the squared excess of ``|log(half / reference_half)|`` over
    ``log 1.5``, summed over axes: a part may grow or shrink with the target freely up to 1.5x of
    its reference per axis, then pays, so thin parts stay thin and small parts stay small.

    Args:
        boxes, reference: (P, K, 6); part_mask: (P, K).
    """
    ratio = torch.log(boxes[..., 3:].clamp_min(1e-6) / reference[..., 3:].clamp_min(1e-6))
    excess = torch.relu(ratio.abs() - SIZE_DEAD_ZONE).square().sum(-1) * part_mask
    return excess.sum(1) / part_mask.sum(1).clamp_min(1)


def implausible_growth(boxes: torch.Tensor, reference: torch.Tensor, sources: SourceTensors) -> torch.Tensor:
    """(P,) how far parts' sizes went beyond ``IMPLAUSIBLE_FACTOR`` of their source sizes (growing or shrinking,
    the measure of ``part_scale_factors``) where the reference had not already taken them there.

    Mean over real parts of the squared excess of ``|log(half / source_half)|`` over
    ``max(log 3, |log(reference_half / source_half)|)``, summed over axes: refinement may not make a part
    implausible that its start (the per-axis placement, charged in the ranking) left plausible.

    Args:
        boxes, reference: (P, K, 6) in the targets' normalised frames; sources: P sources (their own normalised
            boxes).
    """
    own = sources.boxes[..., 3:].clamp_min(1e-6)
    ratio = torch.log(boxes[..., 3:].clamp_min(1e-6) / own).abs()
    allowed = torch.log(reference[..., 3:].clamp_min(1e-6) / own).abs().clamp_min(math.log(IMPLAUSIBLE_FACTOR))
    excess = torch.relu(ratio - allowed).square().sum(-1) * sources.part_mask
    return excess.sum(1) / sources.part_mask.sum(1).clamp_min(1)


def part_scale_factors(boxes: torch.Tensor, sources: SourceTensors) -> torch.Tensor:
    """(P, K) largest per-axis factor (>= 1, growing or shrinking) between each part's fitted
    size and its source size, both in their normalised frames (so a uniform scaling is 1);
    padded parts are NaN."""
    ratio = boxes[..., 3:].clamp_min(1e-9) / sources.boxes[..., 3:].clamp_min(1e-9)
    factor = torch.maximum(ratio, 1 / ratio).max(dim=-1).values
    return torch.where(sources.part_mask, factor, torch.full_like(factor, float("nan")))


def plausibility(boxes: torch.Tensor, sources: SourceTensors) -> dict[str, torch.Tensor]:
    """Per fit: the 95th percentile of its parts' scale factors (``part_scale_factors``) and the
    share of its parts scaled over ``IMPLAUSIBLE_FACTOR`` on some axis. Values (P,)."""
    factor = part_scale_factors(boxes, sources)
    return {
        "scale_factor_p95": torch.nanquantile(factor, 0.95, dim=1),
        "share_over_3x": ((factor > IMPLAUSIBLE_FACTOR).float() * sources.part_mask).sum(1)
        / sources.part_mask.sum(1).clamp_min(1),
    }
