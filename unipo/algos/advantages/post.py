"""Advantage post-processors (ALGORITHMS.md §1.1 `adv_post`): applied to the output of any estimator, on the whole
batch (every rank's rows), before the update.

Signature of the kind: ``fn(advantages [N] or [N, T], mask [N, T], *, <keyword tensors>, <hparams>) ->
(advantages of the same shape, metrics)``.
"""

from __future__ import annotations

import torch

from unipo.algos.advantages._group import check_mask, group_index, group_moments, safe_div
from unipo.algos.ops import check_choice, masked_sum
from unipo.algos.registry import register

_WHITEN = ("off", "batch")


@register(
    "adv_post",
    "adv_post",
    paper="Advantage whitening and clipping of PPO implementations: verl masked_whiten, OpenRLHF advantage "
    "normalisation; PPO-max (Zheng et al. 2023, Secrets of RLHF in Large Language Models Part I, arXiv:2307.04964)",
    tag="checked: verl, OpenRLHF, MOSS-RLHF",
)
def adv_post(
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    rewards: torch.Tensor | None = None,
    group_ids: torch.Tensor | None = None,
    whiten_mode: str = "batch",
    clip: float = 0.0,
    eps: float = 1e-8,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Whiten, then clip, a batch's advantages (verl masked_whiten; PPO-max's clip, arXiv:2307.04964).

    - ``whiten_B``: A ← (A − mean)/(std + eps) over the batch's valid tokens (a sequence advantage counts once per
      token, as verl whitens token-level advantages; Bessel-corrected std as verl's ``masked_whiten``).
    - ``clip_abs``: A ← clip(A, −c, c) (PPO-max clips at c = 0.5), after whitening.
    - ``zero_std_tag``: the metric ``adv/zero_std_frac``, the share of groups whose valid rewards are all equal (their
      group-relative advantages are 0; DAPO's dynamic sampling drops them).

    Args:
        advantages: [N] or [N, T] from the step's estimator.
        mask: [N, T] loss mask.
        rewards: [N] rewards (for the metric; NaN: left out).
        group_ids: [N] prompt index of each completion (for the metric).
        whiten_mode: "batch" (whiten_B) or "off".
        clip: c > 0 clips |A| at c after whitening; 0 = no clip.
        eps: added to the std.

    Returns:
        (advantages of the input's shape, 0 on rows with no valid token; {"adv/zero_std_frac": [] tensor} when rewards
        and group ids are given).
    """
    check_choice("whiten_mode", whiten_mode, _WHITEN)
    if clip < 0:
        raise ValueError(f"clip={clip} must be ≥ 0 (0: no clip)")
    m = check_mask(mask, advantages.shape[0], "adv_post")
    valid = m if advantages.dim() == 2 else m.any(1)  # the entries of `advantages` that count
    out = advantages
    if whiten_mode == "batch":  # the moments of the token-level values: a sequence counts once per valid token
        tokens = advantages[:, None].expand(m.shape) if advantages.dim() == 1 else advantages
        n = m.to(advantages.dtype).sum()
        mean = masked_sum(tokens, m) / n.clamp(min=1)
        std = (masked_sum((tokens - mean) ** 2, m) / (n - 1).clamp(min=1)).sqrt()
        out = safe_div(advantages - mean, std + eps)
    if clip > 0:
        out = out.clamp(-clip, clip)
    out = torch.where(valid, out, torch.zeros_like(out))
    metrics = {}
    if rewards is not None and group_ids is not None:
        inverse, n_groups = group_index(group_ids)
        _, count, _, std = group_moments(rewards, inverse, n_groups)
        flat = (count > 0) & (std < 1e-6)  # one valid reward, or all equal (up to rounding of the mean)
        metrics["adv/zero_std_frac"] = flat.to(torch.float32).sum() / (count > 0).sum().clamp(min=1)
    return out, metrics
