"""R³L's token weights (ALGORITHMS.md §3.2, §9; seeds_003_004.md 003-37): pivotal credit, which trains a failed
attempt and its retry (`r3l_retry_recon`, a sampler) only after the longest prefix they share, and positive
amplification of successes. Both are our reconstructions (the paper body was not read). Same signature as
`unipo.algos.token_weights`: ``fn(mask [N, T], *, <keyword tensors>, <hparams>) -> weights [N, T]``.
"""

from __future__ import annotations

import torch

from unipo.algos.registry import register, warn_reconstruction
from unipo.algos.token_weights import require_inputs

_R3L = "R³L: Reflect-then-Retry Reinforcement Learning (seeds_003_004.md 003-37, github.com/shiweijiezero/R3L)"


@register("token_weight", "r3l_pivot_recon", paper=_R3L, tag="reconstructed")
def r3l_pivot_recon(
    mask: torch.Tensor, *, completion_ids: torch.Tensor | None = None, retry_pairs: torch.Tensor | None = None
) -> torch.Tensor:
    """Reconstruction of R³L's pivotal credit assignment (seeds_003_004.md 003-37; from the abstract: update only
    the diverging suffix where the contrastive signal exists, and exclude the shared prefix from the gradient).

    For a failed attempt a and its retry b (the same id ≥ 0 in `retry_pairs`), t_pivot is the length of their
    longest common prefix of token ids, and m_t = 0 for t < t_pivot in both; every other token keeps its mask. The
    shared tokens get opposite advantages in a and b, so training them would push the same tokens up and down.

    Args:
        mask: [N, T] loss mask.
        completion_ids: [N, T] token ids.
        retry_pairs: [N] long: an attempt and its retry share an id ≥ 0; -1 for a sample in no pair.

    Returns:
        [N, T] weights in {0, 1}.
    """
    warn_reconstruction("r3l_pivot_recon", _R3L)
    require_inputs("token_weight", "r3l_pivot_recon", completion_ids=completion_ids, retry_pairs=retry_pairs)
    pivot = torch.zeros(mask.shape[0], dtype=torch.long, device=mask.device)
    for pair in torch.unique(retry_pairs[retry_pairs >= 0]).tolist():
        members = (retry_pairs == pair).nonzero().squeeze(-1)
        ids = completion_ids[members]
        same = (ids == ids[0]).all(0).long()  # [T]: every member has the first one's token at t
        pivot[members] = same.cumprod(0).sum()
    keep = torch.arange(mask.shape[1], device=mask.device)[None, :] >= pivot[:, None]
    return (mask * keep).to(torch.get_default_dtype())


@register(
    "token_weight",
    "positive_amplify_recon",
    paper=f"Reconstruction of R³L's positive amplification ({_R3L})",
    tag="reconstructed",
)
def positive_amplify_recon(
    mask: torch.Tensor, *, rewards: torch.Tensor | None = None, kappa: float = 2.0, threshold: float = 1.0
) -> torch.Tensor:
    """Reconstruction of R³L's positive amplification (seeds_003_004.md 003-37); not the published rule.

    w_{i,t} = κ·m_{i,t} for a successful trajectory (r_i ≥ threshold), m_{i,t} otherwise: the gradient of the
    replies that solved the task is scaled by κ > 1, so that the rare successes of hard prompts are not drowned out by
    the failures.

    Args:
        mask: [N, T] loss mask.
        rewards: [N] the replies' rewards (after shaping).
        kappa: κ > 1 (R³L's value is not known: 2 is ours).
        threshold: the reward from which a reply counts as a success (1: a solved verifiable task).

    Returns:
        [N, T] weights in {0, 1, κ}.
    """
    warn_reconstruction("positive_amplify_recon", "R³L positive amplification")
    require_inputs("token_weight", "positive_amplify_recon", rewards=rewards)
    if kappa < 1.0:
        raise ValueError(f"kappa={kappa} must be ≥ 1 (it amplifies successes)")
    success = rewards.detach() >= threshold  # (N,)
    w = torch.where(success, kappa, 1.0).to(torch.get_default_dtype())[:, None].expand(mask.shape)
    return torch.where(mask.bool(), w, torch.zeros_like(w))
