"""Soft retrieval and the two losses of joint training (paper, Eqs. 1-4)."""

from __future__ import annotations

import torch


def soft_probabilities(distance: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """p(s_k; t, S_t, d, sigma) over the last axis: ``softmax(-d^2 / sigma_k^2)``.

    Normalised over the K candidates of each target (the authors' release
    normalised over the whole batch by mistake).

    Args:
        distance: (B, K) distances d(s_k, t).
        sigma: scalar, or (B, K) per-candidate scales sigma(s_k).
    """
    return torch.softmax(-distance.square() / torch.as_tensor(sigma, dtype=distance.dtype).square(), dim=-1)


def sample_candidates(logits: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, k) distinct indices drawn without replacement with probability
    ``softmax(logits)`` (Gumbel top-k)."""
    uniform = torch.rand(logits.shape, generator=generator, device=logits.device).clamp_(1e-20, 1.0)
    return torch.topk(logits - torch.log(-torch.log(uniform)), k, dim=-1).indices


def embedding_loss(
    retrieval_distance: torch.Tensor, fit: torch.Tensor, sigma: torch.Tensor, sigma0: float
) -> torch.Tensor:
    """L_emb (Eq. 2): ``sum_k |p(s_k; d_R, sigma0) - p(s_k; d_fit, sigma_k)|``, batch mean.

    Gradient reaches the retrieval space through d_R and the learned
    per-source scales through sigma_k; ``fit`` (post-deformation chamfer) is fixed.
    """
    p_retrieval = soft_probabilities(retrieval_distance, sigma0)
    p_fit = soft_probabilities(fit.detach(), sigma)
    return (p_retrieval - p_fit).abs().sum(-1).mean()


def deformation_loss(weights: torch.Tensor, fit: torch.Tensor) -> torch.Tensor:
    """L_def (Eq. 4): ``sum_k p(s_k; d_R, sigma0) * L_fit(D_{s_k}(t), t)``, batch mean; weights fixed."""
    return (weights.detach() * fit).sum(-1).mean()


def cross_modal_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Squared distance of image codes (B, C) to the fixed codes (B, C) of the
    same shapes' point clouds, relative to the teacher codes' mean square
    (so one weight suits embeddings on a radius-200 sphere and raw codes alike)."""
    teacher = teacher.detach()
    return (student - teacher).square().sum(-1).mean() / teacher.square().sum(-1).mean().clamp_min(1e-8)


def ranking_alignment_loss(
    student: torch.Tensor, teacher: torch.Tensor, sources: torch.Tensor, sigma0: float
) -> torch.Tensor:
    """KL(P_R(teacher) || P_R(student)) over *all* sources, batch mean: the
    image code (B, E) should rank the sources (S, E) as the fixed point code
    (B, E) of the same shape does, with P_R's own scale ``sigma0``.

    A squared code distance weighs every direction alike; this weighs the
    errors that move a target between neighbouring sources, which are the
    ones that change what is retrieved."""
    p_teacher = torch.softmax(-torch.cdist(teacher.detach(), sources.detach()).square() / sigma0**2, dim=-1)
    log_student = torch.log_softmax(-torch.cdist(student, sources.detach()).square() / sigma0**2, dim=-1)
    return (p_teacher * (torch.log(p_teacher.clamp_min(1e-12)) - log_student)).sum(-1).mean()
