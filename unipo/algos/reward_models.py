"""Rewards from other models and learned reward weights (ALGORITHMS.md §5), kind `reward`: RTO's per-token reward
from a DPO model, RefCritic's refinement feedback and BARFI's learned weight of an auxiliary reward. Shapers follow
`reward_shaping.py`'s contract; `rto_token_reward` returns per-token rewards (the fact `token_rewards`).
"""

from __future__ import annotations

import torch

from unipo.algos.registry import register, warn_reconstruction
from unipo.algos.reward_shaping import reward_column


@register(
    "reward",
    "rto_token_reward",
    paper="Zhong et al. 2024, DPO Meets PPO: Reinforced Token Optimization for RLHF, arXiv:2404.18922",
    tag="memory (ALGORITHMS.md §5.3); β defaults ours",
    facts={"token_rewards"},
)
def rto_token_reward(
    rewards: torch.Tensor,
    *,
    lengths: torch.Tensor,
    ref_logp: torch.Tensor,
    teacher_logp: torch.Tensor,
    beta_dpo: float = 0.1,
    beta_outcome: float = 1.0,
) -> torch.Tensor:
    """RTO's token-wise reward (Zhong et al. 2024, arXiv:2404.18922), from a DPO-trained model as `model.teacher_path`.

    r_t = β₁·log(π_dpo(y_t)/π_ref(y_t)) + β₃·1[t = T]·r_RM on each completion's tokens; the third term of the paper's
    reward, −β₂·log(π_θ(y_t)/π_ref(y_t)), is the critic's own KL penalty (`algo.critic.kl_coef` = β₂), and the
    per-token rewards then go through `ppo_gae`. The DPO term is the token-level implicit reward of a DPO model
    (Rafailov et al. 2024, "From r to Q*").

    Args:
        rewards: [N] outcome rewards r_RM (NaN: unscored; the whole row is then NaN and gets A = 0).
        lengths: [N] completion lengths; token t of row i is in the completion when t < lengths[i].
        ref_logp: [N, T] log π_ref of the sampled tokens.
        teacher_logp: [N, T] log π_dpo of the sampled tokens (the frozen model at `model.teacher_path`).
        beta_dpo: β₁, the scale of the DPO model's token reward (ours: DPO's usual β = 0.1).
        beta_outcome: β₃, the weight of the outcome reward on the last token.

    Returns:
        [N, T] per-token rewards, 0 after each completion's end.
    """
    if ref_logp.shape != teacher_logp.shape or ref_logp.shape[0] != rewards.shape[0]:
        raise ValueError(f"rto_token_reward: ref_logp {list(ref_logp.shape)} and teacher_logp "
                         f"{list(teacher_logp.shape)} must both be [N, T] with N = {rewards.shape[0]}")  # fmt: skip
    pos = torch.arange(ref_logp.shape[1], device=ref_logp.device)
    inside = pos[None] < lengths[:, None]
    last = pos[None] == (lengths - 1)[:, None]
    dense = beta_dpo * (teacher_logp - ref_logp).to(rewards.dtype)
    token = torch.where(inside, dense, torch.zeros_like(dense)) + torch.where(
        last, beta_outcome * rewards[:, None], 0.0
    )
    return torch.where(rewards.isnan()[:, None], torch.nan, token)


_REFCRITIC = "Tang et al. 2025, RefCritic: Training Long Chain-of-Thought Critic Models with Refinement Feedback"


@register("reward", "refcritic_reward_recon", paper=_REFCRITIC + " (ALGORITHMS.md seeds 002-24)", tag="reconstructed")
def refcritic_reward_recon(
    rewards: torch.Tensor,
    *,
    reward_components: torch.Tensor,
    refine_index: int = 1,
    lam: float = 1.0,
) -> torch.Tensor:
    """Reconstruction of RefCritic's critic reward (ALGORITHMS.md §5.3): judgement plus refinement feedback.

    r = 1[verdict correct] + λ·mean_k 1[the refinement conditioned on the critique is correct]. The first reward
    function is the verdict's correctness (`verdict`), function `refine_index` the share of a frozen model's K
    refinements that are right (`refinement`); the incoming combined reward is replaced. A failed refinement score
    (NaN) leaves the verdict term alone; a failed verdict makes the sample unscored.

    Args:
        rewards: [N] the combined reward (replaced).
        reward_components: [N, K] each reward function's score (NaN: None or failed).
        refine_index: the column of the refinement score (after the verdict's, column 0).
        lam: λ, the weight of the refinement feedback.

    Returns:
        [N] shaped rewards.
    """
    warn_reconstruction("refcritic_reward_recon", _REFCRITIC)
    refined = reward_column(reward_components, refine_index, "refcritic_reward_recon", "the refinement score")
    return reward_components[:, 0].to(rewards.dtype) + lam * torch.nan_to_num(refined.to(rewards.dtype))


@register(
    "reward",
    "barfi",
    paper="Gupta et al. 2023, Behavior Alignment via Reward Function Optimization, NeurIPS 2023, arXiv:2310.19007",
    tag="memory (ALGORITHMS.md §5.1); its bilevel φ update runs in the tabular testbed (`unipo verify barfi`)",
)
def barfi(rewards: torch.Tensor, *, aux_rewards: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """BARFI's shaped reward (Gupta et al. 2023, arXiv:2310.19007): r_φ = r_p + φ(s, a)·r_aux.

    φ is learned by the implicit gradient of the primary return through the policy's optimisation,
    dJ_p/dφ = (−H⁻¹∇_θJ_p)ᵀ·∂_φ∇_θJ_φ, in `unipo.testbeds.barfi` (classic RL only: the second-order term is too
    costly for LLM rollouts, ALGORITHMS.md §5.1).

    Args:
        rewards: primary rewards r_p, any shape.
        aux_rewards: auxiliary rewards r_aux, the same shape.
        phi: the mixing weights φ, broadcastable to it.

    Returns:
        r_φ, the shape of `rewards`.
    """
    return rewards + phi * aux_rewards
