"""Samplers that resample the batch (ALGORITHMS.md §6.1): by reward (PF-PPO) or at another temperature (AEPO)."""

from __future__ import annotations

import torch

from unipo.algos.registry import register

PF_BATCH_METHODS = ("pow", "max_min", "max_random")


PF_PROMPT_METHODS = ("bon", "br", "bw")


@register(
    "sampler",
    "pf_ppo",
    paper="Shen and Zhang 2024, Policy Filtration in RLHF to Fine-Tune LLM for Code Generation (PF-PPO), "
    "arXiv:2409.06957",
    tag="checked: verl compute_pf_ppo_reweight_data (scope batch); paper's per-prompt subsets (scope prompt): memory",
    facts={"resample"},
)
def pf_ppo(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    scope: str = "batch",
    method: str = "pow",
    weight_pow: float = 2.0,
) -> torch.Tensor:
    """Policy filtration (Shen and Zhang 2024, arXiv:2409.06957): train on the samples whose reward is most reliable.

    scope = "batch" (verl `use_pf_ppo`): resample N of the N samples with replacement, with weights w_i + 1e-8 where
    w_i = |r_i|^p (`pow`), w_i = 1[r_i ∈ {max r, min r}] (`max_min`) or w_i = 0.4 for the batch max, 0.1 otherwise
    (`max_random`). scope = "prompt" (the paper): per prompt keep the best only (`bon`), the best and one random other
    (`br`) or the best and the worst (`bw`). Unscored samples (NaN) get weight 0 (+1e-8) and are never "best".
    verl resamples after computing the advantages; the collect stage does it before, so advantage whitening over the
    batch sees the resampled batch [ours].

    Args:
        rewards: [N] rewards.
        group_ids: [N] prompt index of each completion.
        generator: the trainer's random generator.
        scope: "batch" (verl) or "prompt" (the paper).
        method: batch: "pow" (verl default), "max_min", "max_random"; prompt: "bon", "br", "bw".
        weight_pow: p of `pow` (verl default 2).

    Returns:
        [N] long, how many times each sample enters the batch (summing to N for scope "batch").
    """
    valid = ~rewards.isnan()
    r = torch.where(valid, rewards, torch.zeros_like(rewards))
    if scope == "batch":
        if method not in PF_BATCH_METHODS:
            raise ValueError(f"pf_ppo: method {method!r} with scope 'batch'; expected one of {PF_BATCH_METHODS}")
        hi = r[valid].max() if bool(valid.any()) else r.new_tensor(0.0)
        lo = r[valid].min() if bool(valid.any()) else r.new_tensor(0.0)
        if method == "pow":
            w = r.abs() ** weight_pow
        elif method == "max_min":
            w = ((r == hi) | (r == lo)).to(r.dtype)
        else:
            w = torch.where(r == hi, 0.4, 0.1).to(r.dtype)
        w = torch.where(valid, w, torch.zeros_like(w)) + 1e-8
        idx = torch.multinomial(w.cpu().double(), r.numel(), replacement=True, generator=generator)
        return torch.bincount(idx, minlength=r.numel()).to(group_ids.device)
    if scope != "prompt" or method not in PF_PROMPT_METHODS:
        raise ValueError(f"pf_ppo: scope {scope!r}, method {method!r}; expected scope 'batch' with one of "
                         f"{PF_BATCH_METHODS} or scope 'prompt' with one of {PF_PROMPT_METHODS}")  # fmt: skip
    keep = torch.zeros(r.numel(), dtype=torch.long)
    noise = torch.rand(r.shape, generator=generator)
    ids = group_ids.cpu()
    for g in torch.unique(ids).tolist():
        members = ((ids == g) & valid.cpu()).nonzero().squeeze(-1)
        if members.numel() == 0:
            continue
        scores = r.cpu()[members]
        best = members[int(torch.argmax(scores))]
        keep[best] = 1
        others = members[members != best]
        if method == "bw" and others.numel():
            keep[others[int(torch.argmin(r.cpu()[others]))]] = 1
        elif method == "br" and others.numel():
            keep[others[int(torch.argmax(noise[others]))]] = 1
    return keep.to(group_ids.device)


@register(
    "sampler",
    "aepo",
    paper="Wang et al. 2025, Arbitrary Entropy Policy Optimization: Entropy Is Controllable in Reinforcement "
    "Fine-tuning (AEPO), arXiv:2510.08141",
    tag="checked: official code ray_trainer.py (AEPO branch) and config (H* 0.5, T 1.2 / 0.8, 60 samples, A > 0.05)",
    facts={"entropy_switch"},
)
def aepo(
    advantages: torch.Tensor,
    last_entropy: float,
    *,
    entropy_target: float = 0.5,
    temperature_high: float = 1.2,
    temperature_low: float = 0.8,
    prompt_frac: float = 0.25,
    max_samples: int = 60,
    adv_threshold: float = 0.05,
) -> torch.Tensor:
    """AEPO's temperature-switched REINFORCE samples (Wang et al. 2025, arXiv:2510.08141; official `ray_trainer.py`).

    After the step's advantages are computed, the first `prompt_frac` of its prompts are sampled again at temperature
    T = T_high if the last step's policy entropy H ≤ H* (`entropy_target`), else T_low; their advantages are computed
    like the batch's, the samples with A > 0.05 are kept with A := 1 (a REINFORCE term toward the hotter or colder
    distribution), and the first m = min(60, #kept) of them (m // 2 when H > H*) replace the first m samples of the
    batch, which keeps its own advantages. The entropy before the first step is 0 (so the first step samples hot).
    This function keeps the samples; the collect stage picks T from the same hyperparameters and swaps them in.

    Args:
        advantages: [M] the resampled completions' advantages (the first token's, as the official code reads).
        last_entropy: H, the mean token entropy of the last step's update.
        entropy_target: H* (official `entropy_base`, 0.5).
        temperature_high: T when H ≤ H* (official 1.2), read by the collect stage.
        temperature_low: T when H > H* (official 0.8), read by the collect stage.
        prompt_frac: the fraction of the step's prompts sampled again (official 1/4; at least one prompt), read by
            the collect stage.
        max_samples: at most this many samples replace the batch's first ones (official `reinforce_sample_num`, 60).
        adv_threshold: a resampled completion is kept when its advantage exceeds this (official 0.05).

    Returns:
        [M] bool, True for the resampled completions that enter the batch (the first m of those above the threshold).
    """
    above = advantages > adv_threshold
    m = min(max_samples, int(above.sum()))
    if last_entropy > entropy_target:
        m //= 2
    return above & (above.long().cumsum(0) <= m)


def aepo_temperature(last_entropy: float, params: dict) -> float:
    """AEPO's sampling temperature for the extra samples: T_high when the last entropy is at most H*, else T_low."""
    hot = last_entropy <= params["entropy_target"]
    return params["temperature_high"] if hot else params["temperature_low"]
